"""Check that this machine can run the experiment before spending hours on it.

    python verify_setup.py --config configs/llama3_8b.yaml             # GPU: versions, GPU + driver, xformers, Unsloth, 4-bit, model, data
    python verify_setup.py --config configs/llama3_8b.yaml --smoke     # GPU: also a few SFT+DPO steps with the resolved backend
    python verify_setup.py --config configs/cpu_demo.yaml              # CPU demo (what `make verify` runs)
    python verify_setup.py --config configs/tiny.yaml --smoke          # CPU smoke: also a few SFT+DPO steps on a tiny model
    python verify_setup.py --config configs/llama3_8b.yaml --for-eval  # before evaluate_dpo.py: adapters must exist

Prints one row per check: ✓ fine, ! works but worth knowing (slow path, not trained yet, ...),
✗ will fail (each with the command or setting that fixes it). Exit status 1 when any check is ✗.
A GPU nvidia-smi sees but torch cannot use, xformers that does not load, and a GPU-sized model
(models.gpu_refusal: the rule the scripts apply) without a usable GPU are each a ✗.
Without --smoke it runs in seconds and never trains, downloads or imports Unsloth on a CPU machine.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from dporec import UserError
from dporec import config as cfgmod

ROOT = Path(__file__).resolve().parent

OK, WARN, FAIL = "ok", "warn", "fail"
GPU_ONLY_PACKAGES = ("unsloth", "unsloth_zoo", "xformers", "torchvision")
# A version drift in these changes trainer/quantization behaviour (README "Versions"); in the rest it rarely matters.
CRITICAL_PACKAGES = {"torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate"}
MIN_PYTHON = (3, 10)  # transformers 5 and Unsloth need 3.10+
GB = 1024 ** 3


@dataclass
class Ctx:
    cfg: dict
    config_path: str
    for_eval: bool = False
    cuda: bool = False
    cache: dict = field(default_factory=dict)  # facts shared between checks (model config, ...)


def row(status, name, detail, fix=""):
    return (status, name, detail, fix)


def _install_hint(ctx: Ctx) -> str:
    return "pip install -r requirements.txt" if ctx.cuda else "pip install -r requirements-cpu.txt"


# ---------------------------------------------------------------------------------------------
# Versions

def parse_pins(path: Path) -> dict:
    """{name: packaging Requirement} of one requirements file, following `-r other.txt`."""
    from packaging.requirements import Requirement
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r"):
            pins.update(parse_pins(path.parent / line[2:].strip()))
            continue
        req = Requirement(line)
        pins[req.name.lower().replace("_", "-")] = req
    return pins


def _installed(name: str):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def check_python(ctx):
    v = sys.version_info
    text = f"{platform.python_version()} ({sys.executable})"
    if v[:2] < MIN_PYTHON:
        return row(FAIL, "python", text, f"use Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer")
    return row(OK, "python", text)


def check_packages(ctx):
    """One row for the packages that match their pins, one row per package that does not."""
    core = parse_pins(ROOT / "requirements-core.txt")
    gpu_file = parse_pins(ROOT / "requirements.txt")
    cpu_file = parse_pins(ROOT / "requirements-cpu.txt") if (ROOT / "requirements-cpu.txt").exists() else {}
    # torch is pinned per platform: a range for CUDA machines, one CPU wheel for CI.
    torch_req = (gpu_file if ctx.cuda else cpu_file or gpu_file).get("torch")
    wanted = dict(core, **({"torch": torch_req} if torch_req else {}))
    good, rows = [], []
    for name, req in wanted.items():
        have = _installed(name)
        spec = str(req.specifier)
        if have is None:
            rows.append(row(FAIL, name, f"not installed (want {spec})", _install_hint(ctx)))
        elif not req.specifier.contains(have.split("+")[0], prereleases=True):
            status = FAIL if name in CRITICAL_PACKAGES else WARN
            rows.append(row(status, name, f"{have}, but the requirements pin {spec}",
                            f"pip install '{name}{spec}'  (or {_install_hint(ctx)})"))
        else:
            good.append(f"{name} {have}")
    out = [row(OK, "packages", ", ".join(good))] if good else []
    if not ctx.cuda:
        have = [f"{n} {_installed(n)}" for n in GPU_ONLY_PACKAGES if _installed(n)]
        return out + rows + [row(WARN, "gpu packages", f"{', '.join(GPU_ONLY_PACKAGES)}: only used with a CUDA GPU "
                                                       f"(installed: {', '.join(have) or 'none'})")]
    for name in GPU_ONLY_PACKAGES:
        req = gpu_file.get(name.replace("_", "-"))
        have = _installed(name)
        spec = str(req.specifier) if req else "any"
        if have is None:
            rows.append(row(WARN, name, f"not installed (pin {spec}): the slower hf backend will be used",
                            "pip install -r requirements.txt"))
        elif req and not req.specifier.contains(have.split("+")[0], prereleases=True):
            rows.append(row(WARN, name, f"{have}, but requirements.txt pins {spec}", f"pip install '{name}{spec}'"))
        else:
            good.append(f"{name} {have}")
    out = [row(OK, "packages", ", ".join(good))] if good else []
    return out + rows


# ---------------------------------------------------------------------------------------------
# Hardware and backend

MIN_DRIVER = 570  # R570 shipped with CUDA 12.8, what torch 2.10.0's PyPI wheel (requirements.txt) is built for
TORCH_FIX = ("pip install -r requirements.txt  (torch 2.10.0, the CUDA 12.8 build; needs NVIDIA driver R570+: "
             "update the driver if nvidia-smi shows an older one)")


def gpu_unusable_row(smi: dict, torch_version: str, torch_cuda: str | None):
    """nvidia-smi sees a GPU but torch.cuda.is_available() is False: a ✗ with the fix for the likely cause."""
    from dporec.hardware import why_no_cuda
    detail = why_no_cuda(smi, torch_cuda, torch_version)
    driver_cuda = _version_tuple(smi.get("cuda"))
    if torch_cuda is None:
        fix = TORCH_FIX
    elif driver_cuda and _version_tuple(torch_cuda)[:1] > driver_cuda[:1]:
        fix = (f"this torch needs a driver for CUDA {torch_cuda}, the driver offers {smi.get('cuda')}: "
               f"update the NVIDIA driver, or {TORCH_FIX}")
    else:
        fix = f"check CUDA_VISIBLE_DEVICES and that no other process holds the GPU exclusively; else {TORCH_FIX}"
    return row(FAIL, "gpu", detail, fix)


def _version_tuple(v: str | None) -> tuple:
    try:
        return tuple(int(x) for x in str(v).split("+")[0].split("."))
    except ValueError:
        return ()


def driver_row(smi: dict | None):
    if smi is None:
        return None
    major = (_version_tuple(smi["driver"]) or (0,))[0]
    text = f"NVIDIA driver {smi['driver']} (CUDA {smi.get('cuda') or '?'})"
    if major and major < MIN_DRIVER:
        return row(WARN, "driver", f"{text}: older than R{MIN_DRIVER}, which CUDA 12.8 (torch 2.10.0) was built "
                                   f"for; it runs through CUDA minor-version compatibility, if kernels fail to "
                                   f"load this is why", f"update the NVIDIA driver to R{MIN_DRIVER} or newer")
    return row(OK, "driver", text)


def check_gpu(ctx):
    import torch
    from dporec.hardware import bf16_supported, nvidia_smi
    smi = nvidia_smi()
    if not ctx.cuda:
        if smi is not None:
            return gpu_unusable_row(smi, torch.__version__, torch.version.cuda)
        return row(WARN, "gpu", "CPU only: the hf backend will be used, slowly (fine for configs/tiny.yaml "
                                "and configs/cpu_demo.yaml; the 8B runs need a CUDA GPU)")
    p = torch.cuda.get_device_properties(0)
    bf16 = bf16_supported((p.major, p.minor))
    detail = (f"{p.name}, {p.total_memory / GB:.1f} GiB, compute capability {p.major}.{p.minor}, "
              f"bf16 {'yes' if bf16 else 'no (fp16 will be used)'}; torch {torch.__version__}")
    return [r for r in (row(OK, "gpu", detail), driver_row(smi)) if r]


def check_needs_gpu(ctx):
    """The scripts' own rule (models.gpu_refusal): a GPU-sized model without a usable CUDA device is a ✗."""
    from dporec.hardware import gpu_refusal, why_no_cuda
    message = gpu_refusal(ctx.cfg, ctx.cuda, ctx.cache.get("n_params"))
    if not message:
        return []
    detail = gpu_refusal(ctx.cfg, ctx.cuda, ctx.cache.get("n_params"), why_no_cuda(), hint=False)
    return row(FAIL, "needs a gpu", detail,
               "run it on a machine whose GPU torch can use (the gpu row says why this one cannot)")


def xformers_mismatch(build: dict, torch_version: str, torch_cuda: str | None) -> str | None:
    """Why xformers' compiled kernels (built for build['version']['torch'] / ['cuda']) do not fit this torch."""
    want = build["version"]["torch"]
    cuda = build["version"].get("cuda")
    want_cuda = f"{cuda // 100}.{cuda % 100 // 10}" if isinstance(cuda, int) else None
    if torch_cuda is None:
        return f"xformers is built for torch {want} (CUDA {want_cuda}); torch {torch_version} is a CPU-only build"
    if want_cuda and torch_cuda.split(".")[0] != want_cuda.split(".")[0]:
        return (f"xformers is built for torch {want} (CUDA {want_cuda}); torch {torch_version} is built for "
                f"CUDA {torch_cuda}, so its kernels cannot find libcudart.so.{want_cuda.split('.')[0]}")
    if _version_tuple(want)[:3] != _version_tuple(torch_version)[:3]:
        return f"xformers is built for torch {want}; torch {torch_version} is not the set requirements.txt pins"
    return None


def check_xformers(ctx):
    """Installed but not loading, xformers is worse than absent: Unsloth falls back to PyTorch attention
    with a one-line message, and runs slower with more memory than the pinned install."""
    if not ctx.cuda or importlib.util.find_spec("xformers") is None:
        return []
    import torch
    try:
        import xformers
        loaded, error = xformers._has_cpp_library, xformers._cpp_lib._cpp_library_load_exception
    except Exception as e:  # noqa: BLE001 - any import failure is what the user needs to see
        loaded, error = False, e
    build_file = Path(importlib.util.find_spec("xformers").submodule_search_locations[0]) / "cpp_lib.json"
    why = (xformers_mismatch(json.loads(build_file.read_text()), torch.__version__, torch.version.cuda)
           if build_file.is_file() else None)
    if loaded:
        return row(OK, "xformers", f"{_installed('xformers')} loads its CUDA kernels")
    detail = f"xformers {_installed('xformers')} is installed but does not load: {why or error}"
    return row(FAIL, "xformers", detail.splitlines()[0],
               "pip install -r requirements.txt (torch, torchvision and xformers built together), "
               "or pip uninstall xformers to run on PyTorch attention knowingly")


def check_backend(ctx):
    """models.choose_backend's choice (the rule the scripts apply), importing Unsloth only where it is chosen."""
    from dporec.models import choose_backend, several_processes
    requested = ctx.cfg["model"]["backend"]
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    try:
        backend, why = choose_backend(requested, ctx.cuda, has_unsloth, several_processes())
    except UserError as e:
        ctx.cache["backend"] = "hf"
        fix = "pip install -r requirements.txt" if ctx.cuda and not has_unsloth else "pass model.backend=hf (or auto)"
        return row(FAIL, "backend", str(e), fix)
    # --smoke runs with this backend, so it imports what the real run imports
    ctx.cache["backend"] = backend
    if backend == "hf":
        if requested == "hf":
            return row(OK, "backend", "hf (transformers + bitsandbytes + PEFT), as configured")
        if ctx.cuda and not has_unsloth:
            return row(WARN, "backend", f"auto -> hf ({why}: slower, more memory)", "pip install -r requirements.txt")
        return row(OK, "backend", f"auto -> hf ({why}; unsloth not imported)")
    try:
        # Must come before transformers/trl/peft are imported (it patches them): this check runs
        # before any check that imports them.
        import unsloth  # noqa: F401
    except Exception as e:  # an import error here is exactly what the user needs to see
        ctx.cache["backend"] = "hf"
        return row(FAIL, "backend", f"unsloth is installed but fails to import: {type(e).__name__}: {e}",
                   "pip install -r requirements.txt, or pass model.backend=hf")
    return row(OK, "backend", f"{requested} -> unsloth {_installed('unsloth')} (imports fine)")


def check_bnb_4bit(ctx):
    """NF4 quantize a random weight and compare a 4-bit matmul with the dequantized fp matmul."""
    import torch
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except Exception as e:
        return row(FAIL, "4-bit matmul", f"bitsandbytes does not import: {type(e).__name__}: {e}", _install_hint(ctx))
    dev = "cuda" if ctx.cuda else "cpu"
    dtype = torch.float16 if ctx.cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 128, generator=gen).to(dev, dtype)
    x = torch.randn(4, 128, generator=gen).to(dev, dtype)
    q, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
    w_deq = F.dequantize_4bit(q, state)
    out = bnb.matmul_4bit(x, q.t(), quant_state=state).float()
    ref = (x @ w_deq.t()).float()
    err = (out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)
    qerr = ((w - w_deq).float().abs().mean() / w.float().abs().mean()).item()
    detail = f"NF4 on {dev}: matmul vs dequantized weight rel. error {err:.1e}, weight quantization error {qerr:.1%}"
    if not torch.isfinite(out).all() or err > 2e-2 or qerr > 0.25:
        return row(FAIL, "4-bit matmul", detail,
                   f"reinstall bitsandbytes ({_install_hint(ctx)}); on a GPU check that the CUDA driver matches torch")
    return row(OK, "4-bit matmul", detail)


# ---------------------------------------------------------------------------------------------
# Model

def _build_hint(name: str) -> str:
    if "smollm2" in name.lower():
        return f"python scripts/prepare_smollm2.py --out {name}"
    if "tiny" in name.lower():
        return f"python scripts/build_tiny_model.py --out {name}"
    return "point model.name at a folder with config.json, or a hub id"


def check_model(ctx):
    from dporec.models import is_local_name
    name = ctx.cfg["model"]["name"]
    if is_local_name(name):  # the loader's own rule: what it would look for on disk, verify looks for here
        folder = Path(name).expanduser()
        if not folder.is_dir():
            return row(FAIL, "model", f"folder not found: {name}", _build_hint(name))
        if not (folder / "config.json").is_file():
            return row(FAIL, "model", f"{name} has no config.json", _build_hint(name))
        ctx.cache["model_config"] = folder / "config.json"
        return row(OK, "model", f"local folder {name}")
    from huggingface_hub import try_to_load_from_cache
    try:
        hit = try_to_load_from_cache(name, "config.json")
    except Exception as e:
        return row(FAIL, "model", f"{name!r} is neither a local folder nor a valid hub id ({e})", _build_hint(name))
    if isinstance(hit, str):
        ctx.cache["model_config"] = Path(hit)
        return row(OK, "model", f"{name} found in the Hugging Face cache ({Path(hit).parent})")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return row(WARN, "model", f"{name} is not in the local cache and HF_HUB_OFFLINE is set: needs hub access",
                   "unset HF_HUB_OFFLINE once to download it, or point model.name at a local copy")
    return row(WARN, "model", f"{name} is not cached: it will be downloaded from the hub on first use")


def _param_counts(config_file: Path) -> tuple[int, int]:
    """(total parameters, parameters in embeddings/LM head that stay unquantized), built on 'meta'."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    conf = AutoConfig.from_pretrained(config_file.parent)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    total = sum(p.numel() for p in model.parameters())
    emb = {id(p): p.numel() for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
           for p in m.parameters()}
    return total, sum(emb.values())


def check_memory(ctx):
    if "model_config" not in ctx.cache:
        return row(WARN, "memory", "model config not available: cannot estimate the memory needed")
    total, emb = _param_counts(ctx.cache["model_config"])
    ctx.cache["n_params"] = total
    four_bit = ctx.cfg["model"]["load_in_4bit"]
    wide = 2 if ctx.cuda else 4  # bf16/fp16 on GPU, fp32 on CPU (see models.compute_dtype)
    # NF4 with double quantization ~0.55 byte/param; embeddings and LM head stay in the compute dtype.
    weights = (total - emb) * (0.55 if four_bit else wide) + emb * wide
    # LoRA weights + optimizer states, activations at this sequence length, and the CUDA/torch runtime.
    overhead = 0.25 * weights + (1.5 if ctx.cuda else 1.0) * GB
    need = weights + overhead
    from dporec.hardware import free_memory
    free, cap, where = free_memory(ctx.cuda)
    size = f"{total / 1e9:.2f}B" if total >= 1e9 else f"{total / 1e6:.1f}M"
    detail = (f"{size} params -> about {need / GB:.1f} GiB to train "
              f"({'4-bit' if four_bit else 'unquantized'}); {where} free {free / GB:.1f} of {cap / GB:.1f} GiB")
    if need > cap:
        return row(FAIL, "memory", detail, "use a smaller model, or a machine with more memory")
    if need > free:
        return row(WARN, "memory", detail, "close other programs/notebooks holding memory")
    return row(OK, "memory", detail)


# ---------------------------------------------------------------------------------------------
# Data

def _prepare_hint(ctx) -> str:
    folder = Path(ctx.cfg["data"]["train_file"]).parent
    src = ctx.cfg["data"]["source"] or "<ml-1m.zip | recbole:ml-100k | synthetic:N>"
    return f"python data/prepare_movielens.py --source {src} --out {folder}"


def check_data(ctx):
    from dporec import data, splits
    d = ctx.cfg["data"]
    files = {split: Path(d[f"{split}_file"]) for split in ("train", "val", "test")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        if d["source"]:
            return row(WARN, "data", f"missing {', '.join(missing)}; run_experiment.py will build them from "
                                     f"data.source={d['source']}", _prepare_hint(ctx))
        return row(FAIL, "data", f"missing {', '.join(missing)}", _prepare_hint(ctx))
    loaded, rows = {}, []
    for split, path in files.items():
        try:
            loaded[split] = data.load_examples(path)
        except UserError as e:
            rows.append(row(FAIL, f"data: {split}", str(e),
                            f"fix the line(s) above, or rebuild: {_prepare_hint(ctx)} --force"))
    if rows:
        return rows
    parts, warnings = [], []
    for split, exs in loaded.items():
        b = splits.balance(exs)
        limit = d.get(f"max_{split}_examples")
        used = f", first {limit} used" if limit and limit < b["n"] else ""
        parts.append(f"{split} {b['n']} (A {100 * b['a_fraction']:.0f}%{used})")
        w = splits.balance_warning(exs, str(files[split]))
        if w:
            warnings.append(w)
    rows.append(row(OK, "data: files", "; ".join(parts)))
    for w in warnings:
        rows.append(row(WARN, "data: balance", w, "python data/check_dataset.py ... --rebalance OUT.jsonl"))
    rows.append(_check_users(loaded))
    rows.append(_check_pairs(loaded))
    rows.append(_check_ids(loaded))
    return rows


def _check_users(loaded):
    """Users shared by two splits (splits.shared_between, as data/check_dataset.py asks)."""
    from dporec import splits
    users = {s: {e.user_id for e in exs} for s, exs in loaded.items()}
    if any(None in u for u in users.values()):
        return row(WARN, "data: users", "some records have no user_id: cannot check that splits are user-disjoint")
    for a, b, both in splits.shared_between(loaded, lambda e: e.user_id)[:1]:
        ex = next(e for e in loaded[b] if e.user_id in set(both))
        return row(FAIL, "data: users", f"{len(both)} user(s) in both {a} and {b} (e.g. user {ex.user_id} "
                                         f"at {ex.source}): test scores would leak training users",
                   "rebuild the splits by user with data/prepare_movielens.py")
    n = {s: len(u) for s, u in users.items()}
    return row(OK, "data: users", f"disjoint across splits (train {n['train']}, val {n['val']}, test {n['test']} users)")


def _check_pairs(loaded):
    from dporec import splits
    for exs in loaded.values():
        problems = splits.pair_problems(exs)
        if problems:
            return row(FAIL, "data: pairs", problems[0], "fix that record's options/reasons, or drop it")
    return row(OK, "data: pairs", "every rejected answer differs from its chosen answer")


def _check_ids(loaded):
    from dporec import splits
    for a, b, ids in splits.shared_between(loaded, lambda e: e.pair_id)[:1]:
        where = {split: next(e.source for e in loaded[split] if e.pair_id == ids[0]) for split in (a, b)}
        return row(FAIL, "data: ids", f"id {ids[0]!r} at {where[a]} and at {where[b]}",
                   "give every example a unique id (data/prepare_movielens.py does)")
    return row(OK, "data: ids", f"{sum(len(exs) for exs in loaded.values())} unique ids across the three files")


# ---------------------------------------------------------------------------------------------
# Disk and adapters

def _lora_params(config_file: Path, r: int, targets) -> int:
    c = json.loads(config_file.read_text())
    h, inter = c.get("hidden_size", 0), c.get("intermediate_size", 0)
    heads = c.get("num_attention_heads", 1)
    kv = c.get("num_key_value_heads", heads) * c.get("head_dim", h // max(heads, 1))
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    per_layer = sum(r * sum(shapes[t]) for t in targets if t in shapes)
    return per_layer * c.get("num_hidden_layers", 0)


def check_disk(ctx):
    out = Path(ctx.cfg["output_dir"]).resolve()
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = 1 * GB  # unknown model: a generous floor for adapters, checkpoints and results
    if "model_config" in ctx.cache:
        lora = _lora_params(ctx.cache["model_config"], ctx.cfg["lora"]["r"], ctx.cfg["lora"]["target_modules"])
        # fp32 adapter + two Adam states per checkpoint, save_total_limit checkpoints + the final adapter,
        # for SFT, DPO (which also saves its frozen ref copy) and the control arm.
        per_stage = lora * 4 * (3 * ctx.cfg["train"]["save_total_limit"] + 2)
        need = max(3 * per_stage + 100 * 1024 ** 2, 200 * 1024 ** 2)
    detail = f"{free / GB:.1f} GiB free at {probe}; checkpoints need about {need / GB:.2f} GiB"
    if free < need:
        return row(FAIL, "disk", detail, "free disk space or set output_dir=<a roomier disk>")
    return row(OK, "disk", detail)


def check_adapters(ctx):
    """The adapters evaluate_dpo.py will load (runs.eval_adapters, its own list), plus the control arm's."""
    from dporec import models, runs
    try:
        adapters = runs.eval_adapters(ctx.cfg, with_control=True)
    except UserError as e:
        return row(FAIL, "adapters", str(e), "fix eval.models / eval.adapters")
    rows = []
    for name, path in adapters.items():
        if path is None:  # the base model
            continue
        label = f"adapter: {name}"
        if not runs.has_adapter(path):
            what = ("folder exists but holds no adapter yet (training unfinished? rerun with --resume)"
                    if path.is_dir() else "not trained yet")
            if ctx.for_eval:
                rows.append(row(FAIL, label, f"{path}: {what}",
                                f"train it first (python run_experiment.py --config {ctx.config_path})"))
            else:
                rows.append(row(WARN, label, f"{path}: {what}"))
            continue
        try:
            acfg = models.check_adapter(path, ctx.cfg["model"]["name"])
        except UserError as e:
            rows.append(row(FAIL, label, str(e), "retrain it on this model.name, or set model.name to its base"))
            continue
        rows.append(row(OK, label, f"{path} (r={acfg.get('r')}, base {acfg.get('base_model_name_or_path')})"))
    return rows or [row(OK, "adapters", "none to evaluate besides the base model")]


# ---------------------------------------------------------------------------------------------
# Smoke training

def check_smoke(ctx):
    """A few SFT and DPO steps on a tiny model and synthetic data, through the scripts' own run(cfg)."""
    from dporec import local_models, movielens
    import train_dpo
    import train_sft
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="dporec-smoke-") as tmp:
        tmp = Path(tmp)
        model_dir = local_models.build_tiny_llama(tmp / "tiny-llama", seed=0)
        movielens.build_from_source("synthetic:30", tmp / "data", seed=0)
        cfg = smoke_config(ctx, tmp, model_dir)
        for stage, script in (("SFT", train_sft), ("DPO", train_dpo)):
            code = _call(script.run, cfg)
            if code:
                return row(FAIL, "smoke training", f"{stage} exited with status {code} (output above)",
                           "read the error above; python train_sft.py --config configs/tiny.yaml reproduces it")
    return row(OK, "smoke training", f"3 SFT + 3 DPO steps on a tiny 4-bit Llama in {time.time() - t0:.0f} s "
                                     f"(backend {ctx.cache.get('backend', 'hf')})")


def smoke_config(ctx, tmp: Path, model_dir: Path) -> dict:
    """The smoke run's config. It keeps the backend check_backend resolved for the user's config:
    with backend auto the tiny config would import Unsloth after this process imported transformers."""
    data = tmp / "data"
    return cfgmod.updated(cfgmod.load_config(ROOT / "configs" / "tiny.yaml"), {
        "model.name": str(model_dir), "model.backend": ctx.cache.get("backend", "hf"), "output_dir": str(tmp / "run"),
        "data.train_file": str(data / "train.jsonl"), "data.val_file": str(data / "val.jsonl"),
        "data.test_file": str(data / "test.jsonl"), "sft.max_steps": 3, "dpo.max_steps": 3,
        "data.max_train_examples": 12})


def _call(run, cfg) -> int:
    try:
        return run(cfg) or 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------

SYMBOLS = {OK: "✓", WARN: "!", FAIL: "✗"}
ASCII_SYMBOLS = {OK: "OK", WARN: "!", FAIL: "X"}


def run_checks(checks, ctx) -> list[tuple]:
    """Run each check; an unexpected exception becomes a ✗ row, never a traceback."""
    rows = []
    for check in checks:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        try:
            out = check(ctx)
        except Exception as e:
            last = traceback.extract_tb(e.__traceback__)[-1]
            out = row(FAIL, name, f"the check itself failed: {type(e).__name__}: {e} "
                                  f"({Path(last.filename).name}:{last.lineno})",
                      "report this output; the other rows are still valid")
        rows += out if isinstance(out, list) else [out]
    return rows


def format_rows(rows, symbols=SYMBOLS) -> str:
    width = max(len(r[1]) for r in rows)
    lines = []
    for status, name, detail, fix in rows:
        first, *rest = str(detail).splitlines() or [""]
        lines.append(f" {symbols[status]:<2} {name:<{width}}  {first}")
        lines += [f"    {'':<{width}}  {more.strip()}" for more in rest]
        if fix and status != OK:
            lines.append(f"    {'':<{width}}  fix: {fix}")
    return "\n".join(lines)


def _symbols():
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
        return SYMBOLS
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS


def main(argv=None) -> int:
    def extra(p: argparse.ArgumentParser):
        p.add_argument("--smoke", action="store_true", help="also run a few SFT and DPO steps on a tiny model")
        p.add_argument("--for-eval", action="store_true", help="adapters in output_dir must exist (before evaluation)")

    args, cfg = cfgmod.parse_args(__doc__, argv, extra=extra)
    import torch
    ctx = Ctx(cfg=cfg, config_path=args.config, for_eval=args.for_eval, cuda=torch.cuda.is_available())
    # check_backend first: on a GPU it imports Unsloth, which must precede transformers/peft.
    checks = [check_python, check_backend, check_packages, check_gpu, check_xformers, check_bnb_4bit, check_model,
              check_memory, check_needs_gpu, check_data, check_disk, check_adapters]
    if args.smoke:
        checks.append(check_smoke)
    print(f"verify_setup: {args.config}" + (" (for evaluation)" if args.for_eval else ""))
    rows = run_checks(checks, ctx)
    symbols = _symbols()
    print(format_rows(rows, symbols))
    n = {s: sum(r[0] == s for r in rows) for s in (OK, WARN, FAIL)}
    print(f"\n{n[OK]} passed, {n[WARN]} warnings, {n[FAIL]} failed")
    if n[FAIL]:
        print(f"{symbols[FAIL]} fix the failed checks above before running the experiment.")
        return 1
    print("ready: python run_experiment.py --config " + args.config)
    return 0


if __name__ == "__main__":
    cfgmod.run_main(main)
