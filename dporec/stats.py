"""Statistics for the SFT-vs-DPO comparison: Wilson intervals, two-order metrics, exact McNemar,
a user-clustered paired bootstrap, a McNemar power calculation and the verdict.

Input: the scorer's prediction rows, one per (test pair, option order, model):

    {"model", "pair_id", "user_id", "order": "original"|"swapped", "label": "A"|"B",
     "logp_a", "logp_b",                  # decision scores ("The better recommendation is Option A/B")
     "logp_a_full", "logp_b_full",        # full answers incl. reasoning and EOS (optional)
     "choice", "correct", "choice_full", "correct_full",
     "option_a_id", "option_b_id",        # movie in each position
     optional "generated", "parsed": "A"|"B"|None}

Choices are re-derived from the log-probs (the scores are the source of truth) and checked against
the stored "choice"/"correct" fields, so a scorer bug fails loudly instead of skewing the numbers.
An exact tie (logp_a == logp_b) is choice "tie": wrong, and not a first-option pick.

Every test pair is scored in both option orders, because position bias in LLM judges is large
(NOTES.md). The headline metric is the two-order accuracy: the mean over the 2n decisions, which is
also the mean of per-pair scores in {0, 0.5, 1}.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import special
from scipy import stats as sps

ORDERS = ("original", "swapped")
LETTERS = ("A", "B")
TIE = "tie"
SUPPORT_MARGIN_POINTS = 2.0  # the research question's "meaningfully better" threshold
_REQUIRED = ("model", "pair_id", "user_id", "order", "label", "logp_a", "logp_b", "option_a_id", "option_b_id")
_MINUS = "\u2212"


# --------------------------------------------------------------------------------------------
# Intervals and small helpers
# --------------------------------------------------------------------------------------------

def wilson_ci(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (closed form)."""
    if n <= 0:
        raise ValueError(f"wilson_ci needs n > 0, got n={n}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    z = float(sps.norm.ppf(1 - alpha / 2))
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k=0 or k=n the closed form lands on the bound only up to rounding; pin it exactly.
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def _choice(la: float, lb: float, where: str) -> str:
    if math.isnan(la) or math.isnan(lb):
        raise ValueError(f"{where}: log-prob is NaN (logp_a={la}, logp_b={lb})")
    if la > lb:
        return "A"
    if lb > la:
        return "B"
    return TIE


def _where(row: dict) -> str:
    return f"model {row.get('model')!r}, pair {row.get('pair_id')!r}, order {row.get('order')!r}"


# --------------------------------------------------------------------------------------------
# Row validation and per-pair grouping
# --------------------------------------------------------------------------------------------

def _group(rows) -> dict[str, dict[str, dict]]:
    """{pair_id: {"original": row, "swapped": row}} for ONE model, after checking the contract."""
    rows = list(rows)
    if not rows:
        raise ValueError("no prediction rows")
    models = sorted({str(r.get("model")) for r in rows})
    if len(models) != 1:
        raise ValueError(f"expected rows of one model, got models {models}")
    pairs: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        missing = [k for k in _REQUIRED if k not in r]
        if missing:
            raise ValueError(f"{_where(r)}: prediction row lacks field(s) {missing}")
        if r["order"] not in ORDERS:
            raise ValueError(f"{_where(r)}: order must be one of {ORDERS}, got {r['order']!r}")
        if r["label"] not in LETTERS:
            raise ValueError(f"{_where(r)}: label must be 'A' or 'B', got {r['label']!r}")
        pid = str(r["pair_id"])
        if r["order"] in pairs[pid]:
            raise ValueError(f"{_where(r)}: duplicate row for this pair and order")
        pairs[pid][r["order"]] = r
    for pid, by_order in pairs.items():
        lacking = [o for o in ORDERS if o not in by_order]
        if lacking:
            raise ValueError(f"model {models[0]!r}, pair {pid!r}: missing the {lacking[0]!r} order; every "
                             f"test pair must be scored in both option orders")
        o, s = by_order["original"], by_order["swapped"]
        if str(o["user_id"]) != str(s["user_id"]):
            raise ValueError(f"model {models[0]!r}, pair {pid!r}: user_id differs between orders "
                             f"({o['user_id']!r} vs {s['user_id']!r})")
        if (str(o["option_a_id"]), str(o["option_b_id"])) != (str(s["option_b_id"]), str(s["option_a_id"])):
            raise ValueError(f"model {models[0]!r}, pair {pid!r}: the swapped order must exchange the two "
                             f"movies (original A={o['option_a_id']!r}, B={o['option_b_id']!r}; swapped "
                             f"A={s['option_a_id']!r}, B={s['option_b_id']!r})")
        if _movie(o, o["label"]) != _movie(s, s["label"]):
            raise ValueError(f"model {models[0]!r}, pair {pid!r}: the correct movie differs between orders "
                             f"({_movie(o, o['label'])!r} vs {_movie(s, s['label'])!r})")
    return dict(pairs)


def _movie(row: dict, letter: str) -> str | None:
    if letter == "A":
        return str(row["option_a_id"])
    if letter == "B":
        return str(row["option_b_id"])
    return None  # a tie or an unparsable output picks no movie


def _decision(row: dict, kind: str) -> tuple[str, bool, float]:
    """(choice, correct, margin) of one row; kind 'decision' or 'full'. Checks the stored fields."""
    suffix = "" if kind == "decision" else "_full"
    la, lb = float(row["logp_a" + suffix]), float(row["logp_b" + suffix])
    choice = _choice(la, lb, _where(row))
    correct = choice == row["label"]
    stored_choice, stored_correct = row.get("choice" + suffix), row.get("correct" + suffix)
    if stored_choice is not None and stored_choice != choice:
        raise ValueError(f"{_where(row)}: stored choice{suffix}={stored_choice!r} disagrees with the scores "
                         f"(logp_a{suffix}={la}, logp_b{suffix}={lb} -> {choice!r}; exact ties must be 'tie')")
    if stored_correct is not None and bool(stored_correct) != correct:
        raise ValueError(f"{_where(row)}: stored correct{suffix}={stored_correct!r} disagrees with the scores")
    margin = (la - lb) if row["label"] == "A" else (lb - la)
    return choice, correct, margin


def _has_full(rows) -> bool:
    flags = {("logp_a_full" in r and "logp_b_full" in r) for r in rows}
    if len(flags) > 1:
        raise ValueError("some prediction rows have full-answer scores (logp_a_full/logp_b_full) and some do not")
    return flags == {True}


def _has_generation(rows) -> bool:
    flags = {"parsed" in r for r in rows}
    if len(flags) > 1:
        raise ValueError("some prediction rows have a 'parsed' generation field and some do not")
    return flags == {True}


# --------------------------------------------------------------------------------------------
# Per-model metrics
# --------------------------------------------------------------------------------------------

def _accuracy_block(pairs: dict, kind: str, alpha: float) -> dict:
    n = len(pairs)
    correct = {o: 0 for o in ORDERS}
    both = consistent = first = ties = 0
    margins = []
    for by_order in pairs.values():
        picked = {}
        ok = {}
        for o in ORDERS:
            row = by_order[o]
            choice, is_correct, margin = _decision(row, kind)
            correct[o] += is_correct
            ok[o] = is_correct
            first += choice == "A"
            ties += choice == TIE
            picked[o] = _movie(row, choice)
            margins.append(margin)
        both += ok["original"] and ok["swapped"]
        consistent += picked["original"] is not None and picked["original"] == picked["swapped"]
    k = correct["original"] + correct["swapped"]
    m = np.asarray(margins, dtype=float)
    return {
        "accuracy": k / (2 * n),
        # Wilson over the 2n decisions treats the two orders of a pair as independent; they are
        # positively correlated, so this interval is somewhat too narrow. compare() clusters properly.
        "accuracy_ci95": wilson_ci(k, 2 * n, alpha),
        "accuracy_original_order": correct["original"] / n,
        "accuracy_original_order_ci95": wilson_ci(correct["original"], n, alpha),
        "accuracy_swapped_order": correct["swapped"] / n,
        "accuracy_swapped_order_ci95": wilson_ci(correct["swapped"], n, alpha),
        "accuracy_both_orders": both / n,
        "accuracy_both_orders_ci95": wilson_ci(both, n, alpha),
        "consistency": consistent / n,
        "first_option_rate": first / (2 * n),
        "confidence": {
            "mean_margin": float(np.mean(m)),
            "median_margin": float(np.median(m)),
            # sigmoid(margin) is the probability of the right letter when the choice is restricted to A/B
            "mean_prob_correct": float(np.mean(special.expit(m))),
        },
        "counts": {"decisions": 2 * n, "correct": k, "ties": ties},
    }


def _generation_block(pairs: dict, alpha: float) -> dict:
    n = len(pairs)
    valid = correct = first = consistent = 0
    for by_order in pairs.values():
        picked = {}
        for o in ORDERS:
            row = by_order[o]
            parsed = row["parsed"]
            if parsed not in (None, "A", "B"):
                raise ValueError(f"{_where(row)}: parsed must be 'A', 'B' or null, got {parsed!r}")
            valid += parsed is not None
            correct += parsed == row["label"]
            first += parsed == "A"
            picked[o] = _movie(row, parsed)
        consistent += picked["original"] is not None and picked["original"] == picked["swapped"]
    return {
        "valid_rate": valid / (2 * n),
        "accuracy": correct / (2 * n),  # invalid outputs count as wrong
        "accuracy_ci95": wilson_ci(correct, 2 * n, alpha),
        "accuracy_among_valid": (correct / valid) if valid else None,
        "consistency": consistent / n,
        "first_option_rate": first / (2 * n),
        "counts": {"decisions": 2 * n, "valid": valid, "correct": correct},
    }


def model_metrics(rows, alpha: float = 0.05) -> dict:
    """Metrics for one model's prediction rows (both orders of every pair required).

    Keys: model, n_pairs, n_users, accuracy, accuracy_ci95, accuracy_{original,swapped,both}_order(s)
    (+ _ci95), consistency, first_option_rate, confidence{mean_margin, median_margin,
    mean_prob_correct}, counts{decisions, correct, ties}, full_answer (same accuracy block from the
    full-answer scores, or None), generation (or None).
    """
    rows = list(rows)
    pairs = _group(rows)
    out = {
        "model": str(rows[0]["model"]),
        "n_pairs": len(pairs),
        "n_users": len({str(p["original"]["user_id"]) for p in pairs.values()}),
    }
    out.update(_accuracy_block(pairs, "decision", alpha))
    out["full_answer"] = _accuracy_block(pairs, "full", alpha) if _has_full(rows) else None
    out["generation"] = _generation_block(pairs, alpha) if _has_generation(rows) else None
    return out


def per_pair_scores(rows, kind: str = "decision") -> tuple[dict[str, float], dict[str, str]]:
    """({pair_id: two-order score in {0, 0.5, 1}}, {pair_id: user_id}) for one model.

    kind: "decision" (default) or "full" (full-answer scores)."""
    if kind not in ("decision", "full"):
        raise ValueError(f"kind must be 'decision' or 'full', got {kind!r}")
    pairs = _group(rows)
    scores, users = {}, {}
    for pid, by_order in pairs.items():
        scores[pid] = sum(_decision(by_order[o], kind)[1] for o in ORDERS) / 2
        users[pid] = str(by_order["original"]["user_id"])
    return scores, users


def margins(rows, kind: str = "decision") -> np.ndarray:
    """Per-decision margins logp[correct] - logp[wrong] (2n values) for one model; kind as above."""
    if kind not in ("decision", "full"):
        raise ValueError(f"kind must be 'decision' or 'full', got {kind!r}")
    pairs = _group(rows)
    return np.array([_decision(by_order[o], kind)[2] for by_order in pairs.values() for o in ORDERS])


# --------------------------------------------------------------------------------------------
# Comparison: bootstrap, McNemar, power, verdict
# --------------------------------------------------------------------------------------------

def cluster_bootstrap_ci(values, clusters, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                         chunk: int = 250) -> tuple[float, float]:
    """Percentile CI of mean(values) resampling CLUSTERS with replacement (all items of a drawn
    cluster come along). Pass one cluster per item for the ordinary item bootstrap."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("cluster_bootstrap_ci needs at least one value")
    _, inv = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    if inv.size != v.size:
        raise ValueError(f"{v.size} values but {inv.size} cluster labels")
    sums = np.bincount(inv, weights=v)
    sizes = np.bincount(inv).astype(float)
    n_clusters = sums.size
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    # Chunked so ML-1M-sized user counts do not need an n_boot x n_users matrix at once.
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n_clusters, size=(stop - start, n_clusters))
        stats[start:stop] = sums[idx].sum(axis=1) / sizes[idx].sum(axis=1)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts b and c (binomial, p=0.5)."""
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(b, b + c, 0.5).pvalue)


def required_pairs_mcnemar(p_discordant: float, delta: float, alpha: float = 0.05,
                           power: float = 0.8) -> int | None:
    """Connor (1987) sample size for McNemar's test:
    n = [z_{1-a/2} sqrt(p_d) + z_{power} sqrt(p_d - delta^2)]^2 / delta^2, rounded up.
    p_d: fraction of discordant pairs; delta: difference of the two one-sided discordant fractions.
    None when delta == 0 (no difference to detect)."""
    if delta == 0:
        return None
    if not 0 < p_discordant <= 1 or delta * delta > p_discordant + 1e-12:
        raise ValueError(f"need 0 < delta^2 <= p_discordant <= 1, got p_d={p_discordant}, delta={delta}")
    za = float(sps.norm.ppf(1 - alpha / 2))
    zb = float(sps.norm.ppf(power))
    n = (za * math.sqrt(p_discordant) + zb * math.sqrt(max(0.0, p_discordant - delta * delta))) ** 2 / delta ** 2
    return int(math.ceil(round(n, 9)))


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


def compare(rows_sft, rows_dpo, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
            power: float = 0.8) -> dict:
    """Paired SFT-vs-DPO comparison on the same test pairs (two-order per-pair scores).

    Keys: n_pairs, n_users, sft_accuracy, dpo_accuracy, difference (dpo - sft), ci95 (user-clustered
    paired bootstrap, percentile), mcnemar_p, n_discordant{dpo_better, sft_better},
    discordant_fraction, win_difference, significant, alpha, n_boot, seed, min_pairs_for_power80,
    verdict, sentence.
    """
    s_scores, s_users = per_pair_scores(rows_sft)
    d_scores, d_users = per_pair_scores(rows_dpo)
    if set(s_scores) != set(d_scores):
        only_s = sorted(set(s_scores) - set(d_scores))
        only_d = sorted(set(d_scores) - set(s_scores))
        raise ValueError(f"SFT and DPO were scored on different test pairs: {len(only_s)} only in SFT "
                         f"(e.g. {only_s[:3]}), {len(only_d)} only in DPO (e.g. {only_d[:3]})")
    pids = sorted(s_scores)
    for pid in pids:
        if s_users[pid] != d_users[pid]:
            raise ValueError(f"pair {pid!r}: user_id {s_users[pid]!r} in SFT rows but {d_users[pid]!r} in DPO rows")
    s = np.array([s_scores[p] for p in pids])
    d = np.array([d_scores[p] for p in pids])
    users = [s_users[p] for p in pids]
    diff_per_pair = d - s
    n = len(pids)
    # Pairs of one user share a history, so their outcomes are correlated: resample users, not pairs.
    ci = cluster_bootstrap_ci(diff_per_pair, users, n_boot=n_boot, seed=seed, alpha=alpha)
    # Discordant = the two models' two-order scores differ. Counting which model scores higher and
    # testing against Binomial(b+c, 0.5) is the exact sign test on paired scores; when per-pair
    # outcomes are binary (both orders agree) it is exactly McNemar's exact test.
    b = int(np.sum(diff_per_pair > 0))
    c = int(np.sum(diff_per_pair < 0))
    p = mcnemar_exact_p(b, c)
    p_d = (b + c) / n
    delta = (b - c) / n
    sft_acc, dpo_acc = float(s.mean()), float(d.mean())
    out = {
        "n_pairs": n,
        "n_users": len(set(users)),
        "sft_accuracy": sft_acc,
        "dpo_accuracy": dpo_acc,
        "difference": dpo_acc - sft_acc,
        "ci95": ci,
        "mcnemar_p": p,
        "n_discordant": {"dpo_better": b, "sft_better": c},
        "discordant_fraction": p_d,
        "win_difference": delta,
        "significant": bool(p < alpha),
        "alpha": alpha,
        "n_boot": n_boot,
        "seed": seed,
        "power": power,
        # From the observed discordance; on a small test set this estimate is itself noisy.
        "min_pairs_for_power80": required_pairs_mcnemar(p_d, delta, alpha, power) if b + c else None,
        "verdict": verdict(sft_acc, dpo_acc),
    }
    out["sentence"] = verdict_sentence(out)
    return out


# --------------------------------------------------------------------------------------------
# Wording
# --------------------------------------------------------------------------------------------

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
    """One honest sentence: verdict, accuracies, difference with CI, McNemar p, power."""
    c = comparison
    level = f"{100 * (1 - c.get('alpha', 0.05)):g}%"
    lo, hi = c["ci95"]
    head = (f"{c['verdict']}: DPO {100 * c['dpo_accuracy']:.1f}% vs SFT {100 * c['sft_accuracy']:.1f}% "
            f"({_points(c['difference'])} points, {level} CI {_signed(100 * lo)} to {_signed(100 * hi)})")
    sig = ("significant" if c["significant"] else "not significant") + f" (McNemar {format_p(c['mcnemar_p'])})"
    n, need = c["n_pairs"], c["min_pairs_for_power80"]
    disc = c["n_discordant"]
    pw = f"{100 * c.get('power', 0.8):g}%"
    if disc["dpo_better"] + disc["sft_better"] == 0:
        tail = f"the models score identically on all {n:,} test pairs, so no test size would separate them"
    elif need is None:
        tail = "DPO and SFT each win equally many discordant pairs, so no test size would detect a difference"
    elif need <= n:
        tail = (f"the {n:,} test pairs give at least {pw} power for a difference this size "
                f"(about {_about(need)} needed)")
    else:
        tail = (f"about {_about(need)} test pairs would be needed to detect a difference this size "
                f"with {pw} power (this test has {n:,})")
    return f"{head}; {sig}; {tail}."
