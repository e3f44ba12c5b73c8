"""Repeating the experiment over training seeds: each metric's mean and spread, and the pooled comparison."""
from __future__ import annotations

import numpy as np

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
    keys = ("names", "a_accuracy", "b_accuracy", "difference", "ci95", "p_value", "significant", "verdict")
    return {k: c.get(k) for k in keys} if c else None


def aggregate_seeds(results_by_seed: dict, rows_by_seed: dict, comparisons: dict[str, tuple], n_boot: int,
                    seed: int, alpha: float) -> dict:
    """Mean ± sd of each metric over seeds, each seed's comparisons, and pooled comparisons: every test
    pair's scores averaged over seeds first (n = distinct pairs), then the usual paired test.

    comparisons: {result key: (model a, model b, (name a, name b))}; a pair whose models were not
    evaluated gives None.
    """
    models = list(next(iter(results_by_seed.values()))["models"])
    metrics = {m: {k: _mean_sd([_metric(r["models"][m], k) for r in results_by_seed.values()])
                   for k in SEED_METRICS} for m in models}
    per_seed = {str(s): {"comparison": _brief(r.get("comparison")),
                         "comparison_control": _brief(r.get("comparison_control"))}
                for s, r in results_by_seed.items()}
    runs = list(rows_by_seed.values())
    out = {"seeds": list(results_by_seed), "models": models, "metrics": metrics, "per_seed": per_seed}
    for key, (a, b, names) in comparisons.items():
        out[key] = (compare_runs([r[a] for r in runs], [r[b] for r in runs], names=names, n_boot=n_boot,
                                 seed=seed, alpha=alpha) if a in models and b in models else None)
    out["note"] = ("pooled: each test pair's two-order score is averaged over the seeds first, so the test "
                   "counts distinct pairs (and users); seed-to-seed spread is in the mean ± sd table")
    return out
