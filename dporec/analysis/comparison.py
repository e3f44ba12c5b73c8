"""The paired comparison of two models on the same test pairs, and the verdict label.

Model a is the baseline side (SFT, or the compute-matched SFT control), model b the challenger (DPO):
the difference is b - a, the mean over test pairs of the per-pair difference of two-order scores
(each in {0, 0.5, 1}). Every test and interval here is of that same mean (README "Reading the verdict").
"""
from __future__ import annotations

import numpy as np

from dporec.analysis.metrics import BY_PAIRS, both_orders_correct, clusters, per_pair_scores
from dporec.analysis.resampling import (
    cluster_bootstrap_ci,
    design_effect,
    mcnemar_exact_p,
    required_pairs,
    sign_flip_test,
)

SUPPORT_MARGIN_POINTS = 2.0  # the research question's "meaningfully better" threshold


def verdict(a_acc: float, b_acc: float) -> str:
    """SUPPORTED if b beats a by more than 2 points, PARTIALLY SUPPORTED if by (0, 2], else NOT SUPPORTED.
    Point estimates only; the sentence reports uncertainty."""
    # Rounded so that e.g. 0.82 - 0.80 (= 1.99999999999999 in floats) is exactly 2 points.
    points = round((b_acc - a_acc) * 100, 9)
    if points > SUPPORT_MARGIN_POINTS:
        return "SUPPORTED"
    if points > 0:
        return "PARTIALLY SUPPORTED"
    return "NOT SUPPORTED"


def pooled_pair_scores(runs) -> tuple[dict[str, float], dict[str, str | None]]:
    """Per-pair two-order scores averaged over runs (seeds) of one model; every run must hold the
    same test pairs with the same users."""
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to pool")
    tables = [per_pair_scores(r) for r in runs]
    scores0, users = tables[0]
    for i, (scores, u) in enumerate(tables[1:], start=2):
        if set(scores) != set(scores0) or u != users:
            raise ValueError(f"run {i} was scored on other test pairs (or users) than run 1; seeds can only "
                             f"be pooled over the same test set")
    return {p: float(np.mean([t[0][p] for t in tables])) for p in scores0}, users


def compare(rows_a, rows_b, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
            power: float = 0.8, names: tuple[str, str] = ("SFT", "DPO")) -> dict:
    """Paired comparison of two models' prediction rows on the same test pairs; see compare_runs."""
    return compare_runs([rows_a], [rows_b], n_boot=n_boot, seed=seed, alpha=alpha, power=power, names=names)


def compare_runs(runs_a, runs_b, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                 power: float = 0.8, names: tuple[str, str] = ("SFT", "DPO")) -> dict:
    """Paired comparison on the same test pairs; each side is a list of runs (seeds) whose per-pair
    scores are averaged first, so n_pairs counts distinct pairs.

    Keys: names [a, b], n_pairs, n_users, n_runs, clustering, a_accuracy, b_accuracy, difference
    (b - a), p_value and ci95 (sign-flip test over users and its inversion), test_exact,
    n_sign_vectors, significant, min_attainable_p, n_clusters, bootstrap_ci95, pairs_b_higher,
    pairs_a_higher, mcnemar_both_orders ({b_only, a_only, p} or None when pooling runs),
    sd_pair_difference, design_effect, min_pairs_for_power80 (a difference this size),
    min_pairs_for_2_points, alpha, n_boot, seed, power, verdict.
    """
    runs_a, runs_b = list(runs_a), list(runs_b)
    a_scores, a_users = pooled_pair_scores(runs_a)
    b_scores, b_users = pooled_pair_scores(runs_b)
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
    test = sign_flip_test(diff, labels, n_perm=n_boot, seed=seed, alpha=alpha)
    mcnemar = None
    if len(runs_a) == 1 and len(runs_b) == 1:
        ca, cb = both_orders_correct(runs_a[0]), both_orders_correct(runs_b[0])
        b_only = sum(cb[p] and not ca[p] for p in pids)
        a_only = sum(ca[p] and not cb[p] for p in pids)
        mcnemar = {"b_only": b_only, "a_only": a_only, "p": mcnemar_exact_p(b_only, a_only)}
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    deff = design_effect(diff, labels)
    a_acc, b_acc = float(a.mean()), float(b.mean())
    kw = dict(alpha=alpha, power=power)
    return {
        "names": list(names),
        "n_pairs": len(pids),
        "n_users": len({u for u in a_users.values() if u is not None}),
        "n_runs": len(runs_a),
        "clustering": clustering,
        "a_accuracy": a_acc,
        "b_accuracy": b_acc,
        "difference": b_acc - a_acc,
        "ci95": test["ci95"],
        "p_value": test["p_value"],
        "test_exact": test["exact"],
        "n_sign_vectors": test["n_sign_vectors"],
        "significant": bool(test["p_value"] < alpha),
        "min_attainable_p": test["min_p"],
        "n_clusters": test["n_clusters"],
        "bootstrap_ci95": cluster_bootstrap_ci(diff, labels, n_boot=n_boot, seed=seed, alpha=alpha),
        "pairs_b_higher": int(np.sum(diff > 0)),
        "pairs_a_higher": int(np.sum(diff < 0)),
        "mcnemar_both_orders": mcnemar,
        "sd_pair_difference": sd,
        "design_effect": deff,
        "min_pairs_for_power80": required_pairs(sd, b_acc - a_acc, deff, **kw),
        "min_pairs_for_2_points": required_pairs(sd, SUPPORT_MARGIN_POINTS / 100, deff, **kw),
        "alpha": alpha,
        "n_boot": n_boot,
        "seed": seed,
        "power": power,
        "verdict": verdict(a_acc, b_acc),
        "unit": "pairs" if clustering == BY_PAIRS else "users",
    }
