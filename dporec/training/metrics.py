"""metrics.json of a training stage, from the Trainer's own state and log history: steps, losses, the
validation curve, tokens and tokens/s, peak memory and wall time, so that a resumed run reports the figures
of the uninterrupted one. metrics.json is written last: its presence marks the stage finished.
"""
from __future__ import annotations

import resource
from pathlib import Path

import torch

from dporec import arms
from dporec.files import jsonable, read_json, write_json
from dporec.training import health


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


def checkpoint_state(checkpoint: str | None) -> dict:
    """The trainer state a run resumes from (global_step, num_input_tokens_seen, log_history). Read it
    before training: save_total_limit may delete that checkpoint before the run ends."""
    if not checkpoint:
        return {"global_step": 0, "num_input_tokens_seen": 0, "log_history": []}
    return read_json(Path(checkpoint) / "trainer_state.json")


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


def collect_metrics(trainer, wall_time_s: float, start: dict, **extra) -> dict:
    """metrics.json content from trainer.state (log history and token count restored from checkpoints
    on resume), so a resumed run reports the figures of the uninterrupted one. `start`: checkpoint_state
    of the checkpoint the run resumed from."""
    state = trainer.state
    hist = state.log_history
    train_hist, eval_hist = health.split_history(hist)
    # the end-of-training summary; with include_num_input_tokens_seen every step log has a train_runtime too
    summary = next((h for h in reversed(hist) if "train_runtime" in h and "train_loss" in h), {})
    runtime = summary.get("train_runtime")
    last_train = train_hist[-1] if train_hist else {}
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


def write_metrics(out_dir: Path, metrics: dict) -> Path:
    """metrics.json is the 'finished' marker prepare_run_dir checks: write it last."""
    return write_json(Path(out_dir) / arms.TRAINING_MARKER, metrics)


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
