"""What a configured run will cost before it runs: every stage of the run (the main ones and each switched-on
arm's, from dporec.arms) with its FLOPs (dporec.costmodel, the convention the benchmark measures in), turned
into wall time on a GPU at an assumed utilisation or one a benchmark measured (a file passed in), and each
training stage's peak memory. verify_setup.py prints it; README and docs/speed.md quote it.

Token counts are the data's own (measured with the model's tokenizer when it is on disk, else characters /
4); a stage's tokens follow what the code runs: one prompt per pair with dpo.prefix_sharing on hf (else
two), the reference once with dpo.precompute_ref_log_probs (else in every step), both full answers per
option order with eval.full_answer, one context per question in the ranking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dporec import UserError, arms
from dporec.costmodel import (
    CONVENTION,
    ModelShape,
    decode_seconds,
    example_flops,
    forward_token_flops,
    gpu_spec,
    pair_tokens,
    peak_memory_gib,
)
from dporec.files import read_json

# Share of a GPU's dense 16-bit peak each backend sustains, ASSUMED until benchmarks/bench_train.py measures
# it on that GPU (a results file passed to verify_setup.py --utilisation replaces these). hf: QLoRA through
# bitsandbytes' dequantise-then-matmul and PyTorch SDPA. unsloth: its fused LoRA/dequantisation kernels and
# Triton RoPE/norms; it advertises ~2x over HF for Llama-3-8B QLoRA (long rows, large GPUs), and this
# bundle's rows are short (~190-240 tokens), where fused kernels win less: assumed 1.4x in training, less
# in the scoring forwards.
ASSUMED_UTILISATION = {"hf": {"train": 0.40, "eval": 0.40}, "unsloth": {"train": 0.56, "eval": 0.45}}
# A GPU whose spec peak a QLoRA step reaches a smaller share of, until measured: the T4 is a 70 W card that
# throttles below its boost clock, with 320 GB/s to feed the 4-bit dequantisation.
ASSUMED_DERATE = {"T4 (fp16)": 0.6}


@dataclass
class DataShape:
    train: int                 # training pairs in the file
    val: int
    test: int
    prompt: float              # mean tokens of a prompt (template and special tokens included)
    answer: float              # mean tokens of a chosen answer (the rejected one is as long: mirrored)
    ranking_users: int = 0     # candidate sets in ranking_test.jsonl
    candidates: int = 0        # movies per set
    personal_test: int = 0     # the personal task's test pairs (data.built.PERSONAL_FILE), when built
    measured: str = "characters / 4"
    notes: list = field(default_factory=list)


# An ML-1M-size build with the default settings (data/prepare_movielens.py on synthetic:6040, seed 42, a
# stand-in for ml-1m.zip with MovieLens-1M's user and rating counts): pairs per split, characters / 4.
ML1M_BUILD = DataShape(train=4370, val=1579, test=1572, prompt=136.0, answer=52.0, ranking_users=531,
                       candidates=8, personal_test=763, measured="an ML-1M-size build (characters / 4)")
ML1M_BUILD_USERS = 6040


def expected_shape(cfg: dict) -> DataShape | None:
    """The data a config's data.source would build, before it is built: the ML-1M-size build scaled to the
    users the build draws from (the release's users, capped by data.max_users): pairs, candidate sets and
    the personal task's pairs grow with the users, prompt and answer lengths do not. None when the source's
    name does not tell its users."""
    from dporec.data import sources
    users = sources.expected_users(cfg["data"]["source"], cfg["data"]["max_users"])
    if users is None:
        return None
    f = users / ML1M_BUILD_USERS
    b = ML1M_BUILD
    return DataShape(train=round(b.train * f), val=round(b.val * f), test=round(b.test * f), prompt=b.prompt,
                     answer=b.answer, ranking_users=round(b.ranking_users * f), candidates=b.candidates,
                     personal_test=round(b.personal_test * f),
                     measured=f"an ML-1M-size build scaled to the {users:,} users this source builds from "
                              f"(characters / 4)")


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
    from dporec.data import built
    personal = built.personal_test_file(d["test_file"]) if cfg["eval"]["personal_task"] else None
    return DataShape(train=len(train), val=n["val"], test=n["test"], prompt=sum(prompt) / len(prompt),
                     answer=sum(answer) / len(answer), ranking_users=users, candidates=n_cand,
                     personal_test=len(records.load_examples(personal)) if personal else 0, measured=how)


# ---------------------------------------------------------------------------------------------
# The stages and their FLOPs

@dataclass
class Stage:
    name: str
    kind: str                  # "train" (compute at the training utilisation) or "eval"
    backend: str
    flops: float
    tokens: float
    what: str
    decode_steps: float = 0.0  # sequential generation steps: each reads every weight once (bandwidth-bound)


def shares_prompt(cfg: dict, dpo_backend: str | None) -> bool:
    """Whether the DPO stage runs each pair's prompt once: dpo.prefix_sharing, on hf only (Unsloth's
    patched Llama drops the mask it needs; the DPO trainer then runs TRL's layout)."""
    return bool(cfg["dpo"]["prefix_sharing"]) and dpo_backend == "hf"


def _steps(cfg: dict, section: str, examples: int) -> tuple[int, int]:
    """(optimizer steps, examples seen) of a training stage's effective config."""
    per_step = cfg["train"]["batch_size"] * cfg["train"]["grad_accum"]
    sc = cfg[section]
    steps = sc["max_steps"] if sc["max_steps"] > 0 else math.ceil(sc["epochs"] * examples / per_step)
    return steps, steps * per_step


def _evaluations(cfg: dict, steps: int) -> int:
    """Validation passes: the step-0 one, every eval_steps, and a final one when the last is off-step."""
    every = cfg["train"]["eval_steps"]
    return 1 + steps // every + (1 if steps % every else 0)


def _sampled_pairs(cfg: dict, n_train: int) -> int:
    """At most one pair per sampled prompt: every training example in both orders."""
    return 2 * min(n_train, cfg["onpolicy"]["max_prompts"] or n_train)


def _training(spec: arms.StageSpec, cfg: dict, model: ModelShape, data: DataShape, backend: str,
              n_train: int, n_val: int) -> list[Stage]:
    """A training stage's rows: its steps (with validation) and, for DPO, its reference."""
    from dporec.config import updated
    kind, label = spec.stage.kind, spec.stage.label
    scfg = updated(cfg, spec.config_settings(cfg["output_dir"]))
    examples = _sampled_pairs(cfg, n_train) if spec.train_from else n_train
    steps, seen = _steps(scfg, kind, examples)
    p, a, gc = data.prompt, data.answer, scfg["train"]["gradient_checkpointing"]
    shared = kind == "dpo" and shares_prompt(scfg, backend)
    precomputed = scfg["dpo"]["precompute_ref_log_probs"]
    per_example = example_flops(kind, model, p, a, gc, shared)  # the reference: its own row below
    tokens = p + a if kind == "sft" else pair_tokens(p, a, shared)
    val = _evaluations(scfg, steps) * n_val * tokens * forward_token_flops(model)
    if kind == "dpo" and not precomputed:
        val *= 2  # the reference scores the validation pairs too
    unit = "examples" if kind == "sft" else "pairs"
    what = f"{steps} steps x {seen // max(steps, 1)} {unit}, {tokens:.0f} tokens each"
    if kind == "dpo":
        what += f" ({'prompt once' if shared else 'prompt twice'})"
    if spec.train_from:
        what += f", on at most {examples} pairs from {spec.train_from.name}/"
    rows = [Stage(label, "train", backend, seen * per_example + val, seen * tokens, what)]
    if kind == "dpo":
        ref = (examples + n_val) * tokens if precomputed else seen * tokens
        rows.append(Stage(f"{label} reference", "train", backend, forward_token_flops(model) * ref, ref,
                          "one pass before training" if precomputed else "a forward in every step"))
    return rows


def _generation(label: str, model: ModelShape, data: DataShape, backend: str, prompts: int, k: int,
                batch_size: int, max_new_tokens: int, what: str) -> Stage:
    """Generating k answers for each of `prompts` prompts, `batch_size` prompts a call: the FLOPs of the
    prompt and an answer as long as the builder's per sequence, plus the sequential decoding steps of
    every call (each up to max_new_tokens, each reading every weight once)."""
    tokens = prompts * k * (data.prompt + data.answer)
    return Stage(label, "eval", backend, forward_token_flops(model) * tokens, tokens,
                 f"{what}, up to {max_new_tokens} new tokens",
                 decode_steps=math.ceil(prompts / batch_size) * max_new_tokens)


def _sampling(cfg: dict, model: ModelShape, data: DataShape, backend: str, n_train: int,
              label: str) -> Stage:
    oc = cfg["onpolicy"]
    prompts, k = _sampled_pairs(cfg, n_train), oc["samples_per_prompt"]
    return _generation(label, model, data, backend, prompts, k, oc["batch_size"], oc["max_new_tokens"],
                       f"{prompts} prompts x {k} samples")


def _evaluation(cfg: dict, model: ModelShape, data: DataShape, backend: str, n_models: int) -> list[Stage]:
    ec = cfg["eval"]
    p, a = data.prompt, data.answer
    n_test = min(data.test, cfg["data"]["max_test_examples"] or data.test)
    if ec["full_answer"]:  # both full answers per order; hf runs the prompt once for the two
        per_order = (p + 2 * a) if backend == "hf" else 2 * (p + a)
    else:  # the decision: one context, prompt + "The better recommendation is Option"
        per_order = p + 7
    tokens = n_test * 2 * per_order * n_models
    out = [Stage("evaluation", "eval", backend, forward_token_flops(model) * tokens, tokens,
                 f"{n_test} pairs x 2 orders x {n_models} models")]
    if ec["personal_task"] and data.personal_test:  # the second verdict's pairs: the decision only
        n_personal = min(data.personal_test, cfg["data"]["max_test_examples"] or data.personal_test)
        personal_tokens = n_personal * 2 * (p + 7) * n_models
        out.append(Stage("personal task", "eval", backend, forward_token_flops(model) * personal_tokens,
                         personal_tokens, f"{n_personal} pairs x 2 orders x {n_models} models"))
    if ec["generate"]:  # the reasoning's greedy answers: every model, both orders, the judged subset
        n_judged = min(n_test, ec["reasoning_pairs"] or n_test)
        out.append(_generation("reasoning (generation)", model, data, backend, n_judged * 2 * n_models, 1,
                               ec["batch_size"], ec["max_new_tokens"],
                               f"{n_judged} pairs x 2 orders x {n_models} models"))
    if ec["ranking"] and data.ranking_users:
        users = min(data.ranking_users, ec["ranking_max_users"] or data.ranking_users)
        questions = users * data.candidates * (data.candidates - 1)
        option = (p - 40) / 7  # the prompt is ~40 tokens of instruction and template plus 7 movies
        # hf shares each user's instruction and history across the questions; Unsloth runs each context
        context = 2 * option + 8 if backend == "hf" else p + 8
        rank_tokens = questions * context * n_models
        out.append(Stage("ranking", "eval", backend, forward_token_flops(model) * rank_tokens, rank_tokens,
                         f"{users} users x {questions // max(users, 1)} questions x {n_models} models"))
    return out


def stages(cfg: dict, model: ModelShape, data: DataShape, backends: dict[str, str]) -> list[Stage]:
    """Every stage the run will run (arms.stages() order, the switched-on arms only) with its FLOPs.
    backends: {stage kind: backend} (modeling.runtime.plan)."""
    from dporec.runs.adapters import eval_adapters, run_stages
    n_train = min(data.train, cfg["data"]["max_train_examples"] or data.train)
    n_val = min(data.val, cfg["data"]["max_val_examples"] or data.val)
    dpo_steps = _steps(cfg, "dpo", n_train)[0]
    done = arms.Predicted(output_dir=cfg["output_dir"], sft_adapter="<the run's SFT adapter>",
                          dpo_steps=dpo_steps, dpo_learning_rate=cfg["dpo"]["learning_rate"])
    out = []
    for stage in run_stages(cfg):
        spec = arms.spec_for(stage, cfg, done)
        backend = backends[stage.kind]
        if stage.kind == "sampling":
            out.append(_sampling(cfg, model, data, backend, n_train, stage.label))
        else:
            out += _training(spec, cfg, model, data, backend, n_train, n_val)
    return out + _evaluation(cfg, model, data, backends["eval"], len(eval_adapters(cfg)))


def peak_memory(cfg: dict, model: ModelShape, data: DataShape, backends: dict[str, str],
                gpu: bool = True) -> dict[str, float]:
    """{"SFT": GiB, "DPO": GiB}: the training stages' predicted peak memory (the arms train the same
    shapes). On a CPU (gpu False) the compute dtype is fp32 and there is no CUDA context."""
    t, lc = cfg["train"], cfg["lora"]
    common = dict(batch_size=t["batch_size"], prompt=data.prompt, answer=data.answer, r=lc["r"],
                  targets=lc["target_modules"], eight_bit_optim="8bit" in t["optim"],
                  checkpointing=t["gradient_checkpointing"], four_bit=cfg["model"]["load_in_4bit"],
                  wide=2 if gpu else 4, gpu=gpu)
    shared = shares_prompt(cfg, backends["dpo"])
    return {"SFT": peak_memory_gib(model, "sft", **common),
            "DPO": peak_memory_gib(model, "dpo", shared_prompt=shared, **common)}


# ---------------------------------------------------------------------------------------------
# Time

def read_utilisation(path: Path) -> dict:
    """{GPU label: {"hf": {"train": u, "eval": u}, "unsloth": {...}, "source": ...}} from a results file
    benchmarks/bench_train.py wrote (benchmarks/results/<gpu>.json); refused when it was measured under
    another FLOP convention than costmodel.CONVENTION (its numbers would then divide other FLOPs than the
    prediction multiplies). A backend the benchmark could not measure keeps its assumed utilisation."""
    content = read_json(path)
    if content.get("convention") != CONVENTION:
        raise UserError(f"{path} was measured under FLOP convention {content.get('convention')!r}, not "
                        f"{CONVENTION!r} (dporec/costmodel.py): measure again with benchmarks/bench_train.py")
    label, util = content.get("gpu"), content.get("utilisation")
    if not label or not isinstance(util, dict):
        raise UserError(f"{path}: not a results file of benchmarks/bench_train.py "
                        "(no 'gpu' and 'utilisation')")
    return {label: {**util, "source": f"measured by {content.get('source', 'benchmarks/bench_train.py')} "
                                      f"({path.name})"}}


def utilisation_for(gpu_label: str, measured: dict | None = None) -> tuple[dict, str]:
    """({backend: {"train": u, "eval": u}}, where it comes from) on one GPU: measured where a results file
    has the backend (its training figure; the evaluation one only where it was measured too), else
    assumed (derated on a GPU that reaches less of its spec)."""
    derate = ASSUMED_DERATE.get(gpu_label, 1.0)
    util = {b: {k: u * derate for k, u in v.items()} for b, v in ASSUMED_UTILISATION.items()}
    found = (measured or {}).get(gpu_label) or {}
    got = [b for b in util if isinstance(found.get(b), dict) and found[b].get("train")]
    for b in got:
        util[b] = {"train": found[b]["train"], "eval": found[b].get("eval") or util[b]["eval"]}
    assumed = ", ".join(f"{b} {v['train']:.0%}" for b, v in util.items() if b not in got)
    parts = ([found["source"] + " for " + " and ".join(got)] if got else []) + (
        [f"assumed {assumed} of the dense 16-bit peak"] if assumed else [])
    return util, "; ".join(parts)


@dataclass
class Prediction:
    gpu: str
    utilisation: dict            # {backend: {"train": u, "eval": u}}
    source: str                  # "assumed ..." and/or what measured it
    rows: list                   # (Stage, hours)
    hours: float
    peak_gib: dict               # {"SFT": GiB, "DPO": GiB}
    memory_gib: float


def predict(cfg: dict, model: ModelShape, data: DataShape, backends: dict[str, str], gpu_name: str,
            measured: dict | None = None) -> Prediction:
    """The run's stages on one `gpu_name`, each at its backend's utilisation (utilisation_for)."""
    spec = gpu_spec(gpu_name)
    if spec is None:
        raise ValueError(f"no peak figures for GPU {gpu_name!r}")
    util, source = utilisation_for(spec["label"], measured)
    rows = []
    for s in stages(cfg, model, data, backends):
        u = util[s.backend]
        decode = (decode_seconds(s.decode_steps, model, spec["bandwidth_gbs"], u["eval"])
                  if s.decode_steps else 0.0)
        rows.append((s, (s.flops / (spec["bf16_tflops"] * 1e12 * u[s.kind]) + decode) / 3600))
    return Prediction(gpu=spec["label"], utilisation=util, source=source, rows=rows,
                      hours=sum(h for _, h in rows), peak_gib=peak_memory(cfg, model, data, backends),
                      memory_gib=spec["memory_gib"])


# The ways the DPO stage can run: (backend, dpo.prefix_sharing). Unsloth's patched Llama drops a custom
# attention mask in training, so it runs the pair's prompt twice (docs/speed.md).
DPO_ROUTES = (("hf", True), ("hf", False), ("unsloth", False))


def dpo_routes(cfg: dict, model: ModelShape, data: DataShape, backends: dict[str, str], gpu_name: str,
               measured: dict | None = None) -> list[dict]:
    """The DPO stage (its steps and its reference) predicted on each route of DPO_ROUTES, side by side:
    [{"backend", "shared_prompt", "hours", "peak_gib", "chosen"}]; chosen marks this config's route."""
    from dporec.config import updated
    configured = (backends.get("dpo"), shares_prompt(cfg, backends.get("dpo")))
    out = []
    for backend, shared in DPO_ROUTES:
        rcfg = updated(cfg, {"dpo.prefix_sharing": shared})
        pred = predict(rcfg, model, data, {**backends, "dpo": backend}, gpu_name, measured)
        out.append({"backend": backend, "shared_prompt": shared,
                    "hours": sum(h for s, h in pred.rows if s.name.startswith(arms.DPO.label)),
                    "peak_gib": pred.peak_gib["DPO"], "chosen": (backend, shared) == configured})
    return out


def format_prediction(pred: Prediction, data: DataShape) -> list[str]:
    """The table verify_setup.py prints (and docs/speed.md quotes)."""
    lines = [f"predicted on one {pred.gpu} ({pred.source}; a FLOP count, not a measurement):",
             f"  {'stage':<28}{'backend':<9}{'tokens':>9}{'PFLOP':>8}{'hours':>7}  what"]
    for s, h in pred.rows:
        lines.append(f"  {s.name:<28}{s.backend:<9}{s.tokens / 1e6:>8.2f}M{s.flops / 1e15:>8.0f}{h:>7.2f}"
                     f"  {s.what}")
    lines.append(f"  {'total':<28}{'':<9}{'':>9}{sum(s.flops for s, _ in pred.rows) / 1e15:>8.0f}"
                 f"{pred.hours:>7.2f}")
    peaks = ", ".join(f"{k} {v:.1f} GiB" for k, v in pred.peak_gib.items())
    lines.append(f"  peak GPU memory (predicted; the memory row's estimate, in 16-bit on the GPU): {peaks} "
                 f"of {pred.memory_gib} GiB; token sizes from {data.measured}")
    return lines


def format_routes(routes: list[dict]) -> list[str]:
    """The DPO stage on each route, the configured one marked (verify_setup.py's time row)."""
    lines = ["  the DPO stage by route (steps + reference, each at its backend's utilisation):"]
    for r in routes:
        what = f"{r['backend']}, prompt {'once (shared)' if r['shared_prompt'] else 'twice'}"
        switch = ("dpo.prefix_sharing=true" if r["shared_prompt"] else
                  "model.backend=hf dpo.prefix_sharing=false" if r["backend"] == "hf" else
                  "dpo.prefix_sharing=false, with Unsloth on the GPU")
        mark = "<- this config" if r["chosen"] else f"({switch})"
        lines.append(f"    {what:<28}{r['hours']:>6.2f} h  {r['peak_gib']:>5.1f} GiB  {mark}")
    return lines
