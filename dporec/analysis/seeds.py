"""Repeating the experiment over training seeds: each metric's mean and spread, and the pooled comparison."""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from dporec.analysis.comparison import compare_runs

SEED_METRICS = ("accuracy", "accuracy_original_order", "accuracy_swapped_order", "accuracy_both_orders",
                "consistency", "first_option_rate", "mean_margin")


def _metric(m: dict, key: str):
    return m["confidence"]["mean_margin"] if key == "mean_margin" else m.get(key)


def _mean_sd(values: list) -> dict:
    v = np.array([x for x in values if x is not None], dtype=float)
    sd = float(v.std(ddof=1)) if v.size > 1 else None
    return {"mean": float(v.mean()) if v.size else None, "sd": sd, "values": values}


def _brief(c: dict | None) -> dict | None:
    keys = ("names", "a_accuracy", "b_accuracy", "difference", "ci", "p_value", "significant", "verdict")
    return {k: c.get(k) for k in keys} if c else None


def seed_spread(differences: list[float], alpha: float) -> dict:
    """The seeds' own differences: mean, sd and, with 3 or more seeds, a t interval over seeds.

    Unlike the pooled test, which holds each trained model fixed, this interval reflects retraining with
    another seed; with k seeds it has only k - 1 degrees of freedom."""
    d = np.asarray(differences, dtype=float)
    sd = float(d.std(ddof=1)) if d.size > 1 else None
    out = {"differences": d.tolist(), "mean": float(d.mean()), "sd": sd, "ci": None}
    if d.size >= 3:
        half = float(sps.t.ppf(1 - alpha / 2, d.size - 1)) * out["sd"] / np.sqrt(d.size)
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def aggregate_seeds(results_by_seed: dict, rows_by_seed: dict, comparisons, margin: float,
                    alpha: float) -> dict:
    """Mean ± sd of each metric over seeds; per comparison each seed's result, the seeds' spread and the
    pooled comparison (every test pair's scores averaged over seeds first, n = distinct pairs).

    comparisons: records with key (the per-seed results key), pooled_key, a, b (model names) and names
    (dporec.arms.Comparison); one whose models were not evaluated gives None.
    """
    models = list(next(iter(results_by_seed.values()))["models"])
    metrics = {m: {k: _mean_sd([_metric(r["models"][m], k) for r in results_by_seed.values()])
                   for k in SEED_METRICS} for m in models}
    per_seed = {str(s): {c.key: _brief(r.get(c.key)) for c in comparisons}
                for s, r in results_by_seed.items()}
    runs = list(rows_by_seed.values())
    out = {"seeds": list(results_by_seed), "models": models, "metrics": metrics, "per_seed": per_seed,
           "alpha": alpha}
    for c in comparisons:
        if c.a not in models or c.b not in models:
            out[c.pooled_key] = None
            continue
        out[c.pooled_key] = compare_runs([r[c.a] for r in runs], [r[c.b] for r in runs], names=c.names,
                                         margin=margin, alpha=alpha)
        out[c.pooled_key]["seed_spread"] = seed_spread(
            [r[c.key]["difference"] for r in results_by_seed.values()], alpha)
    out["note"] = ("the pooled comparison averages each test pair's two-order score over the seeds first, so "
                   "it counts distinct pairs and users; it treats the trained models as fixed and covers the "
                   "sampling of test pairs only. The seeds' spread (and, with 3 or more seeds, its interval) "
                   "shows how much retraining moves the difference")
    return out
