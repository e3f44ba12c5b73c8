"""Hardware rules: precision from the GPU's compute capability, which configs need a GPU, why torch
sees none, and which checkpoints are stored quantized.

Pure functions of their arguments where a decision is made (a capability tuple, a config, what
nvidia-smi printed), so the decisions a GPU run takes are tested on a CPU. One rule each, used by
verify_setup.py and by the scripts alike.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import torch

from dporec import UserError
from dporec.costmodel import ModelShape

# ---------------------------------------------------------------------------------------------
# Precision (capability None: no usable CUDA device)

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: RTX 30xx, A100, L4. T4 (7.5) and V100 (7.0) only emulate bf16


def cuda_capability() -> tuple[int, int] | None:
    """(major, minor) of GPU 0, or None when torch has no usable CUDA device."""
    return tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None


def bf16_supported(capability: tuple[int, int] | None) -> bool:
    """Native bf16 only. torch.cuda.is_bf16_supported() also counts emulated bf16 (True on a T4)."""
    return capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY


def dtype_for(name: str, capability: tuple[int, int] | None) -> torch.dtype:
    """model.dtype -> torch dtype: auto is bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU
    (CPU bf16 matmuls are slow). An explicit bfloat16 on a GPU without native bf16 is refused."""
    if name == "auto":
        if capability is None:
            return torch.float32
        return torch.bfloat16 if bf16_supported(capability) else torch.float16
    if name == "bfloat16" and capability is not None and not bf16_supported(capability):
        raise UserError("model.dtype=bfloat16 needs compute capability >= 8.0 (Ampere or newer); this GPU "
                        f"has {capability[0]}.{capability[1]} and would only emulate it. Use "
                        "model.dtype=auto (float16 here).")
    return getattr(torch, name)


def unsloth_dtype_note(cfg: dict, backend: str, capability: tuple[int, int] | None) -> str | None:
    """A note (not a refusal) for fp16 under Unsloth on a GPU with bf16: Unsloth 2026.10 trains it when
    the trainer's precision flags agree with the model's dtype, which they always do here
    (training.trainer.precision_flags), but bf16 is the better choice there (no loss scaling)."""
    if backend == "unsloth" and cfg["model"]["dtype"] == "float16" and bf16_supported(capability):
        return (f"[dtype] model.dtype=float16 under Unsloth on a GPU with bf16 (compute capability "
                f"{capability[0]}.{capability[1]}): it trains, with loss scaling; "
                "model.dtype=auto picks bf16")
    return None


# ---------------------------------------------------------------------------------------------
# Which configs need a GPU. One rule, used by verify_setup.py (a ✗ row) and by every script
# (refusal before anything is loaded or downloaded).

GPU_MIN_PARAMS = 2e9  # 4-bit QLoRA of a model this size takes days per epoch on a CPU
_SIZE_RE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z0-9])", re.IGNORECASE)


def params_from_name(name: str) -> float | None:
    """Parameters a model name states ('llama-3-8b-bnb-4bit' -> 8e9, 'SmolLM2-135M' -> 1.35e8), else None."""
    sizes = [float(n) * (1e9 if unit.lower() == "b" else 1e6)
             for n, unit in _SIZE_RE.findall(Path(name).name)]
    return max(sizes) if sizes else None


def gpu_refusal(cfg: dict, cuda_usable: bool, n_params: float | None = None, why_no_gpu: str = "",
                hint: bool = True) -> str | None:
    """The message refusing to run this config here, or None when it may run.

    A model of GPU_MIN_PARAMS or more (counted from its config when known, else read from its name)
    needs a CUDA GPU. Without one, only an explicit opt-in runs it: model.backend=hf together with
    model.allow_cpu=true.
    """
    if cuda_usable:
        return None
    name = cfg["model"]["name"]
    size = n_params if n_params is not None else params_from_name(name)
    if size is None or size < GPU_MIN_PARAMS:
        return None
    if cfg["model"]["backend"] == "hf" and cfg["model"].get("allow_cpu"):
        return None
    why = f" ({why_no_gpu})" if why_no_gpu else ""
    fix = "Run python verify_setup.py --config <this config> for the fix. " if hint else ""
    return (f"model {name} (about {size / 1e9:.0f}B parameters) needs a CUDA GPU (an RTX 3090 / 24 GB, or a "
            f"Colab T4, L4 or A100), and torch sees none here{why}. {fix}For a CPU run use "
            "configs/cpu_demo.yaml. To train this model on the CPU anyway (days per epoch), pass "
            "model.backend=hf model.allow_cpu=true.")


def nvidia_smi() -> dict | None:
    """{'name', 'driver', 'cuda'} of GPU 0 as nvidia-smi reports it, or None when it does not run."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=20)
        q = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if q.returncode != 0 or not q.stdout.strip():
        return None
    gpu, _, driver = q.stdout.strip().splitlines()[0].rpartition(",")
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", out.stdout)
    return {"name": gpu.strip(), "driver": driver.strip(), "cuda": cuda.group(1) if cuda else None}


def why_no_cuda(smi: dict | None = ..., torch_cuda: str | None = ...,
                torch_version: str | None = None) -> str:
    """Why torch.cuda.is_available() is False, in words (for messages)."""
    smi = nvidia_smi() if smi is ... else smi
    torch_cuda = torch.version.cuda if torch_cuda is ... else torch_cuda
    torch_version = torch_version or torch.__version__
    if smi is None:
        return "no NVIDIA GPU found: nvidia-smi does not run"
    seen = f"nvidia-smi sees {smi['name']} (driver {smi['driver']}, CUDA {smi.get('cuda') or '?'})"
    if torch_cuda is None:
        return f"{seen}, but torch {torch_version} is a CPU-only build"
    return f"{seen}, but torch {torch_version} (built for CUDA {torch_cuda}) cannot use it"


def refuse_without_gpu(cfg: dict) -> None:
    """Stop a script, before any Unsloth import or download, when its model needs a GPU that is not here."""
    if torch.cuda.is_available():
        return
    n_params = model_params(cfg)
    if gpu_refusal(cfg, False, n_params):  # cheap first: nvidia-smi runs only when refusing
        raise UserError(gpu_refusal(cfg, False, n_params, why_no_cuda()))


def _local_config(name: str) -> dict | None:
    """model.name's config.json when it is a local folder, else None (nothing is downloaded)."""
    local = Path(name).expanduser() / "config.json"
    return json.loads(local.read_text()) if local.is_file() else None


def model_params(cfg: dict) -> float | None:
    """The parameter count the GPU rule uses (scripts and verify_setup alike), from a local config.json
    (costmodel.ModelShape: the one count)."""
    config = _local_config(cfg["model"]["name"])
    if not config:
        return None
    try:
        return float(ModelShape.from_config(config).params)
    except KeyError:  # not a decoder config this rule can count
        return None


# ---------------------------------------------------------------------------------------------
# Pre-quantized checkpoints

def prequantized(name: str, config: dict | None = None) -> bool:
    """True when model.name is a checkpoint stored quantized (no 16-bit weights to load)."""
    if config is not None and config.get("quantization_config"):
        return True
    return bool(re.search(r"(bnb[-_]4bit|[-_](4|8)bit$|gptq|awq)", Path(name).name, re.IGNORECASE))


def quantized_weights(model) -> bool:
    """Whether a loaded model holds quantized weights (loaded in 4-bit, or a pre-quantized checkpoint):
    the same rule as prequantized, asked of the loaded model's config."""
    config = getattr(model, "config", None)
    return prequantized(getattr(config, "name_or_path", "") or "",
                        config.to_dict() if hasattr(config, "to_dict") else None)


def prequantized_reason(cfg: dict) -> str | None:
    """Why eval.stability cannot compare 4-bit with 16-bit for this model (None: it can). Decided from the
    name and a local/cached config.json before anything loads, so both backends skip it the same way
    (Unsloth would otherwise map a '-bnb-4bit' name to its 16-bit repository and download ~16 GB)."""
    name = cfg["model"]["name"]
    if prequantized(name, _local_config(name)):
        return (f"{name} is a pre-quantized checkpoint; it has no 16-bit weights (point model.name at the "
                f"16-bit model to run the stability check)")
    return None


def free_memory(cuda: bool | None = None) -> tuple[int, int, str]:
    """(free bytes, total bytes, "GPU" or "RAM") on the device a model would load to.

    verify_setup.py's memory row and evaluate_dpo.py's stability check ask the same probe.
    """
    if torch.cuda.is_available() if cuda is None else cuda:
        free, total = torch.cuda.mem_get_info()
        return free, total, "GPU"
    try:
        import psutil
        vm = psutil.virtual_memory()
        return vm.available, vm.total, "RAM"
    except ImportError:
        import os
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page, "RAM"


def return_freed_memory() -> bool:
    """Hand memory that torch has freed back to the OS (glibc's malloc_trim); True where it ran.

    On CPU, torch allocates through malloc. A training step allocates and frees thousands of 0.5-8 MB
    tensors (activations, 4-bit weights dequantized for each matmul); glibc serves them from its heap
    and keeps what is freed, so the process's resident memory grows to several times what is live (the
    CPU demo's DPO stage: 6 GiB before its first step, 11 GiB peak). Trimming after each step keeps it
    near the live size for a few milliseconds. A no-op without glibc (macOS, Windows, musl).
    """
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        trim = getattr(libc, "malloc_trim", None)
    except OSError:
        return False
    if trim is None:
        return False
    trim(0)
    return True
