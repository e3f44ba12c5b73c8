"""Per-model metrics from the scorer's prediction rows: the row contract, per-pair outcomes and
two-order accuracy with user-clustered bootstrap intervals.

Input: one row per (test pair, option order, model):

    {"model", "pair_id", "order": "original"|"swapped", "label": "A"|"B",
     "logp_a", "logp_b",                  # decision scores ("The better recommendation is Option A/B")
     "user_id",                           # optional: absent, empty or equal to pair_id = no user id
     "option_a_id", "option_b_id",        # optional: movie in each position (checked when present)
     "logp_a_full", "logp_b_full",        # full answers incl. reasoning and EOS (optional)
     "choice", "correct", "choice_full", "correct_full",
     optional "generated", "parsed": "A"|"B"|None}

Choices are re-derived from the log-probs (the scores are the source of truth) and checked against
the stored "choice"/"correct" fields, so a scorer bug fails loudly instead of skewing the numbers.
An exact tie (logp_a == logp_b) is choice "tie": half right (0.5 for that order, as a rule's tie), and
not a first-option pick.

Every test pair is scored in both option orders because position bias in LLM judges is large. The
headline metric is the two-order accuracy: the mean of per-pair scores in {0, 0.5, 1} (quarters where an
order ties). Position-free accuracy (the sign of the margin averaged over both orders) is reported beside
it: two-order accuracy also rewards a lower position bias. Pairs of one
user share a history, so every interval resamples users; without user ids it resamples pairs and says so.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import special

from dporec.analysis.resampling import cluster_bootstrap_ci
from dporec.data.task import LETTERS, ORDERS

TIE = "tie"
_REQUIRED = ("model", "pair_id", "order", "label", "logp_a", "logp_b")
BY_USERS = "users"
BY_PAIRS = "pairs (no user ids)"


def _where(row: dict) -> str:
    return f"model {row.get('model')!r}, pair {row.get('pair_id')!r}, order {row.get('order')!r}"


def user_of(row: dict) -> str | None:
    """The row's user id, or None when it has none (absent, empty, or the scorer's pair-id stand-in)."""
    u = row.get("user_id")
    if u is None or str(u) == "" or str(u) == str(row["pair_id"]):
        return None
    return str(u)


def _has_ids(row: dict) -> bool:
    return all(row.get(k) not in (None, "") for k in ("option_a_id", "option_b_id"))


def group(rows) -> dict[str, dict[str, dict]]:
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
        if user_of(o) != user_of(s):
            raise ValueError(f"model {models[0]!r}, pair {pid!r}: user_id differs between orders "
                             f"({o.get('user_id')!r} vs {s.get('user_id')!r})")
        if o["label"] == s["label"]:
            raise ValueError(f"model {models[0]!r}, pair {pid!r}: the label must change letter between the "
                             f"orders (swapping the options moves the right movie), got {o['label']!r} twice")
        if _has_ids(o) and _has_ids(s):
            swapped = (str(s["option_b_id"]), str(s["option_a_id"]))
            if (str(o["option_a_id"]), str(o["option_b_id"])) != swapped:
                raise ValueError(f"model {models[0]!r}, pair {pid!r}: the swapped order must exchange the "
                                 f"two movies (original A={o['option_a_id']!r}, B={o['option_b_id']!r}; "
                                 f"swapped A={s['option_a_id']!r}, B={s['option_b_id']!r})")
    return dict(pairs)


def _choice(la: float, lb: float, where: str) -> str:
    if math.isnan(la) or math.isnan(lb):
        raise ValueError(f"{where}: log-prob is NaN (logp_a={la}, logp_b={lb})")
    return "A" if la > lb else "B" if lb > la else TIE


def decision(row: dict, kind: str) -> tuple[str, bool, float]:
    """(choice, correct, margin) of one row; kind 'decision' or 'full'. Checks the stored fields."""
    suffix = "" if kind == "decision" else "_full"
    la, lb = float(row["logp_a" + suffix]), float(row["logp_b" + suffix])
    choice = _choice(la, lb, _where(row))
    correct = choice == row["label"]
    stored_choice, stored_correct = row.get("choice" + suffix), row.get("correct" + suffix)
    if stored_choice is not None and stored_choice != choice:
        raise ValueError(f"{_where(row)}: stored choice{suffix}={stored_choice!r} disagrees with the scores "
                         f"(logp_a{suffix}={la}, logp_b{suffix}={lb} -> {choice!r}; "
                         f"exact ties must be 'tie')")
    if stored_correct is not None and bool(stored_correct) != correct:
        raise ValueError(f"{_where(row)}: stored correct{suffix}={stored_correct!r} disagrees with the "
                         f"scores")
    margin = (la - lb) if row["label"] == "A" else (lb - la)
    return choice, correct, margin


def _picked(row: dict, letter) -> str | None:
    """Which movie a letter picks, as 'right'/'wrong' (the right movie is the same in both orders);
    None for a tie or an unparsable answer."""
    if letter not in LETTERS:
        return None
    return "right" if letter == row["label"] else "wrong"


def _all_or_none(rows, keys, what) -> bool:
    flags = {all(k in r for k in keys) for r in rows}
    if len(flags) > 1:
        raise ValueError(f"some prediction rows have {what} and some do not")
    return flags == {True}


# --------------------------------------------------------------------------------------------
# Clusters

def clusters(users: dict[str, str | None]) -> tuple[list[str], str]:
    """(one cluster label per pair, in sorted pair order; how pairs were clustered).

    A pair without a user id is its own cluster. All pairs without: "pairs (no user ids)"."""
    pids = sorted(users)
    labels = [f"user:{users[p]}" if users[p] is not None else f"pair:{p}" for p in pids]
    lacking = sum(users[p] is None for p in pids)
    if lacking == len(pids):
        return labels, BY_PAIRS
    if lacking:
        return labels, f"users ({lacking} pairs without a user id count as their own cluster)"
    return labels, BY_USERS


def bootstrap_label(clustering: str) -> str:
    return "bootstrap over pairs (no user ids)" if clustering == BY_PAIRS else "bootstrap over users"


# --------------------------------------------------------------------------------------------
# Per-pair outcomes and per-model metrics

def pair_outcomes(pairs: dict, kind: str) -> dict[str, np.ndarray]:
    """Per pair (sorted pair ids): score (two-order, 0/0.5/1; a tied order 0.5), original, swapped (each
    order's credit), both (right in both, 0/1), position_free (sign of the two orders' mean margin),
    consistent (same movie chosen in both orders), first (A picks, 0-2), ties (0-2), margins (n x 2)."""
    out = {k: [] for k in ("score", "original", "swapped", "both", "position_free", "consistent", "first",
                           "ties", "margins")}
    for pid in sorted(pairs):
        res = {o: decision(pairs[pid][o], kind) for o in ORDERS}
        ok = [res[o][1] for o in ORDERS]
        # an exact tie is half right, as a rule's tie is: a tie scored 0 would make a model that ties
        # more often look worse than an identical one
        credit = [1.0 if res[o][1] else 0.5 if res[o][0] == TIE else 0.0 for o in ORDERS]
        picked = [_picked(pairs[pid][o], res[o][0]) for o in ORDERS]
        out["score"].append(sum(credit) / 2)
        out["original"].append(credit[0])
        out["swapped"].append(credit[1])
        out["both"].append(float(all(ok)))
        # the sign of the margin averaged over both orders: position bias cancels before the decision
        mean_margin = (res[ORDERS[0]][2] + res[ORDERS[1]][2]) / 2
        out["position_free"].append(1.0 if mean_margin > 0 else 0.5 if mean_margin == 0 else 0.0)
        out["consistent"].append(float(picked[0] is not None and picked[0] == picked[1]))
        out["first"].append(sum(res[o][0] == "A" for o in ORDERS))
        out["ties"].append(sum(res[o][0] == TIE for o in ORDERS))
        out["margins"].append([res[o][2] for o in ORDERS])
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def _accuracy_block(pairs: dict, kind: str, labels, alpha, n_boot, seed) -> dict:
    po = pair_outcomes(pairs, kind)
    n = len(pairs)
    cols = ("score", "original", "swapped", "both", "position_free")
    cis = cluster_bootstrap_ci(np.column_stack([po[c] for c in cols]), labels, n_boot=n_boot, seed=seed,
                               alpha=alpha)
    m = po["margins"].ravel()
    return {
        "accuracy": float(po["score"].mean()),
        "accuracy_ci": cis[0],
        "accuracy_original_order": float(po["original"].mean()),
        "accuracy_original_order_ci": cis[1],
        "accuracy_swapped_order": float(po["swapped"].mean()),
        "accuracy_swapped_order_ci": cis[2],
        "accuracy_both_orders": float(po["both"].mean()),
        "accuracy_both_orders_ci": cis[3],
        "position_free_accuracy": float(po["position_free"].mean()),
        "position_free_accuracy_ci": cis[4],
        "consistency": float(po["consistent"].mean()),
        "first_option_rate": float(po["first"].sum() / (2 * n)),
        "confidence": {
            "mean_margin": float(np.mean(m)),
            "median_margin": float(np.median(m)),
            # sigmoid(margin) is the probability of the right letter when the choice is restricted to A/B
            "mean_prob_correct": float(np.mean(special.expit(m))),
        },
        "counts": {"decisions": 2 * n, "ties": int(po["ties"].sum()),
                   "correct": int((po["original"] == 1).sum() + (po["swapped"] == 1).sum())},
    }


def _generation_block(pairs: dict, labels, alpha, n_boot, seed) -> dict:
    n = len(pairs)
    score, valid, first, consistent = [], 0, 0, 0
    for pid in sorted(pairs):
        picked = []
        for o in ORDERS:
            row = pairs[pid][o]
            parsed = row["parsed"]
            if parsed not in (None, "A", "B"):
                raise ValueError(f"{_where(row)}: parsed must be 'A', 'B' or null, got {parsed!r}")
            valid += parsed is not None
            first += parsed == "A"
            picked.append(_picked(row, parsed))
        score.append(sum(p == "right" for p in picked) / 2)
        consistent += picked[0] is not None and picked[0] == picked[1]
    correct = int(round(2 * sum(score)))
    return {
        "valid_rate": valid / (2 * n),
        "accuracy": correct / (2 * n),  # invalid outputs count as wrong
        "accuracy_ci": cluster_bootstrap_ci(score, labels, n_boot=n_boot, seed=seed, alpha=alpha),
        "accuracy_among_valid": (correct / valid) if valid else None,
        "consistency": consistent / n,
        "first_option_rate": first / (2 * n),
        "counts": {"decisions": 2 * n, "valid": valid, "correct": correct},
    }


def model_metrics(rows, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict:
    """Metrics for one model's prediction rows (both orders of every pair required).

    Keys: model, n_pairs, n_users, clustering, alpha (1 - the intervals' level), accuracy, accuracy_ci
    (percentile bootstrap of the
    per-pair scores resampling users), accuracy_{original,swapped,both}_order(s) (+ _ci),
    consistency, first_option_rate, confidence{mean_margin, median_margin, mean_prob_correct},
    counts{decisions, correct, ties}, full_answer (same block from the full-answer scores, or
    None), generation (or None).
    """
    rows = list(rows)
    pairs = group(rows)
    users = {pid: user_of(p["original"]) for pid, p in pairs.items()}
    labels, clustering = clusters(users)
    kw = dict(alpha=alpha, n_boot=n_boot, seed=seed)
    out = {
        "model": str(rows[0]["model"]),
        "n_pairs": len(pairs),
        "n_users": len({u for u in users.values() if u is not None}),
        "clustering": clustering,
        "interval": f"percentile {bootstrap_label(clustering)}, {n_boot} resamples",
        "alpha": alpha,
    }
    out.update(_accuracy_block(pairs, "decision", labels, **kw))
    has_full = _all_or_none(rows, ("logp_a_full", "logp_b_full"), "full-answer scores "
                                                                  "(logp_a_full/logp_b_full)")
    out["full_answer"] = _accuracy_block(pairs, "full", labels, **kw) if has_full else None
    has_gen = _all_or_none(rows, ("parsed",), "a 'parsed' generation field")
    out["generation"] = _generation_block(pairs, labels, **kw) if has_gen else None
    return out


def per_pair_scores(rows, kind: str = "decision") -> tuple[dict[str, float], dict[str, str | None]]:
    """({pair_id: two-order score in {0, 0.5, 1}}, {pair_id: user_id or None}) for one model."""
    if kind not in ("decision", "full"):
        raise ValueError(f"kind must be 'decision' or 'full', got {kind!r}")
    pairs = group(rows)
    po = pair_outcomes(pairs, kind)
    pids = sorted(pairs)
    return ({p: float(s) for p, s in zip(pids, po["score"])},
            {p: user_of(pairs[p]["original"]) for p in pids})


def decisions(rows, kind: str = "decision") -> dict[tuple[str, str], str]:
    """{(pair_id, order): the option chosen, "A", "B" or "tie"} for one model."""
    pairs = group(rows)
    return {(pid, o): decision(pairs[pid][o], kind)[0] for pid in sorted(pairs) for o in ORDERS}


def margins(rows, kind: str = "decision") -> np.ndarray:
    """Per-decision margins logp[correct] - logp[wrong] (2n values) for one model; kind as above."""
    if kind not in ("decision", "full"):
        raise ValueError(f"kind must be 'decision' or 'full', got {kind!r}")
    return pair_outcomes(group(rows), kind)["margins"].ravel()
