"""Training health: read the Trainer's own log history and say, with a remedy, when a run went wrong quietly.

Short-answer DPO fails by likelihood displacement: the margin between chosen and rejected grows while
the chosen answer's own log-probability falls (arXiv 2410.08847, 2402.13228), so a run can look fine
on its loss and still have taught the model to say neither answer. SFT fails quietly by over-fitting:
the validation loss turns up while the training loss keeps falling. The checks below use only what
TRL already logs (`logps/chosen`, `rewards/margins`, `rewards/accuracies`, `loss`, `grad_norm`,
`eval_loss`), so they work on a finished run's metrics.json as well as live, from a callback.

Thresholds live in the config's `health` section (dporec/config.py says what each trades off).
"""
from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

DPO_REMEDY = ("try dpo.loss_type=[sigmoid, sft] (an NLL term keeps the chosen answer likely), a larger "
              "dpo.beta, or a lower dpo.learning_rate")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _series(hist: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) for every log entry holding `key`; non-numbers (None from JSON) are skipped."""
    return [(h.get("step", 0), h[key]) for h in hist if isinstance(h.get(key), (int, float))]


def _warning(code: str, message: str, remedy: str) -> dict:
    return {"code": code, "message": message, "remedy": remedy}


def _non_finite(train_hist: list[dict], eval_hist: list[dict]) -> list[dict]:
    bad = []
    for h in train_hist:
        for key in ("loss", "grad_norm"):
            if key in h and h[key] is not None and not _finite(h[key]):
                bad.append(f"{key}={h[key]} at step {h.get('step')}")
    for h in eval_hist:
        if "eval_loss" in h and h["eval_loss"] is not None and not _finite(h["eval_loss"]):
            bad.append(f"eval_loss={h['eval_loss']} at step {h.get('step')}")
    if not bad:
        return []
    return [_warning("non_finite", "non-finite values in training: " + "; ".join(bad[:3])
                     + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""),
                     "lower the learning rate, keep train.max_grad_norm > 0, and check model.dtype "
                     "(float16 overflows where bfloat16 does not)")]


def check_dpo(train_hist: list[dict], eval_hist: list[dict], thresholds: dict, warmup_steps: int = 0) -> dict:
    """Health of a DPO run from its log history. Returns {"ok", "warnings": [...], "observed": {...}}."""
    warnings = _non_finite(train_hist, eval_hist)
    observed: dict = {}

    # Prefer the evaluation series (same examples every time; the step-0 evaluation is the policy at
    # init); fall back to the training logs, which are noisier batch means.
    chosen = _series(eval_hist, "eval_logps/chosen") or _series(train_hist, "logps/chosen")
    if len(chosen) >= 2:
        first, last = chosen[0][1], chosen[-1][1]
        drop = first - last
        observed.update(chosen_logp_first=first, chosen_logp_last=last, chosen_logp_drop=drop)
        if drop > thresholds["max_chosen_logp_drop"]:
            warnings.append(_warning(
                "likelihood_displacement",
                f"logps/chosen fell by {drop:.2f} nats ({first:.2f} -> {last:.2f}, limit "
                f"{thresholds['max_chosen_logp_drop']}): the chosen answer became less likely while DPO "
                f"pushed the rejected one down (likelihood displacement)", DPO_REMEDY))

    accs = _series(eval_hist, "eval_rewards/accuracies")
    if accs:
        observed["eval_reward_accuracy"] = accs[-1][1]
        if accs[-1][1] < thresholds["min_eval_reward_accuracy"]:
            warnings.append(_warning(
                "low_reward_accuracy",
                f"evaluation rewards/accuracies ended at {accs[-1][1]:.3f} (limit "
                f"{thresholds['min_eval_reward_accuracy']}): the policy barely separates chosen from "
                f"rejected on held-out pairs", "train longer or with a larger dpo.learning_rate; check "
                "the data (balanced, rejected != chosen) with data/check_dataset.py"))

    margins = [(s, v) for s, v in _series(train_hist, "rewards/margins") if s > warmup_steps]
    if margins:
        observed["last_margin_after_warmup"] = margins[-1][1]
        if margins[-1][1] <= 0:
            warnings.append(_warning(
                "non_positive_margin",
                f"rewards/margins is {margins[-1][1]:.4f} at step {margins[-1][0]}, after the "
                f"{warmup_steps} warmup steps: the policy does not prefer the chosen answers", DPO_REMEDY))
    return {"ok": not warnings, "warnings": warnings, "observed": observed}


def check_sft(train_hist: list[dict], eval_hist: list[dict], thresholds: dict, warmup_steps: int = 0) -> dict:
    """Health of an SFT run: non-finite values, and a validation loss that rose above its minimum."""
    warnings = _non_finite(train_hist, eval_hist)
    observed: dict = {}
    losses = _series(eval_hist, "eval_loss")
    if len(losses) >= 2:
        best_step, best = min(losses, key=lambda sv: sv[1])
        last = losses[-1][1]
        rise = last - best
        observed.update(eval_loss_min=best, eval_loss_min_step=best_step, eval_loss_last=last)
        if rise > thresholds["max_eval_loss_rise"] * max(abs(best), 1e-8):
            warnings.append(_warning(
                "rising_eval_loss",
                f"validation loss rose from its minimum {best:.4f} (step {best_step}) to {last:.4f}: "
                "over-fitting", f"train fewer steps (sft.max_steps / sft.epochs), lower "
                f"sft.learning_rate, or use the checkpoint nearest step {best_step}"))
    return {"ok": not warnings, "warnings": warnings, "observed": observed}


def check(stage: str, train_hist: list[dict], eval_hist: list[dict], thresholds: dict,
          warmup_steps: int = 0) -> dict:
    fn = check_dpo if stage == "dpo" else check_sft
    return fn(train_hist, eval_hist, thresholds, warmup_steps)


def report_warnings(stage: str, health: dict) -> None:
    """Each warning on the console (stderr), with its remedy."""
    for w in health["warnings"]:
        log.warning(f"[{stage}] WARNING ({w['code']}): {w['message']}. Remedy: {w['remedy']}.")


def warmup_of(args, state) -> int:
    """Warmup steps of a run (TrainingArguments + TrainerState): margins are only judged after them."""
    return int(args.get_warmup_steps(state.max_steps)) if state.max_steps > 0 else 0


def split_history(hist: list[dict]) -> tuple[list[dict], list[dict]]:
    train = [h for h in hist if "loss" in h and "eval_loss" not in h]
    evals = [h for h in hist if "eval_loss" in h]
    return train, evals


# Checked while training runs; the rest only make sense on a finished run (the step-0 evaluation has
# reward accuracy ~0, and the first steps' margins are ~0 by construction).
LIVE_CHECKS = ("non_finite", "likelihood_displacement", "rising_eval_loss")


def make_callback(stage: str, thresholds: dict):
    """A transformers TrainerCallback that warns on the console as soon as a live check first fails."""
    from transformers import TrainerCallback

    class HealthCallback(TrainerCallback):
        def __init__(self):
            self.seen: set[str] = set()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            result = check(stage, *split_history(state.log_history), thresholds, warmup_of(args, state))
            new = [w for w in result["warnings"] if w["code"] in LIVE_CHECKS and w["code"] not in self.seen]
            self.seen.update(w["code"] for w in new)
            report_warnings(stage, {"warnings": new})

    return HealthCallback()
