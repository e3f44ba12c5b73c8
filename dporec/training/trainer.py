"""Thin glue around TRL's trainers, shared by the SFT and DPO stages: the stage's data, the arguments
both trainers share, the stage folder, training with OOM advice, and metrics.json from the Trainer's
own log history. TRL does the actual work (losses, reference handling, logging of rewards/*).

Nothing here imports transformers/trl/peft at module import time (Unsloth must patch them first).
"""
from __future__ import annotations

import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from dporec import UserError, compat, runs
from dporec.data import records, splits
from dporec.modeling.backends import compute_dtype
from dporec.modeling.hardware import cuda_capability, return_freed_memory
from dporec.report import plots
from dporec.report.files import jsonable, write_json
from dporec.report.markdown import model_card
from dporec.training import health
from dporec.training.distributed import ShardLog, processes, shard_report

OOM_ADVICE = ("out of memory. Lower train.batch_size (raise train.grad_accum to keep the effective batch "
              "size), shorten model.max_seq_length, set train.gradient_checkpointing=true, or use a smaller "
              "lora.r. Then rerun with --resume to continue from the last checkpoint.")


# ---------------------------------------------------------------------------------------------
# Data

def load_stage_data(cfg: dict) -> tuple[list, list]:
    """Train and validation examples, validated (FILE:LINE errors) before any model is loaded.

    A training set where one option letter dominates is trained on, but loudly: the model can learn
    the position instead of the preference (the precursor's always-A data).
    """
    dc = cfg["data"]
    train = records.load_examples(dc["train_file"], dc["max_train_examples"])
    val = records.load_examples(dc["val_file"], dc["max_val_examples"])
    for exs, name in ((train, dc["train_file"]), (val, dc["val_file"])):
        warning = splits.balance_warning(exs, name)
        if warning:
            print("\n" + "!" * 100 + f"\n{warning}\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
    b = splits.balance(train)
    print(f"[data] train {b['n']} examples (A {b['A']} / B {b['B']}) from {dc['train_file']}; "
          f"val {len(val)} from {dc['val_file']}")
    return train, val


SHARED_DATASETS = ".datasets"  # the stage folder's subfolder for to_dataset's copies under several processes


def to_dataset(rows: list[dict], shared_folder: Path | None = None):
    """A datasets.Dataset of the rows; under several processes, one saved in `shared_folder`.

    An in-memory dataset keeps its cache files (TRL's tokenized rows, the precomputed reference
    log-probabilities) in a temporary folder of each process's own, so the file the main process
    writes is missing in the others. A dataset on disk keeps them next to itself, seen by all.
    """
    from datasets import Dataset, load_from_disk
    state = processes()
    if state.num_processes == 1 or shared_folder is None:
        return Dataset.from_list(rows)
    if state.is_main_process:
        shutil.rmtree(shared_folder, ignore_errors=True)  # an interrupted run's copy and its caches
        Dataset.from_list(rows).save_to_disk(str(shared_folder))
    state.wait_for_everyone()
    return load_from_disk(str(shared_folder))


# ---------------------------------------------------------------------------------------------
# The stage folder

def prepare_stage_dir(cfg: dict, path: Path) -> tuple[Path, str | None]:
    """The stage folder and the checkpoint to resume from; the main process checks and cleans first.

    Under several processes the others wait, then see the folder as the main process left it. A
    refusal on the main process ends the launch (torchrun stops the whole group).
    """
    with processes().main_process_first():
        out = runs.prepare_run_dir(path, cfg)
        return out, runs.resume_checkpoint(out, cfg)


# ---------------------------------------------------------------------------------------------
# Trainer arguments shared by SFT and DPO

def precision_flags(cfg: dict, capability=...) -> dict:
    """Trainer precision flags from the model's compute dtype (backends.compute_dtype), so the trainer and
    the loaded model always agree: bf16 only on GPUs with native bf16 (compute capability >= 8.0),
    fp16 on older GPUs, neither for fp32 (and use_cpu without a GPU)."""
    capability = cuda_capability() if capability is ... else capability
    if capability is None:
        return {"use_cpu": True, "bf16": False, "fp16": False}
    dtype = compute_dtype(cfg, capability)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def resolve_optim(name: str) -> str:
    # bitsandbytes' 8-bit optimizers have no CPU kernels.
    if "8bit" in name and not torch.cuda.is_available():
        print(f"[optim] train.optim={name} needs a CUDA GPU; using adamw_torch on CPU")
        return "adamw_torch"
    return name


def trainer_args(cfg: dict, stage: str, out_dir: Path, backend: str) -> dict:
    """Keyword arguments common to SFTConfig and DPOConfig, from the config's train/<stage> sections."""
    tc, sc = cfg["train"], cfg[stage]
    return dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=tc["batch_size"],
        per_device_eval_batch_size=tc["batch_size"],
        gradient_accumulation_steps=tc["grad_accum"],
        learning_rate=sc["learning_rate"],
        num_train_epochs=sc["epochs"],
        max_steps=sc["max_steps"],
        lr_scheduler_type=tc["lr_scheduler"],
        warmup_steps=tc["warmup_ratio"],  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=tc["weight_decay"],
        max_grad_norm=tc["max_grad_norm"],
        optim=resolve_optim(tc["optim"]),
        # Unsloth's get_peft_model already installed its own checkpointing; a second wrap breaks it.
        gradient_checkpointing=tc["gradient_checkpointing"] and backend != "unsloth",
        max_length=cfg["model"]["max_seq_length"],
        logging_steps=tc["logging_steps"],
        # one non-finite micro-batch loss must not poison the logged loss (Unsloth's config turns it off)
        logging_nan_inf_filter=True,
        eval_strategy="steps",
        eval_steps=tc["eval_steps"],
        # The step-0 evaluation is the baseline every curve is read against (and, for DPO, shows the
        # reference equals the policy at init: rewards ~0). Not repeated when resuming.
        eval_on_start=not cfg.get("resume"),
        save_strategy="steps",
        save_steps=tc["save_steps"],
        save_total_limit=tc["save_total_limit"],
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        report_to=tc["report_to"],
        dataloader_num_workers=0,
        # Under Unsloth, TRL's own num_tokens is never logged (Unsloth replaces SFTTrainer.compute_loss);
        # transformers' count of non-padding input tokens is logged under both backends.
        include_num_input_tokens_seen="non_padding",
        **precision_flags(cfg),
    )


def sft_config(cfg: dict, out_dir: Path, backend: str):
    from trl import SFTConfig
    # prompt/completion rows: TRL masks the prompt and appends EOS to the completion.
    return SFTConfig(**trainer_args(cfg, "sft", out_dir, backend), completion_only_loss=True)


def dpo_config(cfg: dict, out_dir: Path, backend: str):
    from trl import DPOConfig
    dc = cfg["dpo"]
    return DPOConfig(**trainer_args(cfg, "dpo", out_dir, backend), beta=dc["beta"],
                     loss_type=list(dc["loss_type"]), loss_weights=dc["loss_weights"],
                     precompute_ref_log_probs=dc["precompute_ref_log_probs"])


# ---------------------------------------------------------------------------------------------
# Training with OOM advice, metrics

def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def train(trainer, resume_from: str | None = None, callbacks=()) -> float:
    """trainer.train() (continuing from a checkpoint when given) with extra callbacks; returns wall seconds.

    Out-of-memory becomes a UserError naming the knobs to turn; a final evaluation is added when
    the last step was not an eval step, so every run ends with validation metrics.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:  # what building the trainer freed (datasets, the reference precompute), then after every step
        return_freed_memory()
        trainer.add_callback(_freed_memory_callback())
    for cb in callbacks:
        trainer.add_callback(cb)
    # Only several processes have shards to compare; one process skips the per-example hashing.
    if processes().num_processes > 1 and not isinstance(trainer.data_collator, ShardLog):
        trainer.data_collator = ShardLog(trainer.data_collator)
    if resume_from:
        compat.load_trainable_adapter(trainer.model, resume_from)
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        if not evals or evals[-1].get("step") != trainer.state.global_step:
            trainer.evaluate()
    except Exception as e:  # noqa: BLE001 - only OOM is translated; everything else propagates
        if _is_oom(e):
            raise UserError(OOM_ADVICE) from None
        raise
    return time.perf_counter() - start


def _freed_memory_callback():
    """A TrainerCallback returning freed memory to the OS after each micro-batch and optimizer step (CPU)."""
    from transformers import TrainerCallback

    class ReturnFreedMemory(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            return_freed_memory()

        def on_step_end(self, args, state, control, **kwargs):
            return_freed_memory()

    return ReturnFreedMemory()


def peak_memory() -> dict:
    if torch.cuda.is_available():
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
                "peak_memory_kind": "cuda max_memory_allocated"}
    # ru_maxrss is in KiB on Linux
    return {"peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_memory_kind": "process peak RSS"}


def trained_tokens(log: dict) -> tuple[int | None, str | None]:
    """(tokens trained on so far, which counter) from one training log entry (benchmarks' step timer).

    transformers' num_input_tokens_seen (non-padding tokens, include_num_input_tokens_seen="non_padding")
    is logged under both backends and checkpointed; TRL's num_tokens (never logged under Unsloth, and
    restarted from 0 on resume) only where it is missing.
    """
    for key in ("num_input_tokens_seen", "num_tokens"):
        if log.get(key) is not None:
            return log[key], key
    return None, None


def _checkpoint_state(checkpoint: str | None) -> dict:
    """The trainer state a run resumed from (global_step, num_input_tokens_seen, log_history)."""
    if not checkpoint:
        return {"global_step": 0, "num_input_tokens_seen": 0, "log_history": []}
    return runs.read_json(Path(checkpoint) / "trainer_state.json")


def whole_run_train_loss(hist: list[dict], summary_loss: float | None, steps: int,
                         start: dict) -> float | None:
    """The mean training loss over all the run's steps, resumed or not.

    transformers' train_loss sums only this session's step losses (those after the checkpoint) and
    divides by all steps; the steps before come back from the checkpoint's logged losses, each log
    covering the steps since the previous one. Uninterrupted (start step 0) this is train_loss itself.
    """
    if summary_loss is None or not steps:
        return summary_loss
    before, last = 0.0, 0
    for h in hist:
        if "loss" in h and "step" in h and h["step"] <= start["global_step"]:
            before += h["loss"] * (h["step"] - last)
            last = h["step"]
    return (before + summary_loss * steps) / steps


def collect_metrics(trainer, wall_time_s: float, **extra) -> dict:
    """metrics.json content from trainer.state (log history and token count restored from checkpoints
    on resume), so a resumed run reports the figures of the uninterrupted one."""
    state = trainer.state
    hist = state.log_history
    train_hist, eval_hist = health.split_history(hist)
    # the end-of-training summary; with include_num_input_tokens_seen every step log has a train_runtime too
    summary = next((h for h in reversed(hist) if "train_runtime" in h and "train_loss" in h), {})
    runtime = summary.get("train_runtime")
    last_train = train_hist[-1] if train_hist else {}
    start = _checkpoint_state(extra.get("resumed_from"))
    tokens, token_source = getattr(state, "num_input_tokens_seen", None), "num_input_tokens_seen"
    if not tokens:
        tokens, token_source = trained_tokens(last_train)
    session_tokens = (tokens or 0) - start.get("num_input_tokens_seen", 0)  # tokens/s: this session's
    out = {
        "steps": state.global_step,
        "epochs": state.epoch,
        **extra,
        "final_train_loss": whole_run_train_loss(hist, summary.get("train_loss"), state.global_step, start),
        "final_eval": eval_hist[-1] if eval_hist else None,
        "initial_eval": eval_hist[0] if eval_hist and eval_hist[0].get("step") == 0 else None,
        "final_train_metrics": {k: v for k, v in last_train.items()
                                if k.startswith(("rewards/", "logps/", "loss", "mean_token_accuracy"))},
        "tokens": tokens,
        "tokens_source": token_source if tokens else None,
        "tokens_per_second": (session_tokens / runtime) if session_tokens > 0 and runtime else None,
        "train_runtime_s": runtime,
        "wall_time_s": wall_time_s,
        **peak_memory(),
        "train_history": train_hist,
        "eval_history": eval_hist,
    }
    return jsonable(out)  # JSON has no NaN/inf: they are written as null


def finish_run(trainer, tokenizer, out_dir: Path, cfg: dict, wall_time_s: float, **facts) -> dict:
    """Save the adapter and tokenizer, then run_info.json, then (last: the 'finished' marker) metrics.json.

    Every process takes part (saving and the shard report gather across processes); only the main
    process writes files and prints.
    """
    trainer.save_model(str(out_dir))  # the Trainer writes from the main process only
    collator = trainer.data_collator
    shards = shard_report(trainer, collator) if isinstance(collator, ShardLog) else None
    if not processes().is_main_process:
        return {}
    shutil.rmtree(Path(out_dir) / SHARED_DATASETS, ignore_errors=True)  # to_dataset's copies, if any
    tokenizer.save_pretrained(str(out_dir))
    facts = {**facts, "world_size": processes().num_processes}
    runs.write_run_info(out_dir, cfg, **facts)
    metrics = collect_metrics(trainer, wall_time_s, **facts)
    metrics["data_shards"] = shards
    history = health.split_history(trainer.state.log_history)
    metrics["health"] = jsonable(health.check(facts["stage"], *history, cfg["health"],
                                             health.warmup_of(trainer.args, trainer.state)))
    plots.plot_training(out_dir, facts["stage"], *history)
    # replaces PEFT's card ("fine-tuned version of [None]"): the base, the data, the stage, the numbers
    (Path(out_dir) / "README.md").write_text(model_card(facts["stage"], cfg, metrics), encoding="utf-8")
    write_metrics(out_dir, metrics)
    print(summary_line(facts["stage"], metrics))
    health.print_warnings(facts["stage"], metrics["health"])
    return metrics


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    """metrics.json is the 'finished' marker prepare_run_dir checks: write it last."""
    return write_json(Path(out_dir) / "metrics.json", metrics)


def summary_line(stage: str, m: dict) -> str:
    ev = m.get("final_eval") or {}
    parts = [f"[{stage}] done: {m['steps']} steps in {m['wall_time_s']:.1f}s",
             f"train loss {m['final_train_loss']:.4f}" if m.get("final_train_loss") is not None else "",
             f"eval loss {ev['eval_loss']:.4f}" if ev.get("eval_loss") is not None else ""]
    if "eval_rewards/accuracies" in ev:
        parts.append(f"eval reward acc {ev['eval_rewards/accuracies']:.3f}, "
                     f"margin {ev['eval_rewards/margins']:.4f}")
    if m.get("tokens_per_second"):
        parts.append(f"{m['tokens_per_second']:.0f} tok/s")
    parts.append(f"peak mem {m['peak_memory_mb']:.0f} MB")
    return ", ".join(p for p in parts if p)
