"""Ranking adherence: how well a model's pairwise choices order one user's N rated candidates.

For each candidate set (dporec.candidates: a test user's history and N movies the user rated later),
every pair of candidates is asked as the usual A/B question, in both option orders, and scored with the
evaluator's likelihood decision (scoring.decision_margins: logp of "... Option A" minus "... Option B").
The pair's preference is the position-free mean of the two orders,

    pref(i over j) = (margin(i as A, j as B) - margin(j as A, i as B)) / 2,

so a model that always says "A" prefers nothing. The N x N preferences become a ranking by COPELAND:
a movie's score is the number of others it beats (ties 1/2), remaining ties broken by its summed
preference margin. Why not Bradley-Terry: BT's maximum-likelihood strengths do not exist when the
preferences are perfectly consistent (a strict order: the common case for a rule-like model), they
need the model's log-odds to be calibrated probabilities (they are not: one token's logit after a
prompt), and they add an iterative fit; Copeland uses only each pair's direction and is exact.

Against the user's actual ratings (ties allowed) per set:
  kendall_tau_b  Kendall's tau-b between the ranking and the ratings (scipy; ties in either handled);
                 a ranking with no order at all (every score equal) counts as 0
  ndcg@3         DCG of the top 3 with gain = rating, over the ideal; tied scores get their group's mean
                 gain (the expectation over random tie-breaking)
  hit@1          the top-ranked movie is one the user rated >= 4 (tied top: the share of such movies)
Chance levels are exact expectations under a random order. Per model: the mean over users with a
user bootstrap CI; DPO vs SFT: the per-user difference, with the paired sign-flip test over users and
its CI (dporec.stats), as for the pair accuracy. The baselines (dporec.baselines: mean rating and
popularity among training users, genre overlap, item co-occurrence) rank by their number directly.
"""
from __future__ import annotations

import csv
import math
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from . import baselines, candidates, stats
from . import data as D
from .movielens import pair_input

METRICS = ("kendall_tau_b", "ndcg@3", "hit@1")
LIKED = 4          # hit@1: rated at least this
TOP_K = 3          # ndcg@3
RULES = ("mean_rating", "popularity", "genre_overlap", "item_cf")


# ---------------------------------------------------------------------------------------------
# Pairs and preferences

def pair_examples(cset: dict) -> list[D.Example]:
    """One A/B example per unordered pair i < j (i as Option A): the builder's own prompt text."""
    hist = [candidates.movie(m) for m in cset["history"]]
    movies = [candidates.movie(m) for m in cset["candidates"]]
    out = []
    for i, j in combinations(range(len(movies)), 2):
        a, b = movies[i], movies[j]
        label = "A" if cset["candidates"][i]["rating"] >= cset["candidates"][j]["rating"] else "B"
        out.append(D.Example(instruction=D.INSTRUCTION, input=pair_input(hist, a, b),
                             output=D.answer_text(label), label=label, option_a=f"{a.display}.",
                             option_b=f"{b.display}.", reasoning="", pair_id=f"{cset['id']}:{i}-{j}",
                             user_id=cset["user_id"]))
    return out


def preferences(margins: list[tuple[float, float]], n: int) -> np.ndarray:
    """N x N antisymmetric matrix: pref[i, j] > 0 when i is preferred over j, position bias averaged out."""
    pref = np.zeros((n, n))
    for (i, j), (orig, swapped) in zip(combinations(range(n), 2), margins):
        pref[i, j] = (orig - swapped) / 2
        pref[j, i] = -pref[i, j]
    return pref


def copeland(pref: np.ndarray) -> np.ndarray:
    """A score per item that orders by Copeland wins (ties 1/2), then by summed margin; equal only when both are."""
    wins = (pref > 0).sum(1) + 0.5 * ((pref == 0).sum(1) - 1)  # minus the diagonal
    margin = pref.sum(1)
    keys = sorted(set(zip(wins, margin)))
    return np.array([keys.index(k) for k in zip(wins, margin)], dtype=float)


# ---------------------------------------------------------------------------------------------
# Metrics of one ranking

def kendall_tau_b(scores, ratings) -> float:
    from scipy.stats import kendalltau
    scores, ratings = np.asarray(scores, float), np.asarray(ratings, float)
    if np.ptp(scores) == 0:
        return 0.0  # no order at all: no adherence either way
    return float(kendalltau(scores, ratings).statistic)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(scores, ratings, k: int = TOP_K) -> float:
    scores, gains = np.asarray(scores, float), np.asarray(ratings, float)
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


def hit_at_1(scores, ratings) -> float:
    scores, ratings = np.asarray(scores, float), np.asarray(ratings, float)
    return float((ratings[scores == scores.max()] >= LIKED).mean())


def metrics(scores, ratings) -> dict[str, float]:
    return {"kendall_tau_b": kendall_tau_b(scores, ratings), "ndcg@3": ndcg_at_k(scores, ratings),
            "hit@1": hit_at_1(scores, ratings)}


def chance(ratings) -> dict[str, float]:
    """Each metric's expectation under a uniformly random order."""
    gains = np.asarray(ratings, float)
    k = min(TOP_K, len(gains))
    ideal = (np.sort(gains)[::-1][:k] * _discounts(k)).sum()
    return {"kendall_tau_b": 0.0, "ndcg@3": float(gains.mean() * _discounts(k).sum() / ideal) if ideal else 0.0,
            "hit@1": float((gains >= LIKED).mean())}


# ---------------------------------------------------------------------------------------------
# Scoring every model, and the baselines

def _ratings(cset) -> list[float]:
    return [c["rating"] for c in cset["candidates"]]


def score_model(model, tok, sets: list[dict], fmt: str, batch_size: int, name: str) -> list[dict]:
    """Per set: {"user_id", "scores": Copeland scores, **metrics}."""
    from . import scoring
    margins = scoring.decision_margins(model, tok, [pair_examples(s) for s in sets], fmt, batch_size,
                                       desc=f"ranking {name}")
    out = []
    for s, m in zip(sets, margins):
        scores = copeland(preferences(m, len(s["candidates"])))
        out.append({"user_id": s["user_id"], "scores": scores.tolist(), **metrics(scores, _ratings(s))})
    return out


def score_models(model, tok, sets, adapters: dict, cfg: dict, active) -> tuple[dict, dict]:
    """({model: per-set rows}, {model: seconds}); `active(model, name, adapters)` switches adapters."""
    rows, seconds = {}, {}
    for name in adapters:
        t0 = time.perf_counter()
        with active(model, name, adapters):
            rows[name] = score_model(model, tok, sets, cfg["data"]["prompt_format"], cfg["eval"]["batch_size"], name)
        seconds[name] = time.perf_counter() - t0
        print(f"[eval] {name}: ranked {len(sets)} users' candidates "
              f"({sum(math.comb(len(s['candidates']), 2) for s in sets)} pairs x 2 orders) in {seconds[name]:.1f}s")
    return rows, seconds


def baseline_rows(sets, train_file) -> dict[str, list[dict] | str]:
    """{rule: per-set rows} or {rule: why it is not available}, each rule ranking by its own number."""
    side, side_reason = baselines.find_side(train_file)
    # per set, per candidate: every rule's number ({rule: value}), computed once
    values = [[baselines.option_values(s["history"], c, side) for c in s["candidates"]] for s in sets]
    out = {}
    for rule in RULES:
        per_set = [[v[rule] for v in vs] for vs in values]
        if any(None in v for v in per_set):  # the files lack what the rule needs
            out[rule] = baselines.why_missing(rule, side_reason)
            continue
        out[rule] = [{"user_id": s["user_id"], "scores": v, **metrics(v, _ratings(s))} for s, v in zip(sets, per_set)]
    return out


# ---------------------------------------------------------------------------------------------
# Into results.json, a CSV, the report

def _summary(rows, n_boot, seed, alpha) -> dict:
    users = [r["user_id"] for r in rows]
    out = {}
    for m in METRICS:
        v = [r[m] for r in rows]
        lo, hi = stats.cluster_bootstrap_ci(v, users, n_boot=n_boot, seed=seed, alpha=alpha)
        out[m] = {"mean": float(np.mean(v)), "ci": [lo, hi]}
    return out


def compare(rows_a, rows_b, n_perm, seed, alpha) -> dict:
    """b minus a per user (paired): mean difference, sign-flip p-value and the CI that inverts it."""
    by_user = {r["user_id"]: r for r in rows_a}
    out = {}
    for m in METRICS:
        users = [r["user_id"] for r in rows_b if r["user_id"] in by_user]
        diffs = [r[m] - by_user[r["user_id"]][m] for r in rows_b if r["user_id"] in by_user]
        bound = 2.0 if m == "kendall_tau_b" else 1.0
        t = stats.sign_flip_test(diffs, users, n_perm=n_perm, seed=seed, alpha=alpha, bounds=(-bound, bound))
        out[m] = {"difference": float(np.mean(diffs)), "ci": list(t["ci95"]), "p_value": t["p_value"]}
    return out


def results(sets, rows: dict, base_rows: dict, seconds: dict, cfg: dict, path) -> dict:
    ec, seed = cfg["eval"], cfg["seed"]
    n_boot, alpha = ec["bootstrap_samples"], ec["alpha"]
    out = {"file": str(path), "n_users": len(sets), "candidates_per_user": sorted({len(s["candidates"]) for s in sets}),
           "method": "copeland (ties: summed margin), both option orders", "liked": LIKED,
           "chance": {m: float(np.mean([chance(_ratings(s))[m] for s in sets])) for m in METRICS},
           "models": {n: _summary(r, n_boot, seed, alpha) for n, r in rows.items()},
           "baselines": {rule: (_summary(r, n_boot, seed, alpha) | {"label": baselines.LABELS[rule]}
                                if isinstance(r, list) else {"label": baselines.LABELS[rule], "available": False,
                                                             "reason": r})
                         for rule, r in base_rows.items()},
           "seconds_per_model": {n: round(s, 1) for n, s in seconds.items()}}
    if "sft" in rows and "dpo" in rows:
        out["comparison"] = {"a": "sft", "b": "dpo", **compare(rows["sft"], rows["dpo"], n_boot, seed, alpha)}
    return out


def write_csv(path: Path, rows: dict, base_rows: dict) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ranker", "user_id", *METRICS, "scores"])
        for name, rs in [*rows.items(), *((k, v) for k, v in base_rows.items() if isinstance(v, list))]:
            for r in rs:
                w.writerow([name, r["user_id"], *(f"{r[m]:.6f}" for m in METRICS),
                            " ".join(f"{x:.6g}" for x in r["scores"])])


def _cell(s: dict, m: str) -> str:
    x = s[m]
    return f"{x['mean']:+.3f} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]" if m == "kendall_tau_b" else \
        f"{stats.pct(x['mean'])} {stats.ci_text(x['ci'])}"


def table_lines(r: dict) -> list[str]:
    """Console/markdown-neutral lines: one row per model and available baseline, then chance."""
    head = f"{'ranker':<50} {'Kendall tau-b':>26} {'NDCG@3':>20} {'hit@1':>20}"
    lines = [f"Ranking adherence: {r['n_users']} test users x {'/'.join(map(str, r['candidates_per_user']))} "
             f"candidates, {r['method']}", head]
    for name, s in r["models"].items():
        lines.append(f"{name:<50} " + " ".join(f"{_cell(s, m):>{w}}" for m, w in zip(METRICS, (26, 20, 20))))
    for rule, s in r["baselines"].items():
        label = f"rule: {s['label']}"[:50]
        if s.get("available", True):
            lines.append(f"{label:<50} " + " ".join(f"{_cell(s, m):>{w}}" for m, w in zip(METRICS, (26, 20, 20))))
        else:
            lines.append(f"{label:<50} not available: {s['reason']}")
    c = r["chance"]
    lines.append(f"{'chance (random order)':<50} {c['kendall_tau_b']:>+26.3f} {stats.pct(c['ndcg@3']):>20} "
                 f"{stats.pct(c['hit@1']):>20}")
    if "comparison" in r:
        cmp = r["comparison"]
        parts = []
        for m in METRICS:
            x = cmp[m]
            scale, fmt = (1, "+.3f") if m == "kendall_tau_b" else (100, "+.1f")
            d, lo, hi = (round(scale * v, 6) + 0.0 for v in (x["difference"], *x["ci"]))
            parts.append(f"{m} {d:{fmt}} [{lo:{fmt}}, {hi:{fmt}}], {stats.format_p(x['p_value'])}")
        lines.append(f"DPO - SFT per user (paired sign-flip test; NDCG and hit in points): " + "; ".join(parts))
    return lines
