"""Resampling over users: the cluster bootstrap, the paired sign-flip test with the interval that
inverts it, McNemar, the design effect of clustering and the test size for a given power.

Pairs of one user share a history, so a user (a cluster) is the unit every interval resamples and
every test exchanges.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as sps

EXACT_MAX_CLUSTERS = 12      # up to 2^12 = 4,096 sign vectors: enumerate them all


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


def sign_flip_test(values, clusters, n_perm: int = 2000, seed: int = 0, alpha: float = 0.05,
                   bounds: tuple[float, float] = (-1.0, 1.0)) -> dict:
    """Two-sided paired permutation test of mean(values) = 0, flipping the sign of each cluster's
    total, and its inversion into a CI. Returns {p_value, ci95, exact, n_sign_vectors}.

    For a shift delta the statistic of sign vector e is T_e(delta) = sum_u e_u (S_u - delta n_u) / N
    and the observed one is mean - delta; delta is not rejected when enough |T_e| >= |T_obs|. Each
    such condition is a quadratic inequality in delta whose solution is an interval containing the
    mean, so the accepted set is an interval (computed exactly here) and contains 0 iff p >= alpha.
    """
    sums, sizes = _cluster_sums(values, clusters)
    n_clusters, total = sums.size, sizes.sum()
    mean = sums.sum() / total
    exact = n_clusters <= EXACT_MAX_CLUSTERS
    if exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n_clusters)))
        a, b = signs @ sums / total, signs @ sizes / total
    else:
        rng = np.random.default_rng(seed)
        a, b = np.empty(n_perm), np.empty(n_perm)
        for start in range(0, n_perm, 500):
            e = rng.choice((-1.0, 1.0), size=(min(n_perm, start + 500) - start, n_clusters))
            a[start:start + len(e)], b[start:start + len(e)] = e @ sums / total, e @ sizes / total
    # (a - delta b)^2 >= (mean - delta)^2  <=>  A delta^2 + B delta + C >= 0 with A = b^2 - 1 <= 0.
    A, B, C = b * b - 1.0, 2.0 * (mean - a * b), a * a - mean * mean
    lo = np.full(a.size, -np.inf)
    hi = np.full(a.size, np.inf)
    quad = A < -1e-12  # A == 0 only for the all-equal sign vectors, where |T_e| == |T_obs| always
    disc = np.maximum(B[quad] ** 2 - 4 * A[quad] * C[quad], 0.0)
    r1, r2 = (-B[quad] + np.sqrt(disc)) / (2 * A[quad]), (-B[quad] - np.sqrt(disc)) / (2 * A[quad])
    tol = 1e-9  # equal statistics count as "at least as extreme"
    lo[quad], hi[quad] = np.minimum(r1, r2) - tol, np.maximum(r1, r2) + tol
    lo, hi = np.minimum(lo, mean), np.maximum(hi, mean)  # every interval holds the mean (T_obs = 0 there)
    k = a.size
    count0 = int(np.sum((lo <= 0) & (hi >= 0)))
    p = count0 / k if exact else (1 + count0) / (k + 1)
    # smallest number of accepting sign vectors for p >= alpha
    need = math.ceil(alpha * k - 1e-9) if exact else math.ceil(alpha * (k + 1) - 1e-9) - 1
    if need <= 0:
        ci = bounds
    elif need > k:
        ci = (mean, mean)
    else:
        ci = (float(np.sort(lo)[need - 1]), float(np.sort(hi)[::-1][need - 1]))
    ci = tuple(float(mean) if abs(x - mean) <= 2 * tol else float(min(max(x, bounds[0]), bounds[1]))
               for x in ci)
    # The all-plus and all-minus sign vectors always count: with few clusters no outcome is significant.
    min_p = 2 / k if exact else 1 / (k + 1)
    return {"p_value": float(min(1.0, p)), "ci95": ci, "exact": exact, "n_sign_vectors": int(k),
            "min_p": float(min_p), "n_clusters": int(n_clusters)}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts b and c (binomial, p=0.5)."""
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(b, b + c, 0.5).pvalue)


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
