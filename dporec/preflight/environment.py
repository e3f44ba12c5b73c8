"""Preflight of the machine: Python and package versions, GPU, driver, xformers, backend and a 4-bit
matmul. Each check takes the shared Facts (preflight.table) and returns rows; checks call the runtime's own
rules (dporec.modeling.runtime / backends / hardware), never copies of them.
"""
from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path

from dporec import ROOT
from dporec.preflight.table import FAIL, GB, OK, WARN, row

GPU_ONLY_PACKAGES = ("unsloth", "unsloth_zoo", "xformers", "torchvision")
# A version drift in these changes trainer/quantization behaviour (docs/setup.md, "Versions"); elsewhere
# it rarely matters.
CRITICAL_PACKAGES = {"torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate"}
MIN_PYTHON = (3, 10)  # transformers 5 and Unsloth need 3.10+


def _install_hint(ctx) -> str:
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
        return out + rows + [row(WARN, "gpu packages", f"{', '.join(GPU_ONLY_PACKAGES)}: only used with a "
                                                       f"CUDA GPU (installed: {', '.join(have) or 'none'})")]
    for name in GPU_ONLY_PACKAGES:
        req = gpu_file.get(name.replace("_", "-"))
        have = _installed(name)
        spec = str(req.specifier) if req else "any"
        if have is None:
            rows.append(row(WARN, name, f"not installed (pin {spec}): the slower hf backend will be used",
                            "pip install -r requirements.txt"))
        elif req and not req.specifier.contains(have.split("+")[0], prereleases=True):
            rows.append(row(WARN, name, f"{have}, but requirements.txt pins {spec}", "pip install "
                                                                                     f"'{name}{spec}'"))
        else:
            good.append(f"{name} {have}")
    out = [row(OK, "packages", ", ".join(good))] if good else []
    return out + rows


# ---------------------------------------------------------------------------------------------
# Hardware and backend

# R570 shipped with CUDA 12.8, what torch 2.10.0's PyPI wheel (requirements.txt) is built for
MIN_DRIVER = 570
TORCH_FIX = ("pip install -r requirements.txt  (torch 2.10.0, the CUDA 12.8 build; needs NVIDIA driver "
             "R570+: update the driver if nvidia-smi shows an older one)")


def gpu_unusable_row(smi: dict, torch_version: str, torch_cuda: str | None):
    """nvidia-smi sees a GPU but torch.cuda.is_available() is False: a ✗ with the fix for the likely cause."""
    from dporec.modeling.hardware import why_no_cuda
    detail = why_no_cuda(smi, torch_cuda, torch_version)
    driver_cuda = _version_tuple(smi.get("cuda"))
    if torch_cuda is None:
        fix = TORCH_FIX
    elif driver_cuda and _version_tuple(torch_cuda)[:1] > driver_cuda[:1]:
        fix = (f"this torch needs a driver for CUDA {torch_cuda}, the driver offers {smi.get('cuda')}: "
               f"update the NVIDIA driver, or {TORCH_FIX}")
    else:
        fix = ("check CUDA_VISIBLE_DEVICES and that no other process "
               f"holds the GPU exclusively; else {TORCH_FIX}")
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
        return row(WARN, "driver", f"{text}: older than R{MIN_DRIVER}, which CUDA 12.8 (torch 2.10.0) was "
                                   "built "
                                   "for; it runs through CUDA minor-version compatibility, if kernels fail "
                                   "to "
                                   f"load this is why", f"update the NVIDIA driver to R{MIN_DRIVER} or newer")
    return row(OK, "driver", text)


def check_gpu(ctx):
    import torch

    from dporec.modeling.hardware import bf16_supported
    smi = ctx.nvidia_smi
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
    """The scripts' own rule (hardware.gpu_refusal): a GPU-sized model without a usable CUDA device is a ✗."""
    from dporec.modeling.hardware import gpu_refusal, model_params, why_no_cuda
    n_params = model_params(ctx.cfg)
    if not gpu_refusal(ctx.cfg, ctx.cuda, n_params):
        return []
    detail = gpu_refusal(ctx.cfg, ctx.cuda, n_params, why_no_cuda(ctx.nvidia_smi), hint=False)
    return row(FAIL, "needs a gpu", detail,
               "run it on a machine whose GPU torch can use (the gpu row says why this one cannot)")


def xformers_mismatch(build: dict, torch_version: str, torch_cuda: str | None) -> str | None:
    """Why xformers' compiled kernels (built for build['version']['torch'] / ['cuda']) do not fit torch."""
    want = build["version"]["torch"]
    cuda = build["version"].get("cuda")
    want_cuda = f"{cuda // 100}.{cuda % 100 // 10}" if isinstance(cuda, int) else None
    if torch_cuda is None:
        return (f"xformers is built for torch {want} (CUDA {want_cuda}); "
                f"torch {torch_version} is a CPU-only build")
    if want_cuda and torch_cuda.split(".")[0] != want_cuda.split(".")[0]:
        return (f"xformers is built for torch {want} (CUDA {want_cuda}); torch {torch_version} is built for "
                f"CUDA {torch_cuda}, so its kernels cannot find libcudart.so.{want_cuda.split('.')[0]}")
    if _version_tuple(want)[:3] != _version_tuple(torch_version)[:3]:
        return (f"xformers is built for torch {want}; torch {torch_version} "
                "is not the set requirements.txt pins")
    return None


def bitsandbytes_library_missing(libraries: list[str], torch_cuda: str | None) -> str | None:
    """Why bitsandbytes has no GPU kernels for this torch: it loads libbitsandbytes_cuda<XY>.so for
    torch.version.cuda (bitsandbytes/cextension.py), and a wheel without that library (a slimmed copy, or
    a torch of another CUDA) has none."""
    if not torch_cuda:
        return None
    major, minor = str(torch_cuda).split(".")[:2]
    want = f"libbitsandbytes_cuda{int(major)}{int(minor)}."
    if any(name.startswith(want) for name in libraries):
        return None
    return (f"no {want.rstrip('.')} for torch's CUDA {torch_cuda} (it has {', '.join(libraries) or 'none'}): "
            "no 4-bit GPU kernels")


STACK_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets", "unsloth",
                  "unsloth_zoo", "xformers", "triton", "torchao")
STACK_BLOCKING = ("gpu", "bitsandbytes")  # a problem here leaves nothing a GPU benchmark could measure


def stack_facts() -> dict:
    """The GPU stack a run or a benchmark measures, read from the installed files and torch alone: nothing
    that patches or compiles is imported, and no CUDA context is made (a benchmark's parent process must
    not hold GPU memory its children measure)."""
    import torch
    facts = {"python": platform.python_version(), "torch": torch.__version__,
             "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
             "versions": {p: _installed(p) for p in STACK_PACKAGES}, "xformers_build": None,
             "bitsandbytes_libraries": []}
    xf = importlib.util.find_spec("xformers")
    if xf and xf.submodule_search_locations:
        build = Path(xf.submodule_search_locations[0]) / "cpp_lib.json"
        facts["xformers_build"] = json.loads(build.read_text()) if build.is_file() else None
    bnb = importlib.util.find_spec("bitsandbytes")
    if bnb and bnb.submodule_search_locations:
        folder = Path(bnb.submodule_search_locations[0])
        facts["bitsandbytes_libraries"] = sorted(p.name for p in folder.glob("libbitsandbytes_*"))
    return facts


def stack_problems(facts: dict) -> dict[str, str]:
    """{part: why} for the parts of a stack (stack_facts) whose compiled code will not load here: no GPU,
    bitsandbytes without kernels for torch's CUDA, xformers built for another torch (its kernels do not
    load and Unsloth runs PyTorch attention instead), Unsloth absent."""
    out = {}
    if not facts["cuda_available"]:
        out["gpu"] = "no CUDA GPU visible to torch"
    if facts["versions"].get("bitsandbytes") is None:
        out["bitsandbytes"] = "not installed"
    else:
        missing = bitsandbytes_library_missing(facts["bitsandbytes_libraries"], facts["torch_cuda"])
        if missing:
            out["bitsandbytes"] = missing
    if facts["versions"].get("xformers") and facts.get("xformers_build"):
        why = xformers_mismatch(facts["xformers_build"], facts["torch"], facts["torch_cuda"])
        if why:
            out["xformers"] = why + ": its kernels will not load and Unsloth uses PyTorch attention instead"
    if facts["versions"].get("unsloth") is None:
        out["unsloth"] = "not installed: the Unsloth routes cannot run"
    return out


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
    """The backend the run's process setup chose (modeling.runtime: the scripts' rule), and whether Unsloth
    imported where it was chosen: the setup verify_setup.py made before any check."""
    from dporec.modeling import runtime
    from dporec.modeling.backends import world_size
    requested = ctx.cfg["model"]["backend"]
    chosen = runtime.plan(ctx.cfg, ctx.cuda, ctx.has_unsloth, world_size())
    backend, why = chosen["sft"]
    if backend is None:
        fix = ("pip install -r requirements.txt" if ctx.cuda and not ctx.has_unsloth
               else "pass model.backend=hf (or auto)")
        return row(FAIL, "backend", why, fix)
    if chosen["dpo"][0] is None:  # the config's other stages run; its DPO stage cannot
        detail = f"{backend} for SFT and evaluation, but DPO cannot run: {chosen['dpo'][1]}"
        return row(FAIL, "backend", detail, "set dpo.prefix_sharing=false, or model.backend=auto")
    if backend == "hf":
        if requested == "hf":
            return row(OK, "backend", "hf (transformers + bitsandbytes + PEFT), as configured")
        if ctx.cuda and not ctx.has_unsloth:
            return row(WARN, "backend", f"auto -> hf ({why}: slower, more memory)", "pip install -r "
                                                                                    "requirements.txt")
        return row(OK, "backend", f"auto -> hf ({why}; unsloth not imported)")
    if ctx.runtime is None:
        return row(FAIL, "backend", ctx.setup_error or "the process setup did not run",
                   "pip install -r requirements.txt, or pass model.backend=hf")
    return row(OK, "backend", f"{requested} -> unsloth {_installed('unsloth')} (imports fine)")


def check_bnb_4bit(ctx):
    """NF4 quantize a random weight and compare a 4-bit matmul with the dequantized fp matmul."""
    import torch
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except Exception as e:
        return row(FAIL, "4-bit matmul", f"bitsandbytes does not import: {type(e).__name__}: {e}",
                   _install_hint(ctx))
    if ctx.cuda:  # a wheel without the library for torch's CUDA has no GPU kernels at all
        missing = bitsandbytes_library_missing(stack_facts()["bitsandbytes_libraries"], torch.version.cuda)
        if missing:
            return row(FAIL, "4-bit matmul", f"bitsandbytes {_installed('bitsandbytes')}: {missing}",
                       _install_hint(ctx))
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
    detail = (f"NF4 on {dev}: matmul vs dequantized weight rel. error {err:.1e}, "
              f"weight quantization error {qerr:.1%}")
    if not torch.isfinite(out).all() or err > 2e-2 or qerr > 0.25:
        return row(FAIL, "4-bit matmul", detail,
                   f"reinstall bitsandbytes ({_install_hint(ctx)}); on "
                   "a GPU check that the CUDA driver matches torch")
    return row(OK, "4-bit matmul", detail)
