"""One merged 16-bit model from the 4-bit base and a trained adapter (what export.py runs).

The adapter was trained on the 4-bit base, so the merge starts from exactly the weights it saw: the base
is loaded as its run loaded it (config.yaml in the adapter folder), dequantized, and the LoRA update is
added in full precision before the cast to --dtype. Under Unsloth, Unsloth's own merged save does this.
The folder loads with transformers alone (no PEFT, no bitsandbytes) and serves with vLLM or llama.cpp.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from dporec import UserError
from dporec.config import load_config, updated
from dporec.runs.adapters import check_adapter
from dporec.runs.lifecycle import check_writable
from dporec.runs.provenance import CONFIG, RUN_INFO, input_record

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")


def adapter_run_config(adapter: Path, base: str | None) -> dict:
    """The config the adapter was trained with (its config.yaml), else defaults with its recorded base."""
    acfg = check_adapter(adapter)
    recorded = adapter / CONFIG
    cfg = load_config(recorded, recorded=True) if recorded.is_file() else load_config(None)
    name = base or (cfg["model"]["name"] if recorded.is_file()
                    else acfg.get("base_model_name_or_path"))
    if not name:
        raise UserError(f"{adapter}: no config.yaml and no base_model_name_or_path in adapter_config.json; "
                        "pass --base NAME")
    return updated(cfg, {"model.name": name})


INFO = "export_info.json"  # what an export writes last: the mark of a folder an export made


def claim_out(out: Path, overwrite: bool, adapter: Path) -> None:
    """Refuse an --out that would lose something: the adapter itself, a folder inside it or holding it, a
    folder holding a run (its run_info.json), or, without --overwrite, any non-empty folder. With
    --overwrite only a folder an earlier export wrote (its export_info.json) is replaced."""
    o, a = out.resolve(), adapter.resolve()
    if o == a or a in o.parents or o in a.parents:
        raise UserError(f"--out {out} is, holds or lies inside the adapter {adapter}: choose a new folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a new folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace an earlier "
                            "export there, or choose another --out")
        if not (out / INFO).is_file():
            raise UserError(f"--out {out} holds files no export wrote (no {INFO}): --overwrite replaces only "
                            "an earlier export; choose a new --out")
        run = next(out.rglob(RUN_INFO), None)
        if run is not None:
            raise UserError(f"--out {out} holds a run ({run.parent}): choose a new --out")
    try:
        check_writable(out)
    except UserError as e:
        raise UserError(str(e).replace("Set output_dir to a writable folder", "Choose a writable --out")
                        ) from None


def export(adapter: str | Path, out: str | Path, dtype: str = "bfloat16", base: str | None = None,
           backend: str = "auto", overwrite: bool = False) -> Path:
    """Write the merged model (weights, config, tokenizer, model card, export_info.json) into `out`."""
    import torch

    from dporec.modeling import backends, runtime
    from dporec.modeling.hardware import quantized_weights
    adapter, out = Path(adapter), Path(out)
    cfg = adapter_run_config(adapter, base)
    check_adapter(adapter, cfg["model"]["name"])
    claim_out(out, overwrite, adapter)
    cfg = updated(cfg, {"model.backend": backend})
    chosen = runtime.setup(cfg, "eval").check("eval", "export.py")
    if chosen == "unsloth":
        problem = unsloth_export_problem(adapter, dtype, base, checkpoint_dtype(cfg["model"]["name"]))
        if problem:
            raise UserError(problem)
    adapter_sha256 = input_record({"a": adapter})["a"]["sha256"]  # before anything is written
    target = out.resolve() if out.is_symlink() else out  # a link to a folder: written where it leads
    # written into a temporary sibling and renamed into place: an interrupted export leaves --out as it was.
    # A mount point cannot be renamed onto: there the temporary folder is inside it, moved up at the end.
    in_place = target.is_dir() and os.path.ismount(target)
    tmp = target / ".exporting" if in_place else target.parent / f".{target.name}.exporting"
    shutil.rmtree(tmp, ignore_errors=True)
    _make_room(target, tmp.parent)
    try:
        if chosen == "unsloth":
            # Unsloth's merged save dequantizes the 4-bit base itself and writes the base checkpoint's dtype
            model, tok = backends.load_for_training(cfg, chosen, adapter=adapter)
            buffers = [d / UNSLOTH_BUFFERS for d in (Path.cwd(), tmp)]
            existed = {d for d in buffers if d.exists()}
            try:
                model.save_pretrained_merged(str(tmp), tok, save_method="merged_16bit")
            finally:  # the temporary folder Unsloth's merge may leave behind on an error
                for d in buffers:
                    if d not in existed:
                        shutil.rmtree(d, ignore_errors=True)
            dtype = checkpoint_dtype(str(tmp)) or dtype  # what was written, recorded as such
        else:
            model, tok = backends.load_base(cfg, chosen)
            if quantized_weights(model):
                model.dequantize()  # the 4-bit weights the adapter was trained on, exactly, in compute dtype
            from peft import PeftModel
            merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
            merged = merged.to(getattr(torch, dtype))
            merged.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))
        info = {"adapter": str(adapter), "adapter_sha256": adapter_sha256, "base": cfg["model"]["name"],
                "base_loaded_in_4bit": cfg["model"]["load_in_4bit"], "dtype": dtype, "backend": chosen}
        (tmp / "README.md").write_text(model_card(adapter, info))
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if in_place:
        _clear(target, keep=tmp.name)
        for p in tmp.iterdir():
            p.rename(target / p.name)
        tmp.rmdir()
    else:
        if target.exists():  # an earlier export (claim_out checked), or an empty folder
            shutil.rmtree(target)
        tmp.rename(target)
    log.info(f"[export] merged {adapter} into {cfg['model']['name']} -> {out} ({dtype}, {chosen})")
    return out


def _clear(folder: Path, keep: str | None = None) -> None:
    """Delete what is in `folder` (an earlier export: claim_out checked), except the entry `keep`."""
    for p in folder.iterdir():
        if p.name == keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _make_room(target: Path, writes_in: Path) -> None:
    """An earlier export in `target` stays until the new one is complete, so the disk holds both for a
    while (16 GB each for Llama 3 8B in 16-bit). Where the free space cannot hold a second copy of it, the
    earlier export is deleted first, saying so: then an interrupted export leaves none."""
    if not (target / INFO).is_file():
        return
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and not p.is_symlink())
    free = shutil.disk_usage(writes_in).free
    if free < 1.1 * size:
        log.warning(f"[export] {writes_in} has {free / 1e9:.1f} GB free, too little to write the new export "
                    f"beside the earlier one ({size / 1e9:.1f} GB): deleting the earlier export in {target} "
                    "first (an interruption now leaves no export there)")
        _clear(target)


UNSLOTH_BUFFERS = "_unsloth_temporary_saved_buffers"  # unsloth/save.py's scratch folder for merges


def checkpoint_dtype(name: str) -> str | None:
    """The dtype a model checkpoint's config.json names (dtype, or torch_dtype before transformers 5), when
    the checkpoint is on disk."""
    from dporec.weights import base_config
    config = base_config(name) or {}
    return config.get("dtype") or config.get("torch_dtype")


def unsloth_export_problem(adapter: Path, dtype: str, base: str | None, base_dtype: str | None) -> str | None:
    """What the Unsloth merge cannot honour (unsloth 2026.10.7, save.py / unsloth_zoo saving_utils.py):
    it loads the base recorded in the adapter (so --base cannot change it) and writes the base checkpoint's
    16-bit dtype whatever is asked. None when it can do what was asked."""
    recorded = check_adapter(adapter).get("base_model_name_or_path")
    if base and recorded and base != recorded:
        return (f"--base {base}: under Unsloth the merge loads the base path the adapter records "
                f"({recorded}) exactly; pass --backend hf to merge into another base or copy")
    if base_dtype and dtype != base_dtype:
        return (f"--dtype {dtype}: Unsloth's merged save writes the base checkpoint's dtype ({base_dtype}); "
                f"pass --dtype {base_dtype}, or --backend hf to write {dtype}")
    return None


def model_card(adapter: Path, info: dict) -> str:
    base = "4-bit NF4 base (dequantized)" if info["base_loaded_in_4bit"] else "base"
    return (f"# Merged model: {info['base']} + the adapter {adapter}\n\n"
            f"The LoRA adapter merged into the {base} it was trained on, saved in {info['dtype']}. "
            "Loads without PEFT:\n\n"
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "model = AutoModelForCausalLM.from_pretrained(\"THIS_FOLDER\")\n"
            "tokenizer = AutoTokenizer.from_pretrained(\"THIS_FOLDER\")\n```\n\n"
            "Serve it with vLLM (`vllm serve THIS_FOLDER`), or convert it for llama.cpp "
            "(`python convert_hf_to_gguf.py THIS_FOLDER`). What the adapter was trained for: "
            f"{adapter}/README.md. Export facts: export_info.json.\n")
