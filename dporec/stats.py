"""Statistics for comparing two models on the same test pairs, and the verdict.

The verdict prints the difference of two-order accuracies, i.e. the mean over test pairs of the
per-pair difference d = score_DPO - score_SFT (scores in {0, 0.5, 1}). Everything here tests or
bounds that same mean (README "Reading the verdict"):

  - p-value: a paired sign-flip permutation test of mean(d) = 0 that flips the sign of each USER's
    total difference (pairs of one user share a history, so a user is the unit that is exchangeable
    under "the models are equally good"); exact over all sign vectors for up to 12 users.
  - 95% CI: the differences delta that the same test does not reject when d - delta is tested, so
    the CI excludes 0 exactly when p < alpha and the two can never point different ways.
  - A user-clustered percentile bootstrap CI of mean(d) is reported next to it, and an exact
    McNemar test on strict right-in-both-orders correctness as a secondary line (a different
    quantity: it ignores pairs a model gets right in one order only).
  - Test size for 80% power from the variance of d and the users' design effect.
  - Seeds: each test pair's scores are averaged over seeds first, so n is the number of distinct
    pairs and repeating a seed adds nothing.

Per-model metrics (two-order accuracy with user-clustered bootstrap intervals) live in
dporec/metrics.py and are re-exported here.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as sps

from .metrics import (BY_PAIRS, ORDERS, LETTERS, TIE, bootstrap_label, both_orders_correct,  # noqa: F401
                      clusters, margins, model_metrics, per_pair_scores)

SUPPORT_MARGIN_POINTS = 2.0  # the research question's "meaningfully better" threshold
EXACT_MAX_CLUSTERS = 12      # up to 2^12 = 4,096 sign vectors: enumerate them all
_MINUS = "\u2212"


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
    ci = tuple(float(mean) if abs(x - mean) <= 2 * tol else float(min(max(x, bounds[0]), bounds[1])) for x in ci)
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


# --------------------------------------------------------------------------------------------
# Comparison and verdict

def verdict(sft_acc: float, dpo_acc: float) -> str:
    """SUPPORTED if DPO beats SFT by more than 2 points, PARTIALLY SUPPORTED if by (0, 2], else
    NOT SUPPORTED. Point estimates only; the sentence reports uncertainty."""
    # Rounded so that e.g. 0.82 - 0.80 (= 1.99999999999999 in floats) is exactly 2 points.
    points = round((dpo_acc - sft_acc) * 100, 9)
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


def compare(rows_sft, rows_dpo, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
            power: float = 0.8, names: tuple[str, str] = ("SFT", "DPO")) -> dict:
    """Paired comparison of two models (sft side, dpo side) on the same test pairs; see compare_runs."""
    return compare_runs([rows_sft], [rows_dpo], n_boot=n_boot, seed=seed, alpha=alpha, power=power, names=names)


def compare_runs(runs_sft, runs_dpo, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                 power: float = 0.8, names: tuple[str, str] = ("SFT", "DPO")) -> dict:
    """Paired comparison on the same test pairs; each side is a list of runs (seeds) whose per-pair
    scores are averaged first, so n_pairs counts distinct pairs.

    Keys: names, n_pairs, n_users, n_runs, clustering, sft_accuracy, dpo_accuracy, difference
    (dpo - sft), p_value and ci95 (sign-flip test over users and its inversion), test,
    significant, bootstrap_ci95, pairs_dpo_higher, pairs_sft_higher, mcnemar_both_orders
    ({dpo_only, sft_only, p} or None when pooling runs), mcnemar_p, sd_pair_difference,
    design_effect, min_pairs_for_power80 (a difference this size), min_pairs_for_2_points,
    alpha, n_boot, seed, power, verdict, sentence.
    """
    runs_sft, runs_dpo = list(runs_sft), list(runs_dpo)
    s_scores, s_users = pooled_pair_scores(runs_sft)
    d_scores, d_users = pooled_pair_scores(runs_dpo)
    if set(s_scores) != set(d_scores):
        only_s = sorted(set(s_scores) - set(d_scores))
        only_d = sorted(set(d_scores) - set(s_scores))
        raise ValueError(f"{names[0]} and {names[1]} were scored on different test pairs: {len(only_s)} only in "
                         f"{names[0]} (e.g. {only_s[:3]}), {len(only_d)} only in {names[1]} (e.g. {only_d[:3]})")
    pids = sorted(s_scores)
    for pid in pids:
        if s_users[pid] != d_users[pid]:
            raise ValueError(f"pair {pid!r}: user_id {s_users[pid]!r} in {names[0]} rows but {d_users[pid]!r} "
                             f"in {names[1]} rows")
    s = np.array([s_scores[p] for p in pids])
    d = np.array([d_scores[p] for p in pids])
    diff = d - s
    labels, clustering = clusters(s_users)
    test = sign_flip_test(diff, labels, n_perm=n_boot, seed=seed, alpha=alpha)
    how = "all" if test["exact"] else "random"
    unit = "pairs" if clustering == BY_PAIRS else "users"
    mcnemar = None
    if len(runs_sft) == 1 and len(runs_dpo) == 1:
        sb, db = both_orders_correct(runs_sft[0]), both_orders_correct(runs_dpo[0])
        b = sum(db[p] and not sb[p] for p in pids)
        c = sum(sb[p] and not db[p] for p in pids)
        mcnemar = {"dpo_only": b, "sft_only": c, "p": mcnemar_exact_p(b, c)}
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    deff = design_effect(diff, labels)
    sft_acc, dpo_acc = float(s.mean()), float(d.mean())
    kw = dict(alpha=alpha, power=power)
    out = {
        "names": list(names),
        "n_pairs": len(pids),
        "n_users": len({u for u in s_users.values() if u is not None}),
        "n_runs": len(runs_sft),
        "clustering": clustering,
        "sft_accuracy": sft_acc,
        "dpo_accuracy": dpo_acc,
        "difference": dpo_acc - sft_acc,
        "ci95": test["ci95"],
        "p_value": test["p_value"],
        "test": (f"paired sign-flip permutation test of the mean per-pair difference, flipping whole {unit} "
                 f"({how} {test['n_sign_vectors']:,} sign vectors); CI: the differences it does not reject"),
        "significant": bool(test["p_value"] < alpha),
        "min_attainable_p": test["min_p"],
        "n_clusters": test["n_clusters"],
        "bootstrap_ci95": cluster_bootstrap_ci(diff, labels, n_boot=n_boot, seed=seed, alpha=alpha),
        "bootstrap": f"percentile {bootstrap_label(clustering)}, {n_boot:,} resamples",
        "pairs_dpo_higher": int(np.sum(diff > 0)),
        "pairs_sft_higher": int(np.sum(diff < 0)),
        "mcnemar_both_orders": mcnemar,
        "mcnemar_p": mcnemar["p"] if mcnemar else None,
        "sd_pair_difference": sd,
        "design_effect": deff,
        "min_pairs_for_power80": required_pairs(sd, dpo_acc - sft_acc, deff, **kw),
        "min_pairs_for_2_points": required_pairs(sd, SUPPORT_MARGIN_POINTS / 100, deff, **kw),
        "alpha": alpha,
        "n_boot": n_boot,
        "seed": seed,
        "power": power,
        "verdict": verdict(sft_acc, dpo_acc),
    }
    out["sentence"] = verdict_sentence(out)
    return out


# --------------------------------------------------------------------------------------------
# Wording

def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def ci_text(ci) -> str:
    return "" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _signed(x: float, decimals: int = 1) -> str:
    text = f"{x:+.{decimals}f}"
    if float(text) == 0:
        text = f"{0:+.{decimals}f}"  # no "-0.0"
    return text.replace("-", _MINUS)


def _points(diff: float) -> str:
    """Signed points, with a second decimal where one decimal would hide which side of 2 we are."""
    pts = diff * 100
    one = round(pts, 1)
    if abs(one) == SUPPORT_MARGIN_POINTS and round(pts, 9) != one:
        return _signed(pts, 2)
    return _signed(pts, 1)


def format_p(p: float) -> str:
    """'p = 0.041' / 'p < 0.001' (two significant figures)."""
    if p < 0.001:
        return "p < 0.001"
    if p >= 0.995:
        return "p = 1.00"
    if p >= 0.1:
        return f"p = {p:.2f}"
    text = f"{float(f'{p:.2g}'):g}"
    if float(text) == 0.05 and p != 0.05:
        text = f"{float(f'{p:.3g}'):g}"  # 0.0496 must not read as the 0.05 threshold
    return f"p = {text}"


def _about(n: int) -> str:
    """Two significant figures for "about N" (2,941 -> 2,900)."""
    if n < 100:
        return f"{n:,}"
    digits = len(str(n)) - 2
    return f"{int(round(n, -digits)):,}"


def verdict_sentence(comparison: dict) -> str:
    """One honest sentence: verdict, accuracies, difference with CI, the paired test's p, test size."""
    c = comparison
    a_name, b_name = c.get("names") or ("SFT", "DPO")
    level = f"{100 * (1 - c.get('alpha', 0.05)):g}%"
    lo, hi = c["ci95"]
    head = (f"{c['verdict']}: {b_name} {100 * c['dpo_accuracy']:.1f}% vs {a_name} {100 * c['sft_accuracy']:.1f}% "
            f"({_points(c['difference'])} points, {level} CI {_signed(100 * lo)} to {_signed(100 * hi)})")
    unit = "pairs, no user ids" if c.get("clustering") == BY_PAIRS else "users"
    few = ""
    if c.get("min_attainable_p", 0) >= c.get("alpha", 0.05):
        few = f"; {c['n_clusters']} {unit.split(',')[0]} cannot give p < {c.get('alpha', 0.05):g}"
    sig = (("significant" if c["significant"] else "not significant")
           + f" (paired permutation test over {unit}, {format_p(c['p_value'])}{few})")
    n, need = c["n_pairs"], c["min_pairs_for_power80"]
    pw = f"{100 * c.get('power', 0.8):g}%"
    if c.get("pairs_dpo_higher", 1) + c.get("pairs_sft_higher", 1) == 0:
        tail = f"the models score identically on all {n:,} test pairs, so no test size would separate them"
    elif need is None:
        tail = "the per-pair differences average exactly 0, so no test size would detect a difference"
    elif need <= n:
        tail = (f"the {n:,} test pairs give at least {pw} power for a difference this size "
                f"(about {_about(need)} needed)")
    else:
        tail = (f"about {_about(need)} test pairs would be needed to detect a difference this size "
                f"with {pw} power (this test has {n:,})")
    return f"{head}; {sig}; {tail}."
