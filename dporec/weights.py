"""Model and adapter folders as files on disk, read without loading them: which weight files a model folder
has, whether a safetensors file is complete, whether an adapter's LoRA shapes fit a base model's
config.json, and fingerprints that tell two sets of weights apart.

Everything here runs before any model loads (stages, evaluation, verify_setup.py), in milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

from dporec import UserError
from dporec.costmodel import projection_shapes

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
MODEL_SINGLE = ("model.safetensors", "pytorch_model.bin")
FINGERPRINT_BYTES = 1 << 20  # per weight file: its header plus the first MiB of tensor data


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file, checked complete: the file holds every byte the header's
    tensors point at. A truncated or foreign file is a UserError naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            header = json.loads(f.read(n)) if n is not None and 8 + n <= size else None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise UserError(f"{path}: not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors file, or truncated inside its header ({size} bytes)")
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    needed = 8 + n + max(ends, default=0)
    if size < needed:
        raise UserError(f"{path} is truncated: {size} bytes of {needed} (an interrupted copy or save?); "
                        "copy it again, or retrain")
    return header


def model_weight_files(folder: Path) -> list[Path]:
    """The weight files of a model folder (sharded through an index, or one file); a UserError when it
    has none or its index names a shard that is not there."""
    folder = Path(folder)
    for index in MODEL_INDEX:
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise UserError(f"{folder / index}: not a readable weights index ({e})") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise UserError(f"{folder}: {index} lists {len(missing)} weight file(s) that are not there "
                                f"({', '.join(missing[:3])}); the download or copy is incomplete")
            return [folder / s for s in shards]
    found = [folder / n for n in MODEL_SINGLE if (folder / n).is_file()]
    if not found:
        raise UserError(f"{folder} has config.json but no weights ({' / '.join(MODEL_SINGLE)} or a sharded "
                        "index): the download or copy is incomplete")
    return found[:1]


def check_model_files(folder: Path) -> list[Path]:
    """The weight files, each safetensors one checked complete (its header and data all present)."""
    files = model_weight_files(folder)
    for f in files:
        if f.suffix == ".safetensors":
            safetensors_header(f)
    return files


def adapter_weights_file(folder: Path) -> Path | None:
    return next((Path(folder) / n for n in ADAPTER_WEIGHTS if (Path(folder) / n).is_file()), None)


# LoRA target -> (in features, out features) of the base projection, from a Llama-style config.json.
_LORA_KEY = re.compile(r"layers\.(\d+)\.[\w.]*?(\w+_proj)\.lora_([AB])\.")


def adapter_shape_problem(header: dict, base_config: dict) -> str | None:
    """What in an adapter's LoRA tensors does not fit the base model's config.json, or None.

    lora_A is (r, in features), lora_B is (out features, r); layer numbers must exist in the base.
    Projections this rule does not know (other architectures) are not checked.
    """
    shapes, layers = projection_shapes(base_config), base_config.get("num_hidden_layers")
    for key, t in header.items():
        m = _LORA_KEY.search(key)
        if not m or key == "__metadata__":
            continue
        layer, proj, ab = int(m[1]), m[2], m[3]
        if layers is not None and layer >= layers:
            return f"{key}: layer {layer}, but the base model has {layers} layers"
        if proj not in shapes or len(t.get("shape", ())) != 2:
            continue
        fan_in, fan_out = shapes[proj]
        got = t["shape"][1] if ab == "A" else t["shape"][0]
        want = fan_in if ab == "A" else fan_out
        if got != want:
            return (f"{key} has shape {t['shape']}, which needs a base whose {proj} has "
                    f"{'in' if ab == 'A' else 'out'} features {got}; this base has {want}")
    return None


def is_local_name(name: str) -> bool:
    """Whether model.name names a local folder (True) or a hub id (False); the rule both the loader
    and verify_setup.py apply.

    'org/name' is a hub id, unless its first component is a local folder or this repo's models/
    (then it is a path, reported missing instead of tried on the hub); './x', '/x', '~/x', anything
    with more than one '/' and anything that exists on disk is a path.
    """
    first = name.split("/", 1)[0]
    return (name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1
            or os.sep != "/" and os.sep in name
            or first == "models" or (first != name and Path(first).is_dir()))


def model_folder(name: str) -> Path | None:
    """The folder model.name loads from without a download: a local folder, or the Hugging Face cache's
    snapshot of a hub id; None when neither is on disk."""
    if is_local_name(name):
        folder = Path(name).expanduser()
        return folder if folder.is_dir() else None
    try:
        from huggingface_hub import try_to_load_from_cache
        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - an invalid hub id is simply not on disk
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def base_config(name: str) -> dict | None:
    """model.name's config.json when it is on disk."""
    folder = model_folder(name)
    try:
        return json.loads((folder / "config.json").read_text()) if folder else None
    except (OSError, ValueError):
        return None


_FINGERPRINTS: dict[tuple, str] = {}  # (resolved path, size, mtime_ns) -> sha256: each file read once


def fingerprint_file(path: Path) -> str:
    """sha256 of a whole file (adapters: tens to hundreds of MB, well under a second), read once per
    version of the file in a process (a run's checks ask for the same adapter's several times)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def fingerprint_model(folder: Path) -> str | None:
    """A fingerprint of a base model's weights that reads a few MiB, not gigabytes: config.json, and of
    each weight file its name, size and first FINGERPRINT_BYTES. Two checkpoints of one architecture
    differ there (their first tensors differ); a copy of the same model has the same fingerprint."""
    folder = Path(folder)
    try:
        files = model_weight_files(folder)
        h = hashlib.sha256((folder / "config.json").read_bytes())
        for f in files:
            with f.open("rb") as fh:
                h.update(f"{f.name}:{os.path.getsize(f)}".encode())
                if f.suffix == ".safetensors":  # skip past the header: it names shapes, not values
                    n = struct.unpack("<Q", fh.read(8))[0]
                    h.update(fh.read(n))
                h.update(fh.read(FINGERPRINT_BYTES))
    except (OSError, UserError):
        return None
    return h.hexdigest()[:16]


def fingerprint_base(name: str) -> str | None:
    """fingerprint_model of model.name where it is on disk (a local folder or the hub cache), else None."""
    folder = model_folder(name)
    return fingerprint_model(folder) if folder else None
