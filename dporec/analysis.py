"""From prediction rows to every number the evaluation reports: per-model metrics, SFT vs DPO, DPO
vs the compute-matched SFT control (with what the control matches), and pooling over seeds.

Used by evaluate_dpo.py (right after scoring, and with --from-predictions on a saved
predictions.csv) and by run_experiment.py (seeds). Imports no ML library: re-analysing a finished
run needs numpy, scipy and matplotlib only.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from . import UserError, stats
from .runs import CONTROL
SEED_METRICS = ("accuracy", "accuracy_original_order", "accuracy_swapped_order", "accuracy_both_orders",
                "consistency", "first_option_rate", "mean_margin")
NOT_MATCHABLE = ("the objective (DPO's preference loss on chosen vs rejected answers vs SFT's likelihood of the "
                 "chosen answer) and the compute per example: a DPO step runs the policy on both answers and "
                 "the frozen reference on both, about twice the forward/backward work of an SFT step")


def _kw(cfg: dict) -> dict:
    ec = cfg["eval"]
    return dict(n_boot=ec["bootstrap_samples"], seed=cfg["seed"], alpha=ec["alpha"])


def build_results(rows_by_model: dict[str, list[dict]], cfg: dict, meta: dict | None = None,
                  control_dir: Path | None = None) -> dict:
    """results.json content: {"models", "comparison", "comparison_control", "control_arm", "meta"}.

    comparison: stats.compare(sft, dpo) or None; comparison_control: stats.compare(sft_control,
    dpo) when both were scored; control_arm: what the control matches (control_matching) when
    its run folder and the DPO run folder are there."""
    kw = _kw(cfg)
    rows = rows_by_model
    results = {"models": {name: stats.model_metrics(r, **kw) for name, r in rows.items()}}
    results["comparison"] = stats.compare(rows["sft"], rows["dpo"], **kw) if "sft" in rows and "dpo" in rows else None
    has_control = CONTROL in rows and "dpo" in rows
    results["comparison_control"] = (stats.compare(rows[CONTROL], rows["dpo"], names=("SFT control", "DPO"), **kw)
                                     if has_control else None)
    results["control_arm"] = None
    if has_control:
        folder = Path(control_dir) if control_dir else Path(cfg["output_dir"]) / CONTROL
        results["control_arm"] = control_matching(Path(cfg["output_dir"]) / "dpo", folder)
    results["meta"] = dict(meta or {})
    return results


# ---------------------------------------------------------------------------------------------
# The control arm

def control_settings(dpo_dir: Path, sft_dir: Path, run_name: str = CONTROL) -> dict:
    """{config key: value} that make train_sft.py continue the SFT adapter as the compute-matched
    control: the DPO stage's optimizer steps and learning rate; batch size, accumulation, schedule,
    warmup, optimizer, training examples and seed come from the shared train/data sections."""
    steps = read_json(dpo_dir / "metrics.json").get("steps")
    if not isinstance(steps, int) or steps <= 0:
        raise UserError(f"{dpo_dir / 'metrics.json'} has no positive 'steps' count; cannot size the control arm")
    lr = _read_yaml(dpo_dir / "config.yaml")["dpo"]["learning_rate"]
    return {"sft.init_adapter": str(sft_dir), "sft.run_name": run_name, "sft.max_steps": steps,
            "sft.learning_rate": lr}


def _stage_facts(folder: Path, stage: str) -> dict | None:
    try:
        cfg, m = _read_yaml(folder / "config.yaml"), read_json(folder / "metrics.json")
    except UserError:
        return None
    t = cfg["train"]
    per_step = t["batch_size"] * t["grad_accum"]
    return {"optimizer steps": m.get("steps"), "examples per optimizer step": per_step,
            "examples seen": (m.get("steps") or 0) * per_step, "learning rate": cfg[stage]["learning_rate"],
            "schedule": t["lr_scheduler"], "warmup ratio": t["warmup_ratio"], "optimizer": t["optim"],
            "weight decay": t["weight_decay"], "max grad norm": t["max_grad_norm"],
            "training examples": m.get("n_train"), "seed": cfg["seed"]}


def control_matching(dpo_dir: Path, control_dir: Path) -> dict | None:
    """{"items": [{what, dpo, control, matched}], "matched": [...], "not_matched": [...],
    "not_matchable": text} from both stages' config.yaml and metrics.json; None when either is missing."""
    dpo, ctl = _stage_facts(Path(dpo_dir), "dpo"), _stage_facts(Path(control_dir), "sft")
    if dpo is None or ctl is None:
        return None
    items = [{"what": k, "dpo": dpo[k], "control": ctl[k], "matched": dpo[k] == ctl[k]} for k in dpo]
    return {"items": items, "matched": [i["what"] for i in items if i["matched"]],
            "not_matched": [i["what"] for i in items if not i["matched"]], "not_matchable": NOT_MATCHABLE}


# ---------------------------------------------------------------------------------------------
# Seeds

def _metric(m: dict, key: str):
    return m["confidence"]["mean_margin"] if key == "mean_margin" else m.get(key)


def _mean_sd(values: list) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    sd = float(v.std(ddof=1)) if v.size > 1 else None
    return {"mean": float(v.mean()) if v.size else None, "sd": sd, "values": values}


def aggregate_seeds(results_by_seed: dict, rows_by_seed: dict, cfg: dict, out_dir: Path) -> dict:
    """Mean ± sd of each metric over seeds, each seed's verdict, and the pooled comparisons: every
    test pair's scores averaged over seeds first (n = distinct pairs), then the usual paired test."""
    models = list(next(iter(results_by_seed.values()))["models"])
    metrics = {m: {k: _mean_sd([_metric(r["models"][m], k) for r in results_by_seed.values()]) for k in SEED_METRICS}
               for m in models}
    per_seed = {str(s): {"output_dir": str(Path(out_dir) / f"seed-{s}"), "comparison": _brief(r.get("comparison")),
                         "comparison_control": _brief(r.get("comparison_control"))}
                for s, r in results_by_seed.items()}
    runs = list(rows_by_seed.values())

    def pooled(a, b, names):
        if a not in models or b not in models:
            return None
        return stats.compare_runs([r[a] for r in runs], [r[b] for r in runs], names=names, **_kw(cfg))

    return {"seeds": list(results_by_seed), "models": models, "metrics": metrics, "per_seed": per_seed,
            "pooled": pooled("sft", "dpo", ("SFT", "DPO")),
            "pooled_control": pooled(CONTROL, "dpo", ("SFT control", "DPO")),
            "note": "pooled: each test pair's two-order score is averaged over the seeds first, so the test counts "
                    "distinct pairs (and users); seed-to-seed spread is in the mean ± sd table"}


def _brief(c: dict | None) -> dict | None:
    keys = ("sft_accuracy", "dpo_accuracy", "difference", "ci95", "p_value", "significant", "verdict")
    return {k: c.get(k) for k in keys} if c else None


# ---------------------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
