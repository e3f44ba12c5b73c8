"""Inference over users: the cluster bootstrap, the paired interval and p-value of a mean difference,
the design effect of clustering and the test size for a given power.

Pairs of one user share a history, so a user (a cluster) is the unit every interval and test is
built on.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

# --------------------------------------------------------------------------------------------
# Resampling

def _cluster_sums(values, labels):
    v = np.asarray(values, dtype=float)
    _, inv = np.unique(np.asarray([str(c) for c in labels]), return_inverse=True)
    if inv.size != v.shape[0]:
        raise ValueError(f"{v.shape[0]} values but {inv.size} cluster labels")
    if v.shape[0] == 0:
        raise ValueError("need at least one value")
    sums = (np.bincount(inv, weights=v) if v.ndim == 1
            else np.column_stack([np.bincount(inv, weights=v[:, j]) for j in range(v.shape[1])]))
    return sums, np.bincount(inv).astype(float)


def cluster_bootstrap_ci(values, clusters, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                         chunk: int = 250):
    """Percentile CI of mean(values) resampling CLUSTERS with replacement (all items of a drawn
    cluster come along). values: 1-D -> (lo, hi); 2-D (items x k) -> [(lo, hi)] per column, all
    from the same resamples. Pass one cluster per item for the ordinary item bootstrap."""
    v = np.asarray(values, dtype=float)
    sums, sizes = _cluster_sums(v, clusters)
    k = sums.shape[0]
    s2 = sums.reshape(k, -1)
    rng = np.random.default_rng(seed)
    stats = np.empty((n_boot, s2.shape[1]))
    # Chunked so ML-1M-sized user counts never need an n_boot x n_users matrix at once.
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, k, size=(stop - start, k))
        counts = np.stack([np.bincount(row, minlength=k) for row in idx]).astype(float)
        stats[start:stop] = (counts @ s2) / (counts @ sizes)[:, None]
    q = np.quantile(stats, [alpha / 2, 1 - alpha / 2], axis=0)
    cis = [(float(q[0, j]), float(q[1, j])) for j in range(s2.shape[1])]
    return cis[0] if v.ndim == 1 else cis


def _cr2(sums, sizes, alpha: float) -> dict:
    """The cluster-robust t interval of a mean from per-cluster sums and sizes: CR2 variance, Bell-McCaffrey
    degrees of freedom. Returns {center, se, df, half}: half is the interval's half-width."""
    total = sizes.sum()
    center = float(sums.sum() / total)
    c = sizes / total  # each cluster's leverage in the intercept-only model
    se = float(np.sqrt(np.sum((sums - center * sizes) ** 2 / (1 - c)) / total ** 2))
    # Bell-McCaffrey: Satterthwaite degrees of freedom of the CR2 variance under a working model of
    # independent, equal-variance items (G - 1 when all clusters have one size).
    lev = c / (1 - c)
    df = float(1.0 / (np.sum(lev ** 2) - 2 * np.sum(c * lev ** 2) + np.sum(c * lev) ** 2))
    return {"center": center, "se": se, "df": df, "half": float(sps.t.ppf(1 - alpha / 2, df)) * se}


def paired_interval(values, clusters, alpha: float = 0.05, bound: float = 1.0) -> dict:
    """Interval and two-sided p-value for the mean of paired differences, clustered by user.

    A cluster-robust t interval (CR2 variance, Bell-McCaffrey degrees of freedom) after adding two
    pseudo-items, one at +bound and one at -bound, each its own cluster. Without them the interval
    of mostly-zero differences collapses: three "DPO better" pairs among a hundred would give a
    standard error from three points, and identical models an interval of zero width. The pseudo-items
    shrink the center toward 0 by 2/(N+2) and keep the standard error honest, in the spirit of the
    Agresti-Min adjustment for paired proportions (one added to each discordant cell). The bound must
    be of the order of the differences' own spread: the pairwise scores' differences lie in [-1, 1]
    (bound 1); for continuous differences far narrower than their range use observed_bound. CR2 and
    its degrees of freedom keep one user with many pairs from dominating unnoticed. The p-value comes
    from the same t statistic, so the interval excludes 0 exactly when p < alpha. Returns {mean,
    center, se, df, ci, p_value}; ci is clipped to +-bound.
    """
    v = np.asarray(values, dtype=float)
    sums, sizes = _cluster_sums(v, clusters)
    mean = float(sums.sum() / sizes.sum())
    r = _cr2(np.r_[sums, bound, -bound], np.r_[sizes, 1.0, 1.0], alpha)
    ci = (max(r["center"] - r["half"], -bound), min(r["center"] + r["half"], bound))
    p = float(2 * sps.t.sf(abs(r["center"]) / r["se"], r["df"]))
    return {"mean": mean, "center": r["center"], "se": r["se"], "df": r["df"], "ci": ci, "p_value": p}


def observed_bound(values, limit: float) -> float:
    """The pseudo-items' bound for continuous differences: the largest difference observed, or `limit`
    (the largest possible) when none differs. Per-user Kendall tau ranges over [-2, 2] but spreads ~0.1:
    pseudo-users at +-2 would set the interval's width alone (a half-width near 0.06 tau at 93 users,
    wider than the 0.04 margin with no spread in the data at all), and no pseudo-users under-cover where
    few users differ (89% at 20 users of whom 70% are ranked alike). Pseudo-users at the observed
    extreme cover at 94-99% from 5 to 150 users, dense or sparse (tests/analysis/test_resampling.py)."""
    largest = float(np.max(np.abs(np.asarray(values, dtype=float)))) if len(values) else 0.0
    return largest if largest > 0 else float(limit)


# --------------------------------------------------------------------------------------------
# Test size

def design_effect(values, clusters) -> float:
    """Var(mean) with clustering / Var(mean) as if pairs were independent, at least 1.

    The clustered variance is the cluster-robust sum of squared user totals of the residuals
    (scaled by U/(U-1)); 1 when it cannot be estimated (fewer than 2 users, or no variance)."""
    v = np.asarray(values, dtype=float)
    sums, sizes = _cluster_sums(v - v.mean(), clusters)
    n, u = v.size, sums.size
    if u < 2 or n < 2 or v.var(ddof=1) == 0:
        return 1.0
    clustered = u / (u - 1) * float(np.sum(sums ** 2)) / n ** 2
    return max(1.0, float(clustered / (v.var(ddof=1) / n)))


def required_pairs(sd: float, delta: float, design_effect: float = 1.0, alpha: float = 0.05,
                   power: float = 0.8) -> int | None:
    """Test pairs to detect a mean per-pair difference `delta` with a two-sided level-alpha test:
    n = (z_{1-alpha/2} + z_power)^2 * sd^2 * design_effect / delta^2, rounded up. sd: standard
    deviation of the per-pair differences. None when delta or sd is 0."""
    if delta == 0 or sd == 0:
        return None
    z = float(sps.norm.ppf(1 - alpha / 2)) + float(sps.norm.ppf(power))
    return int(math.ceil(round(z * z * sd * sd * design_effect / (delta * delta), 9)))
