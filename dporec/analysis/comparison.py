"""The paired comparison of two models on the same test pairs, and the verdict that follows its interval.

Model a is the baseline side (SFT, or the compute-matched SFT control), model b the challenger (DPO):
the difference is b - a, the mean over test pairs of the per-pair difference of two-order scores
(each in {0, 0.5, 1}). The interval, the p-value and the label are all of that same mean.
"""
from __future__ import annotations

import numpy as np

from dporec.analysis.metrics import BY_PAIRS, clusters, decisions, per_pair_scores
from dporec.analysis.resampling import design_effect, paired_interval, required_pairs

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE"


def verdict(ci, margin: float) -> str:
    """The label of an interval of b - a, with the practical margin in the same units.

    SUPPORTED: the whole interval is above 0 (b is better). NOT SUPPORTED: otherwise, when the whole
    interval is below the margin (b is not better by the margin, or is worse). INCONCLUSIVE: neither.
    """
    lo, hi = ci
    if lo > 0:
        return SUPPORTED
    if hi < margin:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def margin_status(ci, margin: float) -> str:
    """Whether the interval shows the margin ("shown": all of it at or above), rules it out ("ruled out":
    all of it below) or leaves it open."""
    lo, hi = ci
    return "shown" if lo >= margin else "ruled out" if hi < margin else "open"


def pooled_pair_scores(tables) -> tuple[dict[str, float], dict[str, str | None]]:
    """Per-pair scores averaged over runs (seeds) of one model, from each run's (scores, users) table
    (metrics.per_pair_scores, or any per-pair score in [0, 1]); every run must hold the same test pairs
    with the same users."""
    tables = list(tables)
    if not tables:
        raise ValueError("no runs to pool")
    scores0, users = tables[0]
    for i, (scores, u) in enumerate(tables[1:], start=2):
        if set(scores) != set(scores0) or u != users:
            raise ValueError(f"run {i} was scored on other test pairs (or users) than run 1; seeds can only "
                             f"be pooled over the same test set")
    return {p: float(np.mean([t[0][p] for t in tables])) for p in scores0}, users


def compare(rows_a, rows_b, margin: float = 0.02, alpha: float = 0.05, power: float = 0.8,
            names: tuple[str, str] = ("SFT", "DPO")) -> dict:
    """Paired comparison of two models' prediction rows on the same test pairs; see compare_runs."""
    return compare_runs([rows_a], [rows_b], margin=margin, alpha=alpha, power=power, names=names)


def compare_runs(runs_a, runs_b, margin: float = 0.02, alpha: float = 0.05, power: float = 0.8,
                 names: tuple[str, str] = ("SFT", "DPO")) -> dict:
    """Paired comparison on the same test pairs; each side is a list of runs (seeds) whose per-pair
    scores are averaged first, so n_pairs counts distinct pairs. `margin` is the practical margin as a
    fraction (0.02 = 2 points).

    Keys: names [a, b], n_pairs, n_users, n_runs, clustering, a_accuracy, b_accuracy, difference
    (b - a), ci, p_value, significant, interval ({center, se, df}: the paired_interval the CI and p
    come from), verdict, margin, margin_status, pairs_b_higher, pairs_a_higher, decisions,
    decisions_differ (decisions, both orders of every pair and run, where the two models choose
    differently), sd_pair_difference, design_effect, pairs_for_margin (test pairs for `power` to
    detect the margin), alpha, power.
    """
    runs_a, runs_b = list(runs_a), list(runs_b)
    out = compare_tables([per_pair_scores(r) for r in runs_a], [per_pair_scores(r) for r in runs_b],
                         margin=margin, alpha=alpha, power=power, names=names)
    choices = [(decisions(ra), decisions(rb)) for ra, rb in zip(runs_a, runs_b)]
    out["decisions"] = sum(len(ca) for ca, _ in choices)
    out["decisions_differ"] = sum(ca[k] != cb[k] for ca, cb in choices for k in ca)
    return out


def compare_tables(tables_a, tables_b, margin: float = 0.02, alpha: float = 0.05, power: float = 0.8,
                   names: tuple[str, str] = ("SFT", "DPO")) -> dict:
    """compare_runs from per-pair score tables ((scores, users) per run, metrics.per_pair_scores): the
    one paired interval and label of every comparison, of two-order accuracy or of any other per-pair
    score in [0, 1] (the reasoning's "right and truthful" rate). Every key of compare_runs but
    decisions and decisions_differ."""
    tables_a, tables_b = list(tables_a), list(tables_b)
    a_scores, a_users = pooled_pair_scores(tables_a)
    b_scores, b_users = pooled_pair_scores(tables_b)
    if set(a_scores) != set(b_scores):
        only_a = sorted(set(a_scores) - set(b_scores))
        only_b = sorted(set(b_scores) - set(a_scores))
        raise ValueError(f"{names[0]} and {names[1]} were scored on different test pairs: {len(only_a)} only "
                         f"in {names[0]} (e.g. {only_a[:3]}), {len(only_b)} "
                         f"only in {names[1]} (e.g. {only_b[:3]})")
    pids = sorted(a_scores)
    for pid in pids:
        if a_users[pid] != b_users[pid]:
            raise ValueError(f"pair {pid!r}: user_id {a_users[pid]!r} in {names[0]} rows but "
                             f"{b_users[pid]!r} in {names[1]} rows")
    a = np.array([a_scores[p] for p in pids])
    b = np.array([b_scores[p] for p in pids])
    diff = b - a
    labels, clustering = clusters(a_users)
    inf = paired_interval(diff, labels, alpha=alpha)
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    deff = design_effect(diff, labels)
    return {
        "names": list(names),
        "n_pairs": len(pids),
        "n_users": len({u for u in a_users.values() if u is not None}),
        "n_runs": len(tables_a),
        "clustering": clustering,
        "unit": "pairs" if clustering == BY_PAIRS else "users",
        "a_accuracy": float(a.mean()),
        "b_accuracy": float(b.mean()),
        "difference": float(b.mean() - a.mean()),
        "ci": list(inf["ci"]),
        "p_value": inf["p_value"],
        "significant": bool(inf["p_value"] < alpha),
        "interval": {k: inf[k] for k in ("center", "se", "df")},
        "verdict": verdict(inf["ci"], margin),
        "margin": margin,
        "margin_status": margin_status(inf["ci"], margin),
        "pairs_b_higher": int(np.sum(diff > 0)),
        "pairs_a_higher": int(np.sum(diff < 0)),
        "sd_pair_difference": sd,
        "design_effect": deff,
        # None when no pair differs: there is no spread to size a test from
        "pairs_for_margin": required_pairs(sd, margin, deff, alpha=alpha, power=power),
        "alpha": alpha,
        "power": power,
    }
