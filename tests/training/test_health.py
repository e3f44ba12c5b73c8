"""The training health monitor, driven by logged histories that should and should not warn."""
from __future__ import annotations

import math

from dporec.config import defaults
from dporec.training import arguments, health

T = defaults()["health"]


def _dpo_hist(chosen, margins, accs, losses=None):
    """Train logs with logps/chosen and rewards/margins per step; eval logs with reward accuracy."""
    losses = losses or [0.69] * len(chosen)
    train = [{"step": i + 1, "loss": lo, "grad_norm": 1.0, "logps/chosen": c, "rewards/margins": m}
             for i, (c, m, lo) in enumerate(zip(chosen, margins, losses))]
    evals = [{"step": 4 * i, "eval_loss": 0.6, "eval_rewards/accuracies": a} for i, a in enumerate(accs)]
    return train, evals


def codes(result):
    return [w["code"] for w in result["warnings"]]


def test_healthy_dpo_run_does_not_warn():
    train, evals = _dpo_hist(chosen=[-20.0, -20.5, -21.0, -21.2], margins=[0.0, 0.1, 0.3, 0.5],
                             accs=[0.5, 0.7, 0.8])
    result = health.check_dpo(train, evals, T, warmup_steps=1)
    assert result["ok"] and result["warnings"] == []
    assert math.isclose(result["observed"]["chosen_logp_drop"], 1.2)


def test_likelihood_displacement_warns_with_the_remedy():
    # The margin grows and accuracy is high, yet the chosen answer got 12 nats less likely.
    train, evals = _dpo_hist(chosen=[-20.0, -24.0, -28.0, -32.0], margins=[0.0, 1.0, 2.0, 3.0],
                             accs=[0.5, 0.9])
    result = health.check_dpo(train, evals, T)
    assert codes(result) == ["likelihood_displacement"]
    assert "dpo.loss_type=[sigmoid, sft]" in result["warnings"][0]["remedy"]
    assert "dpo.beta" in result["warnings"][0]["remedy"]


def test_eval_series_is_preferred_over_noisy_train_logs():
    train, evals = _dpo_hist(chosen=[-20.0, -40.0], margins=[0.1, 0.2], accs=[0.5, 0.8])
    evals[0]["eval_logps/chosen"], evals[1]["eval_logps/chosen"] = -20.0, -21.0
    assert health.check_dpo(train, evals, T)["ok"]


def test_low_final_reward_accuracy_warns():
    train, evals = _dpo_hist(chosen=[-20.0, -20.1], margins=[0.01, 0.02], accs=[0.5, 0.52])
    assert codes(health.check_dpo(train, evals, T)) == ["low_reward_accuracy"]
    # the threshold comes from the config
    assert health.check_dpo(train, evals, dict(T, min_eval_reward_accuracy=0.5))["ok"]


def test_non_positive_margin_after_warmup_warns_but_not_during_warmup():
    train, evals = _dpo_hist(chosen=[-20.0, -20.1, -20.2], margins=[-0.2, 0.1, -0.05], accs=[0.5, 0.6])
    assert codes(health.check_dpo(train, evals, T, warmup_steps=1)) == ["non_positive_margin"]
    train, evals = _dpo_hist(chosen=[-20.0, -20.1], margins=[-0.2, 0.1], accs=[0.5, 0.6])
    # step 1's negative margin is inside warmup; step 2's is positive
    assert health.check_dpo(train, evals, T, warmup_steps=1)["ok"]


def test_nan_loss_or_grad_norm_warns():
    train, evals = _dpo_hist(chosen=[-20.0, -20.1], margins=[0.1, 0.2], accs=[0.5, 0.6],
                             losses=[0.69, float("nan")])
    assert "non_finite" in codes(health.check_dpo(train, evals, T))
    train[1]["loss"], train[0]["grad_norm"] = 0.5, float("inf")
    assert "non_finite" in codes(health.check_dpo(train, evals, T))


def test_sft_rising_validation_loss_warns_and_falling_does_not():
    train = [{"step": s, "loss": 2.0 - 0.1 * s} for s in range(1, 9)]
    falling = [{"step": s, "eval_loss": v} for s, v in ((0, 2.0), (4, 1.2), (8, 1.0))]
    assert health.check_sft(train, falling, T)["ok"]
    rising = [{"step": s, "eval_loss": v} for s, v in ((0, 2.0), (4, 1.0), (8, 1.3))]
    result = health.check_sft(train, rising, T)
    assert codes(result) == ["rising_eval_loss"]
    assert "step 4" in result["warnings"][0]["remedy"]
    # within the allowed rise (10% of 1.0)
    slight = [{"step": s, "eval_loss": v} for s, v in ((0, 2.0), (4, 1.0), (8, 1.05))]
    assert health.check_sft(train, slight, T)["ok"]


def test_callback_warns_once_per_kind(capsys):
    from transformers import TrainerState, TrainingArguments
    cb = health.make_callback("dpo", T)
    args = TrainingArguments(output_dir="unused", warmup_steps=0, report_to="none", use_cpu=True)
    state = TrainerState()
    state.max_steps = 10
    train, evals = _dpo_hist(chosen=[-20.0, -30.0], margins=[0.5, 1.0], accs=[0.5, 0.9])
    state.log_history = train + evals
    cb.on_log(args, state, None)
    cb.on_log(args, state, None)
    err = capsys.readouterr().err
    assert err.count("likelihood_displacement") == 1
    assert "Remedy:" in err


def test_report_to_reaches_the_trainer_arguments(tiny_cfg, tmp_path):
    from dporec.config import set_key
    assert arguments.trainer_args(tiny_cfg, "sft", tmp_path, "hf", False)["report_to"] == "none"
    set_key(tiny_cfg, "train.report_to", ["tensorboard", "wandb"])
    args = arguments.trainer_args(tiny_cfg, "dpo", tmp_path, "hf", False)
    assert args["report_to"] == ["tensorboard", "wandb"]
