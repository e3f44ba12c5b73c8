"""What a configured run will cost before it runs: FLOPs per stage from the data and the config, turned
into wall time on a GPU at an assumed (or, where benchmarks/ measured it, a measured) utilisation, and
a peak-memory estimate. verify_setup.py prints it; README and docs/speed.md quote it.

FLOP conventions (N = the model's matmul parameters: everything but the input embedding, LM head
included; attention's sequence-squared term and 4-bit dequantization are not counted):
  trained token    6N: forward 2N, backward to the activations 2N (the 4-bit base gets no weight
                   gradients; LoRA's own FLOPs are <1%), and 2N for the forward that gradient
                   checkpointing recomputes (4N without checkpointing)
  forward token    2N: the frozen reference, validation, scoring, ranking
Token counts are the data's own (measured with the model's tokenizer when it is on disk, else
characters / 4); a stage's tokens follow what the code runs: one prompt per pair with dpo.prefix_sharing
(else two), the reference once with dpo.precompute_ref_log_probs (else every step), both full answers
per option order in scoring, one context per question in the ranking.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from dporec import ROOT

ASSUMED_UTILISATION = 0.40  # share of the dense bf16 peak a QLoRA step sustains (benchmarks/ measure it)
MEASURED_FILE = ROOT / "benchmarks" / "results" / "utilisation.json"  # written by benchmarks/bench_train.py
GIB = 1024 ** 3

# Dense (no sparsity) peak TFLOP/s for bf16 tensor-core matmuls with fp32 accumulation, memory in GiB and
# bandwidth in GB/s, from the vendors' spec sheets. First match wins, so variants come first. T4 has no
# bf16: its fp16 figure.
GPU_SPECS = (  # (regex on the lower-cased torch.cuda.get_device_name, label, TFLOP/s, GiB, GB/s)
    (r"h100.*pcie", "H100 PCIe", 756.0, 80, 2000.0),
    (r"h100.*nvl", "H100 NVL", 835.0, 94, 3900.0),
    (r"h100", "H100 SXM", 989.0, 80, 3350.0),
    (r"h200.*nvl", "H200 NVL", 835.0, 141, 4800.0),
    (r"h200", "H200 SXM", 989.0, 141, 4800.0),
    (r"a100.*80gb", "A100 80GB", 312.0, 80, 2039.0),
    (r"a100", "A100 40GB", 312.0, 40, 1555.0),
    (r"rtx 3090", "RTX 3090", 71.0, 24, 936.0),
    (r"\bl4\b", "L4", 121.0, 24, 300.0),
    (r"\bt4\b", "T4 (fp16)", 65.0, 15, 320.0),
)
RTX_3090, T4 = "NVIDIA GeForce RTX 3090", "Tesla T4"


def gpu_spec(device_name: str | None) -> dict | None:
    """{'label', 'bf16_tflops', 'memory_gib', 'bandwidth_gbs'} for a torch.cuda.get_device_name()."""
    name = (device_name or "").lower()
    for pattern, label, tflops, gib, gbs in GPU_SPECS:
        if re.search(pattern, name):
            return {"label": label, "bf16_tflops": tflops, "memory_gib": gib, "bandwidth_gbs": gbs}
    return None


# ---------------------------------------------------------------------------------------------
# What is computed: the model's shape and the data's sizes

@dataclass
class ModelShape:
    params: float            # all parameters
    embedding: float         # the input embedding (a lookup, no matmul)
    hidden: int
    layers: int
    vocab: int
    intermediate: int

    @property
    def matmul(self) -> float:
        return self.params - self.embedding


# Llama 3 8B (meta-llama/Meta-Llama-3-8B config.json): for a prediction before the weights are downloaded.
LLAMA3_8B = ModelShape(params=8_030_261_248, embedding=525_336_576, hidden=4096, layers=32, vocab=128256,
                       intermediate=14336)


def shape_from_config(config: dict) -> ModelShape:
    """A Llama-style config.json's parameter counts, by arithmetic (no model is built)."""
    h, layers, v = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    inter = config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or h // heads
    kv = config.get("num_key_value_heads") or heads
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    per_layer = attn + 3 * h * inter + 2 * h
    emb = v * h
    head = 0 if config.get("tie_word_embeddings") else v * h
    return ModelShape(params=emb + layers * per_layer + h + head, embedding=emb, hidden=h, layers=layers,
                      vocab=v, intermediate=inter)


@dataclass
class DataShape:
    train: int                 # training pairs in the file
    val: int
    test: int
    prompt: float              # mean tokens of a prompt (template and special tokens included)
    answer: float              # mean tokens of a chosen answer (the rejected one is as long: mirrored)
    ranking_users: int = 0     # candidate sets in ranking_test.jsonl
    candidates: int = 0        # movies per set
    measured: str = "characters / 4"
    notes: list = field(default_factory=list)


# An ML-1M-size build with the default settings (data/prepare_movielens.py on synthetic:6040, seed 42, a
# stand-in for ml-1m.zip with MovieLens-1M's user and rating counts): pairs per split, characters / 4.
ML1M_BUILD = DataShape(train=4370, val=1579, test=1572, prompt=136.0, answer=52.0, ranking_users=531,
                       candidates=8, measured="an ML-1M-size build (characters / 4)")


def data_shape(cfg: dict, tokenizer=None) -> DataShape | None:
    """The sizes of the config's data files (token lengths with `tokenizer` when given); None when they
    are not built yet."""
    from dporec.data import candidates, records
    d = cfg["data"]
    if not all(Path(d[k]).is_file() for k in ("train_file", "val_file", "test_file")):
        return None
    train = records.load_examples(d["train_file"])
    n = {s: len(records.load_examples(d[f"{s}_file"])) for s in ("val", "test")}
    sample = train[:400]
    rows = records.to_sft_rows(sample, d["prompt_format"], tokenizer)
    if tokenizer is not None:
        prompt = [len(x) for x in tokenizer([r["prompt"] for r in rows])["input_ids"]]
        answer = [len(x) + 1 for x in tokenizer([r["completion"] for r in rows], add_special_tokens=False)
                  ["input_ids"]]
        how = "the model's tokenizer"
    else:
        prompt = [len(r["prompt"]) / 4 for r in rows]
        answer = [len(r["completion"]) / 4 + 1 for r in rows]
        how = "characters / 4"
    users = n_cand = 0
    sets_file = Path(d["ranking_file"] or candidates.default_path(d["test_file"]))
    if cfg["eval"]["ranking"] and sets_file.is_file():
        sets = candidates.load(sets_file)
        users, n_cand = len(sets), max(len(s["candidates"]) for s in sets)
    return DataShape(train=len(train), val=n["val"], test=n["test"], prompt=sum(prompt) / len(prompt),
                     answer=sum(answer) / len(answer), ranking_users=users, candidates=n_cand, measured=how)


# ---------------------------------------------------------------------------------------------
# The FLOP count, stage by stage

@dataclass
class Stage:
    name: str
    backend: str
    flops: float
    tokens: float
    what: str
    peak_gib: float | None = None
    decode_steps: float = 0.0  # sequential generation steps: each reads every weight once (bandwidth-bound)


def _steps(cfg: dict, stage: str, examples: int) -> tuple[int, int]:
    """(optimizer steps, examples seen) of a training stage."""
    per_step = cfg["train"]["batch_size"] * cfg["train"]["grad_accum"]
    sc = cfg[stage]
    steps = sc["max_steps"] if sc["max_steps"] > 0 else math.ceil(sc["epochs"] * examples / per_step)
    return steps, steps * per_step


def _evaluations(cfg: dict, steps: int) -> int:
    """Validation passes: the step-0 one, every eval_steps, and a final one when the last is off-step."""
    every = cfg["train"]["eval_steps"]
    return 1 + steps // every + (1 if steps % every else 0)


def stages(cfg: dict, model: ModelShape, data: DataShape, backends: dict[str, str]) -> list[Stage]:
    """The run's stages (SFT, DPO, its reference, the control arm, evaluation, ranking) with their FLOPs."""
    n = model.matmul
    train_factor = 6.0 if cfg["train"]["gradient_checkpointing"] else 4.0
    d, ec = cfg["data"], cfg["eval"]
    n_train = min(data.train, d["max_train_examples"] or data.train)
    n_val = min(data.val, d["max_val_examples"] or data.val)
    n_test = min(data.test, d["max_test_examples"] or data.test)
    p, a = data.prompt, data.answer
    out = []

    steps, seen = _steps(cfg, "sft", n_train)
    sft_tokens = seen * (p + a)
    val = _evaluations(cfg, steps) * n_val * (p + a) * 2 * n
    out.append(Stage("SFT", backends["sft"], train_factor * n * sft_tokens + val, sft_tokens,
                     f"{steps} steps x {seen // max(steps, 1)} examples, {p + a:.0f} tokens each"))

    shared = cfg["dpo"]["prefix_sharing"] and backends["dpo"] == "hf"
    pair = (p if shared else 2 * p) + 2 * a
    steps, seen = _steps(cfg, "dpo", n_train)
    dpo_tokens = seen * pair
    precomputed = cfg["dpo"]["precompute_ref_log_probs"]
    val = _evaluations(cfg, steps) * n_val * pair * 2 * n * (1 if precomputed else 2)
    out.append(Stage("DPO", backends["dpo"], train_factor * n * dpo_tokens + val, dpo_tokens,
                     f"{steps} steps x {seen // max(steps, 1)} pairs, {pair:.0f} tokens each "
                     f"({'prompt once' if shared else 'prompt twice'})"))
    ref_tokens = (n_train + n_val) * pair if precomputed else seen * pair
    out.append(Stage("DPO reference", backends["dpo"], 2 * n * ref_tokens, ref_tokens,
                     "one pass before training" if precomputed else "a forward in every step"))
    if cfg["experiment"]["control_arm"]:
        control_tokens = seen * (p + a)  # as many optimizer steps as DPO, SFT-sized examples
        out.append(Stage("SFT control", backends["sft"], train_factor * n * control_tokens, control_tokens,
                         f"{steps} steps, as many as DPO"))
    on_policy = cfg["experiment"]["on_policy_arm"]
    if on_policy:
        oc = cfg["onpolicy"]
        prompts = 2 * min(n_train, oc["max_prompts"] or n_train)  # every training example in both orders
        k = oc["samples_per_prompt"]
        # the prompt runs once per sampled sequence; an answer is about as long as the builder's
        gen_tokens = prompts * k * (p + a)
        calls = math.ceil(prompts / oc["batch_size"])
        out.append(Stage("on-policy sampling", backends["eval"], 2 * n * gen_tokens, gen_tokens,
                         f"{prompts} prompts x {k} samples, up to {oc['max_new_tokens']} new tokens",
                         decode_steps=calls * oc["max_new_tokens"]))
        # DPO on at most one pair per prompt, for the off-policy DPO's steps: the same compute per step
        out.append(Stage("on-policy DPO", backends["dpo"], train_factor * n * dpo_tokens, dpo_tokens,
                         f"{steps} steps, as many as DPO, on at most {prompts} sampled pairs"))
        ref = (prompts + n_val) * pair if precomputed else seen * pair
        out.append(Stage("on-policy reference", backends["dpo"], 2 * n * ref, ref,
                         "one pass over the sampled pairs" if precomputed else "a forward in every step"))

    n_models = (len(ec["models"]) + len(ec["adapters"]) + (1 if cfg["experiment"]["control_arm"] else 0)
                + (1 if on_policy else 0))
    if ec["full_answer"]:  # both full answers per order; hf runs the prompt once for the two
        per_order = (p + 2 * a) if backends["eval"] == "hf" else 2 * (p + a)
    else:  # the decision: one context, prompt + "The better recommendation is Option"
        per_order = p + 7
    eval_tokens = n_test * 2 * per_order * n_models
    out.append(Stage("evaluation", backends["eval"], 2 * n * eval_tokens, eval_tokens,
                     f"{n_test} pairs x 2 orders x {n_models} models"))
    if ec["ranking"] and data.ranking_users:
        users = min(data.ranking_users, ec["ranking_max_users"] or data.ranking_users)
        questions = users * data.candidates * (data.candidates - 1)
        option = (p - 40) / 7  # the prompt is ~40 tokens of instruction and template plus 7 movies
        # hf shares each user's instruction and history across the questions; Unsloth runs each context
        context = 2 * option + 8 if backends["eval"] == "hf" else p + 8
        rank_tokens = questions * context * n_models
        out.append(Stage("ranking", backends["eval"], 2 * n * rank_tokens, rank_tokens,
                         f"{users} users x {questions // max(users, 1)} questions x {n_models} models"))
    return out


# ---------------------------------------------------------------------------------------------
# Peak memory

def peak_memory_gib(cfg: dict, model: ModelShape, data: DataShape, stage: str, shared: bool) -> float:
    """A training stage's predicted peak GPU memory: 4-bit weights, LoRA with optimizer states,
    checkpointed activations, one layer recomputed, the fp32 logits, and the CUDA context."""
    four_bit = cfg["model"]["load_in_4bit"]
    head = model.vocab * model.hidden
    quantized = model.params - model.embedding - head
    weights = quantized * (0.55 if four_bit else 2) + (model.embedding + head) * 2
    lora = cfg["lora"]["r"] * 2 * (model.hidden * 4 + model.intermediate * 3) * model.layers
    optimizer = 2 if "8bit" in cfg["train"]["optim"] else 8
    lora_bytes = lora * (4 + 4 + optimizer)
    rows = cfg["train"]["batch_size"] * (1 if stage == "sft" or shared else 2)
    length = data.prompt + data.answer * (2 if stage == "dpo" and shared else 1)
    act_layers = model.layers if cfg["train"]["gradient_checkpointing"] else model.layers * 8
    activations = rows * length * model.hidden * 2 * act_layers
    one_layer = rows * length * (model.hidden * 10 + model.intermediate * 4) * 2
    # logits: every position for SFT; the answer columns only on the hf DPO path; fp32, with its grad
    columns = length if stage == "sft" else 2 * data.answer + 2
    logit_rows = cfg["train"]["batch_size"] * (1 if stage == "sft" else 2)
    logits = logit_rows * columns * model.vocab * 4 * 2
    return (weights + lora_bytes + activations + one_layer + logits) / GIB + 1.0  # + CUDA context


# ---------------------------------------------------------------------------------------------
# Time

def measured_utilisation(gpu_label: str) -> dict | None:
    """{"train": u, "eval": u, "source": ...} that benchmarks/ measured on this GPU, when present."""
    if not MEASURED_FILE.is_file():
        return None
    try:
        measured = json.loads(MEASURED_FILE.read_text())
    except (OSError, ValueError):
        return None
    return measured.get(gpu_label)


@dataclass
class Prediction:
    gpu: str
    utilisation: dict            # {"train": u, "eval": u}
    source: str                  # "assumed" or what measured it
    rows: list                   # (Stage, hours)
    hours: float
    peak_gib: dict               # {"SFT": GiB, "DPO": GiB}
    memory_gib: float


def predict(cfg: dict, model: ModelShape, data: DataShape, backends: dict[str, str],
            gpu_name: str) -> Prediction:
    spec = gpu_spec(gpu_name)
    if spec is None:
        raise ValueError(f"no peak figures for GPU {gpu_name!r}")
    measured = measured_utilisation(spec["label"])
    util = {"train": ASSUMED_UTILISATION, "eval": ASSUMED_UTILISATION}
    source = f"assumed {ASSUMED_UTILISATION:.0%} of the dense bf16 peak"
    if measured:
        util = {"train": measured["train"], "eval": measured.get("eval", measured["train"])}
        source = f"measured: {measured.get('source', 'benchmarks/bench_train.py')}"
    rate = {k: spec["bf16_tflops"] * 1e12 * u for k, u in util.items()}
    # one generation step reads every weight once: 4-bit matrices (~0.55 byte per weight with their
    # scales) and 16-bit embeddings, at the same share of the memory bandwidth
    head = model.vocab * model.hidden
    weight_bytes = (model.params - model.embedding - head) * 0.55 + (model.embedding + head) * 2
    rows = []
    for s in stages(cfg, model, data, backends):
        kind = "eval" if s.name in ("evaluation", "ranking", "on-policy sampling") else "train"
        decode = s.decode_steps * weight_bytes / (spec["bandwidth_gbs"] * 1e9 * util["eval"])
        rows.append((s, (s.flops / rate[kind] + decode) / 3600))
    shared = cfg["dpo"]["prefix_sharing"] and backends["dpo"] == "hf"
    peaks = {"SFT": peak_memory_gib(cfg, model, data, "sft", False),
             "DPO": peak_memory_gib(cfg, model, data, "dpo", shared)}
    return Prediction(gpu=spec["label"], utilisation=util, source=source, rows=rows,
                      hours=sum(h for _, h in rows), peak_gib=peaks, memory_gib=spec["memory_gib"])


def format_prediction(pred: Prediction, data: DataShape) -> list[str]:
    """The table verify_setup.py prints (and docs/speed.md quotes)."""
    lines = [f"predicted on one {pred.gpu} ({pred.source}; a FLOP count, not a measurement):",
             f"  {'stage':<19}{'backend':<9}{'tokens':>9}{'PFLOP':>8}{'hours':>7}  what"]
    for s, h in pred.rows:
        lines.append(f"  {s.name:<19}{s.backend:<9}{s.tokens / 1e6:>8.2f}M{s.flops / 1e15:>8.0f}{h:>7.2f}"
                     f"  {s.what}")
    lines.append(f"  {'total':<19}{'':<9}{'':>9}{sum(s.flops for s, _ in pred.rows) / 1e15:>8.0f}"
                 f"{pred.hours:>7.2f}")
    peaks = ", ".join(f"{k} {v:.1f} GiB" for k, v in pred.peak_gib.items())
    lines.append(f"  peak memory (predicted): {peaks} of {pred.memory_gib} GiB; token sizes from "
                 f"{data.measured}")
    return lines
