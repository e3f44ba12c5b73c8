"""Ranking adherence in numbers: pairwise preferences to a ranking, and how well it follows the ratings.

The pair's preference is the position-free mean of its two orders,

    pref(i over j) = (margin(i as A, j as B) - margin(j as A, i as B)) / 2,

so a model that always says "A" prefers nothing; the preferences become a ranking by Copeland. Against
the user's ratings (ties allowed): Kendall's tau-b (a ranking with no order at all counts 0), NDCG@3
(gain = rating - 1, so a 1-star movie, or a half-star one, adds nothing; tied scores share their group's
mean gain) and hit@1 (the top movie liked: rated at least the build's like_threshold, 4 by default, by
the rule the pairs use, dporec.data.ratings.liked; a tied top counts the share). Chance levels are exact
expectations under a random order.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.stats import kendalltau

from dporec.analysis.comparison import margin_status, verdict
from dporec.analysis.resampling import cluster_bootstrap_ci, observed_bound, paired_interval
from dporec.data.built import DEFAULTS
from dporec.data.ratings import liked as is_liked

METRICS = ("kendall_tau_b", "ndcg@3", "hit@1")
LIKED = DEFAULTS["like_threshold"]  # hit@1's threshold where a candidate set does not record its own
TOP_K = 3          # ndcg@3
LOWEST = 1         # the lowest rating: NDCG's gain is rating - LOWEST, so it starts at 0


def preferences(margins: list[tuple[float, float]], n: int) -> np.ndarray:
    """N x N antisymmetric matrix: pref[i, j] > 0 when i is preferred over j, position bias averaged out.
    margins: (margin with i as A, margin with j as A) for every pair i < j, in combinations order."""
    pref = np.zeros((n, n))
    for (i, j), (orig, swapped) in zip(combinations(range(n), 2), margins):
        pref[i, j] = (orig - swapped) / 2
        pref[j, i] = -pref[i, j]
    return pref


def copeland(pref: np.ndarray) -> np.ndarray:
    """A score per item ordering by Copeland wins (ties 1/2), then summed margin; equal only when both are.

    Not Bradley-Terry: its maximum-likelihood strengths do not exist for a perfectly consistent (strict)
    order, the common case for a rule-like model; it needs the log-odds to be calibrated probabilities,
    which one token's logit is not; and it adds an iterative fit.
    """
    wins, margin = standings(pref)
    keys = sorted(set(zip(wins, margin)))
    return np.array([keys.index(k) for k in zip(wins, margin)], dtype=float)


def standings(pref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Copeland wins out of N - 1, a tie counting 1/2; summed preference margin) per item."""
    wins = (pref > 0).sum(1) + 0.5 * ((pref == 0).sum(1) - 1)  # minus the diagonal
    return wins, pref.sum(1)


def kendall_tau_b(scores, ratings) -> float:
    scores, ratings = np.asarray(scores, float), np.asarray(ratings, float)
    if np.ptp(scores) == 0:
        return 0.0  # no order at all: no adherence either way
    return float(kendalltau(scores, ratings).statistic)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(scores, ratings, k: int = TOP_K) -> float:
    scores, gains = np.asarray(scores, float), np.maximum(np.asarray(ratings, float) - LOWEST, 0)
    k = min(k, len(gains))
    disc = _discounts(len(gains))
    dcg, pos = 0.0, 0
    for level in sorted(set(scores), reverse=True):  # tied groups share their mean gain
        group = gains[scores == level]
        dcg += group.mean() * disc[pos:min(pos + len(group), k)].sum()
        pos += len(group)
        if pos >= k:
            break
    ideal = (np.sort(gains)[::-1][:k] * disc[:k]).sum()
    return float(dcg / ideal) if ideal > 0 else 0.0


def hit_at_1(scores, ratings, liked=LIKED) -> float:
    scores, ratings = np.asarray(scores, float), np.asarray(ratings, float)
    return float(is_liked(ratings[scores == scores.max()], liked).mean())


def metrics(scores, ratings, liked=LIKED) -> dict[str, float]:
    return {"kendall_tau_b": kendall_tau_b(scores, ratings), "ndcg@3": ndcg_at_k(scores, ratings),
            "hit@1": hit_at_1(scores, ratings, liked)}


def chance(ratings, liked=LIKED) -> dict[str, float]:
    """Each metric's expectation under a uniformly random order."""
    ratings = np.asarray(ratings, float)
    gains = np.maximum(ratings - LOWEST, 0)
    k = min(TOP_K, len(gains))
    ideal = (np.sort(gains)[::-1][:k] * _discounts(k)).sum()
    ndcg = float(gains.mean() * _discounts(k).sum() / ideal) if ideal else 0.0
    return {"kendall_tau_b": 0.0, "ndcg@3": ndcg, "hit@1": float(is_liked(ratings, liked).mean())}


def summarize(rows, n_boot: int, seed: int, alpha: float) -> dict:
    """{metric: {"mean", "ci"}} over one ranker's per-user rows, with a user-bootstrap interval."""
    users = [r["user_id"] for r in rows]
    out = {}
    for m in METRICS:
        v = [r[m] for r in rows]
        lo, hi = cluster_bootstrap_ci(v, users, n_boot=n_boot, seed=seed, alpha=alpha)
        out[m] = {"mean": float(np.mean(v)), "ci": [lo, hi]}
    return out


RANGE = {"kendall_tau_b": 2.0, "ndcg@3": 1.0, "hit@1": 1.0}  # the largest per-user difference possible


def compare(rows_a, rows_b, alpha: float, margin: float) -> dict:
    """b minus a per user (paired): for each metric the mean difference, its interval and p-value
    (resampling.paired_interval); for Kendall tau-b also the verdict label against `margin`."""
    by_user = {r["user_id"]: r for r in rows_a}
    out = {}
    for m in METRICS:
        users = [r["user_id"] for r in rows_b if r["user_id"] in by_user]
        diffs = [r[m] - by_user[r["user_id"]][m] for r in rows_b if r["user_id"] in by_user]
        # pseudo-users at the largest observed difference (hit@1's is 1): resampling.observed_bound
        inf = paired_interval(diffs, users, alpha=alpha, bound=observed_bound(diffs, RANGE[m]))
        out[m] = {"difference": inf["mean"], "ci": list(inf["ci"]), "p_value": inf["p_value"]}
    tau = out["kendall_tau_b"]
    tau.update(verdict=verdict(tau["ci"], margin), margin=margin,
               margin_status=margin_status(tau["ci"], margin))
    return out
