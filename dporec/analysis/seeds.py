"""Repeating the experiment over training seeds: each metric's mean and spread, and the pooled comparison."""
from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy import stats as sps

from dporec.analysis import reasoning
from dporec.analysis.comparison import compare_runs, compare_tables, margin_status, verdict

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


def method_interval(center: float, se: float, df: float, differences, alpha: float, margin: float,
                    bound: float = 1.0) -> dict | None:
    """The interval of the method's effect over training runs, from the pooled comparison's interval
    (center, se, df: the test pairs' sampling, models held fixed) and each seed's difference.

    Every seed is scored on the same test pairs, so the seeds' spread holds none of the test sampling and
    the pooled interval none of the retraining. The half-width combines the two as the root sum of
    squares of their own t half-widths: t(df) * se for the test pairs, t(k - 1) * s_seed / sqrt(k) for
    the seeds. Satterthwaite's pooled degrees of freedom would be narrower but under-cover with few
    seeds (simulated: 93% at 3 seeds and a seed SD of 2 points, 88% at 2 seeds); this combination
    covers at 97% or more there (tests/analysis/test_comparison.py). The p-value is the level at which
    the interval just reaches 0, so the interval excludes 0 exactly when p < alpha. None with fewer than
    2 seeds (no seed variance to estimate)."""
    d = np.asarray(differences, dtype=float)
    k = d.size
    if k < 2:
        return None
    se_seeds = float(d.std(ddof=1)) / np.sqrt(k)

    def half(a: float) -> float:
        q = 1 - a / 2
        return float(np.hypot(sps.t.ppf(q, df) * se, sps.t.ppf(q, k - 1) * se_seeds))

    h = half(alpha)
    ci = (max(center - h, -bound), min(center + h, bound))
    if center == 0 or h == 0:
        p = 1.0 if center == 0 else 0.0
    elif half(1 - 1e-12) >= abs(center):
        p = 1.0
    elif half(1e-15) <= abs(center):
        p = 1e-15
    else:
        p = float(optimize.brentq(lambda a: half(a) - abs(center), 1e-15, 1 - 1e-12, xtol=1e-14))
    return {"ci": list(ci), "p_value": p, "significant": bool(p < alpha),
            "interval": {"center": center, "se_test": se, "df_test": df, "se_seeds": se_seeds,
                         "df_seeds": k - 1, "half_width": h},
            "verdict": verdict(ci, margin), "margin_status": margin_status(ci, margin)}


def over_seeds(runs_a, runs_b, differences, names, margin: float, alpha: float, compare=compare_runs) -> dict:
    """One comparison over seeds: the pooled comparison (each test pair's scores averaged over the seeds
    first), the seeds' spread, and, with 2 or more seeds, the interval, p and label about the method
    (method_interval), the fixed-model ones kept as 'these_models'. compare: what pools the runs
    (compare_runs for prediction rows; comparison.compare_tables for per-pair score tables)."""
    pooled = compare(runs_a, runs_b, names=names, margin=margin, alpha=alpha)
    pooled["seed_spread"] = seed_spread(differences, alpha)
    method = method_interval(**{k: pooled["interval"][k] for k in ("center", "se", "df")},
                             differences=differences, alpha=alpha, margin=margin)
    if method is None:
        return {**pooled, "scope": "these models"}
    pooled["these_models"] = {k: pooled[k] for k in method if k in pooled}
    return {**pooled, **method, "scope": "method"}


def _pooled(comparisons, rows_by_seed: dict, results_by_seed: dict, margin: float, alpha: float,
            compare=compare_runs) -> dict:
    """{pooled_key: over_seeds(...), or None where a seed did not score both models}. rows_by_seed: per seed
    {model: what `compare` pools}; results_by_seed: per seed the block holding each comparison's
    difference."""
    out, runs = {}, list(rows_by_seed.values())
    for c in comparisons:
        scored = all(c.a in r and c.b in r for r in runs) and all(
            results_by_seed[s].get(c.key) for s in rows_by_seed)
        out[c.pooled_key] = None if not scored else over_seeds(
            [r[c.a] for r in runs], [r[c.b] for r in runs],
            [results_by_seed[s][c.key]["difference"] for s in rows_by_seed], c.names, margin, alpha,
            compare=compare)
    return out


def _reasoning(comparisons, gen_rows_by_seed: dict, results_by_seed: dict, margin: float, alpha: float
               ) -> dict | None:
    """The reasoning figures over seeds: each rate's mean and sd, and each comparison of the headline rate
    over seeds (over_seeds on the per-pair rates, judged anew from every seed's generations)."""
    blocks = {s: r.get("reasoning") for s, r in results_by_seed.items()}
    if not gen_rows_by_seed or not all(blocks.values()):
        return None
    tables = {s: {m: reasoning.pair_table(reasoning.judge_rows(r)) for m, r in rows.items()}
              for s, rows in gen_rows_by_seed.items()}
    models = list(next(iter(blocks.values()))["models"])
    out = {"metrics": {m: {k: _mean_sd([b["models"].get(m, {}).get(k) for b in blocks.values()])
                           for k, _, _ in reasoning.RATES} for m in models},
           "headline": reasoning.HEADLINE}
    for key, c in _pooled(comparisons, tables, blocks, margin, alpha, compare=compare_tables).items():
        out[key] = c and {**c, "measure": reasoning.HEADLINE,
                          "measure_label": reasoning.LABELS[reasoning.HEADLINE]}
    return out


def aggregate_seeds(results_by_seed: dict, rows_by_seed: dict, comparisons, margin: float,
                    alpha: float, personal_rows_by_seed: dict | None = None,
                    generation_rows_by_seed: dict | None = None) -> dict:
    """Mean ± sd of each metric over seeds; per comparison each seed's result and the comparison over seeds
    (over_seeds: about the method, pooled pairs). personal_rows_by_seed: every seed's prediction rows on
    the personal task's pairs, when all seeds scored them: the same, under "personal".
    generation_rows_by_seed: every seed's generation rows (generations.csv), when all seeds generated:
    the reasoning figures over seeds, under "reasoning".

    comparisons: records with key (the per-seed results key), pooled_key, a, b (model names) and names
    (dporec.arms.Comparison); one whose models were not evaluated gives None.
    """
    models = list(next(iter(results_by_seed.values()))["models"])
    metrics = {m: {k: _mean_sd([_metric(r["models"][m], k) for r in results_by_seed.values()])
                   for k in SEED_METRICS} for m in models}
    per_seed = {str(s): {c.key: _brief(r.get(c.key)) for c in comparisons}
                for s, r in results_by_seed.items()}
    out = {"seeds": list(results_by_seed), "models": models, "metrics": metrics, "per_seed": per_seed,
           "alpha": alpha}
    out.update(_pooled(comparisons, rows_by_seed, results_by_seed, margin, alpha))
    personal = None
    if personal_rows_by_seed:  # the second verdict's pairs, scored by every seed
        personal = _pooled(comparisons, personal_rows_by_seed,
                           {s: r.get("personal") or {} for s, r in results_by_seed.items()}, margin, alpha)
    out["personal"] = personal if personal and any(personal.values()) else None
    out["reasoning"] = _reasoning(comparisons, generation_rows_by_seed, results_by_seed, margin, alpha)
    out["note"] = ("each pooled comparison averages every test pair's two-order score over the seeds "
                   "first, so it counts distinct pairs and users. Its interval, p and label are about the "
                   "method: the test pairs' sampling variance plus the seeds' variance of the difference "
                   "(each seed trains its own models). 'these_models' keeps the interval that holds the "
                   "trained models fixed, about these k models only")
    return out
