"""Backends: which one runs (unsloth or hf), and loading the 4-bit base and a trainable LoRA with it.

Two backends load the same 4-bit NF4 base and produce the same kind of PEFT LoRA adapter:
  unsloth - FastLanguageModel (fused kernels, "unsloth" gradient checkpointing); CUDA GPUs only.
  hf      - transformers + BitsAndBytesConfig (NF4, double quantization) + PEFT; runs anywhere,
            CPU included (bitsandbytes >= 0.49 has CPU 4-bit kernels).
`auto` picks unsloth when a CUDA GPU and the package are present, else hf, and says which.

Unsloth patches transformers/trl/peft when imported, so the process setup (modeling.runtime) imports it
before any of them; nothing in this package imports those libraries at module import time.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dporec import UserError, broken_link, compat, weights
from dporec.modeling.hardware import cuda_capability, dtype_for, return_freed_memory
from dporec.runs.adapters import check_adapter
from dporec.weights import is_local_name

SHARED_PROMPT_NEEDS_HF = ("dpo.prefix_sharing=true: the shared-prompt DPO forward needs a custom attention "
                          "mask, which Unsloth's patched Llama drops in training")


def choose_backend(requested: str, has_cuda: bool, has_unsloth: bool,
                   several: bool = False, shared_prompt: bool = False) -> tuple[str, str]:
    """(backend, why) for model.backend on a machine with these facts; UserError where it cannot run.

    The rule the process setup (modeling.runtime) applies and verify_setup.py reports, without importing
    anything.
    Several processes (accelerate launch): the hf path is the one tested with DDP here; Unsloth's
    multi-GPU route has not been run with these scripts, so it is not chosen silently. shared_prompt:
    the DPO stage with dpo.prefix_sharing, which runs on hf.
    """
    if requested == "auto":
        backend = "unsloth" if has_cuda and has_unsloth and not several and not shared_prompt else "hf"
        why = ("CUDA GPU and unsloth found" if backend == "unsloth" else
               "no CUDA GPU" if not has_cuda else "unsloth is not installed" if not has_unsloth else
               "several processes: DDP runs on the hf path" if several else
               SHARED_PROMPT_NEEDS_HF + " (dpo.prefix_sharing=false: DPO under Unsloth)")
        return backend, why
    if requested == "unsloth":
        if not has_cuda:
            raise UserError("model.backend=unsloth needs a CUDA GPU; use "
                            "model.backend=hf (or auto) on this machine")
        if not has_unsloth:
            raise UserError("model.backend=unsloth but unsloth is not installed: "
                            "pip install -r requirements.txt")
        if several:
            raise UserError("model.backend=unsloth under accelerate launch with several processes is not "
                            "supported by these scripts (untested); use model.backend=hf "
                            "(or auto) for multi-GPU training")
        if shared_prompt:
            raise UserError(f"model.backend=unsloth with {SHARED_PROMPT_NEEDS_HF}: set "
                            "dpo.prefix_sharing=false to train DPO under Unsloth, or model.backend=auto "
                            "(DPO then runs on hf)")
        return "unsloth", "as configured"
    if requested == "hf":
        return "hf", "as configured"
    raise UserError(f"model.backend must be auto, unsloth or hf, got {requested!r}")


def world_size() -> int:
    """Processes training together: WORLD_SIZE under `accelerate launch` / torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def several_processes() -> bool:
    return world_size() > 1


def prepare_generation(model, backend: str) -> None:
    """Unsloth's fast generation path (its inference mode) for sampling; the hf path needs nothing."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        FastLanguageModel.for_inference(model)


def decoder_of(model):
    """The decoder stack (e.g. LlamaModel) under a PeftModel / ForCausalLM; None when it exposes none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dec = base.get_decoder() if hasattr(base, "get_decoder") else None
    return None if dec is None or dec is base else dec


def release_memory() -> None:
    """Hand freed model memory back (call after dropping the last reference to a model)."""
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    else:
        return_freed_memory()


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(cfg: dict, capability=...) -> torch.dtype:
    """The compute dtype of this config on this machine (capability: pass one to ask about another GPU)."""
    return dtype_for(cfg["model"]["dtype"], cuda_capability() if capability is ... else capability)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def check_model_name(name: str) -> None:
    """What loading model.name would trip over, before it loads: a missing folder, a folder without
    config.json or with missing or truncated weights, a hub id that is not cached while offline."""
    if is_local_name(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            hint = " (build it with: make models)" if "models/" in name else ""
            raise UserError(f"model.name: {broken_link(folder) or f'folder not found: {name}{hint}'}")
        if not (folder / "config.json").is_file():
            raise UserError(f"model.name: {name} has no config.json: not a model folder")
        weights.check_model_files(folder)
        return
    cached = weights.model_folder(name)
    if hub_offline():
        if cached is None:
            raise UserError(f"model.name={name} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
                            "download it once with network access, or point model.name at a local folder")
        weights.check_model_files(cached)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        # Llama 3 has no pad token; padding is masked out, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    return tok


# Non-reentrant checkpointing: passed explicitly wherever checkpointing is switched on (transformers' own
# default differs between its entry points; PEFT's prepare_model_for_kbit_training picks reentrant).
CHECKPOINTING_KWARGS = {"use_reentrant": False}


def set_4bit_compute_dtype(model, dtype: torch.dtype) -> list[str]:
    """Make every 4-bit linear layer compute in `dtype`. For a pre-quantized checkpoint transformers keeps the
    checkpoint's bnb_4bit_compute_dtype over the BitsAndBytesConfig passed in, so on a T4 (no bf16 tensor
    cores) the 4-bit matmuls could run in bf16 while the trainer runs fp16. Returns the dtypes replaced."""
    replaced = set()
    for m in model.modules():
        if not (type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes.")):
            continue  # (PEFT's LoRA wrapper of it has the same name)
        if m.compute_dtype != dtype:
            replaced.add(str(m.compute_dtype).replace("torch.", ""))
            m.compute_dtype = dtype
        m.compute_type_is_set = True  # else its first input's dtype could override it again
    return sorted(replaced)


def keep_compute_dtype(model, dtype: torch.dtype) -> int:
    """Cast the frozen floating-point weights prepare_model_for_kbit_training widened to fp32 (the input
    embedding, the LM head and the norms: 2 x 525M parameters on Llama 3 8B, +~2 GiB, and an fp32 residual
    stream) back to the compute dtype, as the memory estimate (costmodel.peak_memory_gib) assumes and as
    Unsloth keeps them. Call before the LoRA adapter exists (TRL casts that one itself). Returns the count."""
    n = 0
    for p in model.parameters():
        # packed 4-bit weights may be stored in a float dtype (bnb_4bit_quant_storage): bytes, not numbers
        if type(p).__name__ == "Params4bit" or getattr(p, "quant_state", None) is not None:
            continue
        if p.is_floating_point() and p.dtype != dtype and not p.requires_grad:
            p.data = p.data.to(dtype)
            n += 1
    return n


def _hf_load(cfg: dict, name: str):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    dtype = compute_dtype(cfg)
    kwargs = {"dtype": dtype}
    if cfg["model"]["load_in_4bit"]:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    # Under `accelerate launch` each process holds its own copy on its own GPU (DDP).
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    kwargs["device_map"] = {"": local_rank} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    set_4bit_compute_dtype(model, dtype)
    return model


def _unsloth_load(cfg: dict, name: str, **kwargs):
    """FastLanguageModel.from_pretrained with this config's length and dtype (bf16 at capability >= 8.0)."""
    from unsloth import FastLanguageModel
    # use_exact_model_name: Unsloth would otherwise swap a 16-bit name (unsloth/llama-3-8b) for its 4-bit
    # upload, PEFT would record the swapped name, and the project's own adapters would then be refused
    # as trained on another base (runs.check_adapter)
    model, tok = FastLanguageModel.from_pretrained(
        model_name=name, max_seq_length=cfg["model"]["max_seq_length"], dtype=compute_dtype(cfg),
        load_in_4bit=cfg["model"]["load_in_4bit"], use_exact_model_name=True, **kwargs)
    set_4bit_compute_dtype(model, compute_dtype(cfg))
    problem = unsloth_chat_bos_problem(tok) if cfg["data"]["prompt_format"] == "chat" else None
    if problem:
        raise UserError(problem)
    return model, tok


# Unsloth's own rule (unsloth/models/_utils.py apply_unsloth_gradient_checkpointing, 2026.10.7): below this
# max_seq_length its "unsloth" mode falls back to plain checkpointing, because offloading each layer's input
# to CPU memory costs more than it saves on short rows.
UNSLOTH_OFFLOAD_FROM = 512


def unsloth_gradient_checkpointing(cfg: dict, longest: int | None = None):
    """Unsloth's use_gradient_checkpointing value for train.gradient_checkpointing, sized from the data:
    "unsloth" (activations offloaded to CPU) only when the stage's longest row reaches UNSLOTH_OFFLOAD_FROM
    tokens, else plain checkpointing (True). Unsloth itself decides from model.max_seq_length (512 here by
    default), which would offload rows of ~200-250 tokens for nothing. longest None: Unsloth's own choice."""
    if not cfg["train"]["gradient_checkpointing"]:
        return False
    return "unsloth" if longest is None or longest >= UNSLOTH_OFFLOAD_FROM else True


def unsloth_chat_bos_problem(tok) -> str | None:
    """Unsloth's SFT data preparation tokenizes without special tokens when the chat template holds
    the BOS token as literal text; data.format_prompt has already removed the template's BOS, so SFT
    would then train with no BOS at all while DPO and scoring have one. Refuse that tokenizer."""
    bos, template = getattr(tok, "bos_token", None), getattr(tok, "chat_template", None) or ""
    if bos and isinstance(template, str) and bos in template:
        return ("data.prompt_format=chat under Unsloth: this tokenizer's chat template contains the BOS "
                f"token {bos!r} as text, so Unsloth's SFT would train without a BOS while DPO and scoring "
                "use one. Use model.backend=hf, or data.prompt_format=alpaca.")
    return None


def load_base(cfg: dict, backend: str):
    """The (optionally 4-bit) base model and its tokenizer, frozen."""
    name = cfg["model"]["name"]
    check_model_name(name)
    try:
        if backend == "unsloth":
            model, tok = _unsloth_load(cfg, name)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
        else:
            model, tok = _hf_load(cfg, name), load_tokenizer(name)
            compat.disable_cpu_weight_packing(model)
    except OSError as e:  # no network for a hub id, a file that cannot be read: the library says which
        raise UserError(f"model.name={name}: cannot load it: {str(e).strip().splitlines()[0]}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def lora_config(cfg: dict):
    from peft import LoraConfig
    lc = cfg["lora"]
    return LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                      target_modules=list(lc["target_modules"]), bias="none", task_type="CAUSAL_LM")


def load_for_training(cfg: dict, backend: str, adapter: str | Path | None = None, longest: int | None = None):
    """Base model with a trainable LoRA: fresh (adapter=None) or continued from a saved adapter.
    longest: the stage's longest row in tokens (sizes Unsloth's checkpointing; see
    unsloth_gradient_checkpointing).

    The trainable adapter is named 'default' in both cases, which is what TRL expects when it
    builds a frozen 'ref' copy for DPO from an adapter-initialised policy.
    """
    gc = cfg["train"]["gradient_checkpointing"]
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        if adapter is not None:
            # Unsloth loads base + adapter together when given the adapter folder; trainable. Without
            # use_gradient_checkpointing its default ("unsloth") would ignore train.gradient_checkpointing.
            checkpointing = unsloth_gradient_checkpointing(cfg, longest)
            model, tok = _unsloth_load(cfg, str(adapter), use_gradient_checkpointing=checkpointing)
        else:
            model, tok = _unsloth_load(cfg, cfg["model"]["name"])
            lc = cfg["lora"]
            model = FastLanguageModel.get_peft_model(
                model, r=lc["r"], target_modules=list(lc["target_modules"]), lora_alpha=lc["alpha"],
                lora_dropout=lc["dropout"], bias="none",
                use_gradient_checkpointing=unsloth_gradient_checkpointing(cfg, longest),
                random_state=cfg["seed"])
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok

    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    model, tok = load_base(cfg, backend)
    if cfg["model"]["load_in_4bit"]:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
        keep_compute_dtype(model, compute_dtype(cfg))
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS)
        model.enable_input_require_grads()
    if adapter is not None:
        check_adapter(adapter, cfg["model"]["name"])
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        model = get_peft_model(model, lora_config(cfg))
    return model, tok
