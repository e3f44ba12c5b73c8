"""Ranking adherence: rank one test user's N rated candidates by a model's pairwise answers, per model
and baseline rule, and compare the rankings with the user's ratings (dporec.analysis.rank_metrics).

Every pair of candidates is asked as the usual A/B question with the builder's own prompt, in both
option orders, and scored with the evaluator's likelihood decision (scoring.decision_margins).
"""
from __future__ import annotations

import logging
import math
import time
from itertools import combinations

import numpy as np

from dporec.analysis import rank_metrics
from dporec.data import candidates, records
from dporec.data.pairs import movie_example
from dporec.evaluation import baselines
from dporec.modeling.adapters import active

log = logging.getLogger(__name__)


def pair_examples(cset: dict) -> list[records.Example]:
    """One A/B example per unordered pair i < j (i as Option A): the builder's own prompt text."""
    hist = [candidates.movie(m) for m in cset["history"]]
    movies = [candidates.movie(m) for m in cset["candidates"]]
    out = []
    for i, j in combinations(range(len(movies)), 2):
        a, b = movies[i], movies[j]
        # unrated candidates (recommend.py's requests): the label is never read
        ri, rj = (cset["candidates"][k].get("rating", 0) for k in (i, j))
        label = "A" if ri >= rj else "B"
        out.append(movie_example(hist, a, b, label, f"{cset['id']}:{i}-{j}", cset["user_id"]))
    return out


def _ratings(cset) -> list[float]:
    return [c["rating"] for c in cset["candidates"]]


def _liked(cset) -> float:
    """The stars from which hit@1 counts a candidate as liked: the build's like_threshold
    (candidates.load)."""
    return cset.get("like_threshold", rank_metrics.LIKED)


def preference_matrices(model, tok, sets: list[dict], fmt: str, batch_size: int, name: str) -> list:
    """Per set, the active model's N x N position-free preference matrix
    (analysis.rank_metrics.preferences)."""
    from dporec.evaluation import scoring
    margins = scoring.decision_margins(model, tok, [pair_examples(s) for s in sets], fmt, batch_size,
                                       desc=f"ranking {name}")
    return [rank_metrics.preferences(m, len(s["candidates"])) for s, m in zip(sets, margins)]


def score_model(model, tok, sets: list[dict], fmt: str, batch_size: int, name: str) -> list[dict]:
    """Per set: {"user_id", "scores": Copeland scores, **metrics}."""
    out = []
    for s, pref in zip(sets, preference_matrices(model, tok, sets, fmt, batch_size, name)):
        scores = rank_metrics.copeland(pref)
        out.append({"user_id": s["user_id"], "scores": scores.tolist(),
                    **rank_metrics.metrics(scores, _ratings(s), _liked(s))})
    return out


def score_models(model, tok, sets, adapters: dict, cfg: dict) -> tuple[dict, dict]:
    """({model: per-set rows}, {model: seconds}) for every model in `adapters` (modeling.adapters.active)."""
    rows, seconds = {}, {}
    for name in adapters:
        t0 = time.perf_counter()
        with active(model, name, adapters):
            rows[name] = score_model(model, tok, sets, cfg["data"]["prompt_format"],
                                     cfg["eval"]["batch_size"], name)
        seconds[name] = time.perf_counter() - t0
        n_pairs = sum(math.comb(len(s["candidates"]), 2) for s in sets)
        log.info(f"[eval] {name}: ranked {len(sets)} users' candidates ({n_pairs} pairs x 2 orders) in "
                 f"{seconds[name]:.1f}s")
    return rows, seconds


def baseline_rows(sets, train_file) -> dict[str, list[dict] | str]:
    """{rule: per-set rows} or {rule: why it is not available}, each rule ranking by its own number from
    ratings made before the set's cutoff."""
    side, side_reason = baselines.find_side(train_file)
    cutoffs = [s.get("cutoff_timestamp") for s in sets]
    timed = all(isinstance(t, int) for t in cutoffs)
    # per set, per candidate: every rule's number ({rule: value}), computed once
    values = [[baselines.option_values(s["history"], c, side, t) for c in s["candidates"]]
              for s, t in zip(sets, cutoffs)]
    out = {}
    for rule in baselines.RULES:
        per_set = [[v[rule] for v in vs] for vs in values]
        if any(None in v for v in per_set):  # the files lack what the rule needs
            out[rule] = baselines.why_missing(rule, side_reason, timed)
            continue
        out[rule] = [{"user_id": s["user_id"], "scores": v, **rank_metrics.metrics(v, _ratings(s), _liked(s))}
                     for s, v in zip(sets, per_set)]
    return out


def results(sets, rows: dict, base_rows: dict, seconds: dict, cfg: dict, path) -> dict:
    """results.json's "ranking" block: per model and rule the mean of each metric with its interval,
    chance levels, and DPO vs SFT paired over users."""
    ec, seed = cfg["eval"], cfg["seed"]
    n_boot, alpha = ec["bootstrap_samples"], ec["alpha"]
    def rule_block(rule, r):
        label = baselines.LABELS[rule]
        if isinstance(r, list):
            return rank_metrics.summarize(r, n_boot, seed, alpha) | {"label": label}
        return {"label": label, "available": False, "reason": r}

    out = {"file": str(path), "n_users": len(sets),
           "candidates_per_user": sorted({len(s["candidates"]) for s in sets}),
           "method": "copeland (ties: summed margin), both option orders",
           "liked": max(_liked(s) for s in sets),  # one build writes one threshold into all its sets
           "chance": {m: float(np.mean([rank_metrics.chance(_ratings(s), _liked(s))[m] for s in sets]))
                      for m in rank_metrics.METRICS},
           "models": {n: rank_metrics.summarize(r, n_boot, seed, alpha) for n, r in rows.items()},
           "baselines": {rule: rule_block(rule, r) for rule, r in base_rows.items()},
           "seconds_per_model": {n: round(s, 1) for n, s in seconds.items()}, "alpha": alpha}
    if "sft" in rows and "dpo" in rows:
        out["comparison"] = {"a": "sft", "b": "dpo",
                             **rank_metrics.compare(rows["sft"], rows["dpo"], alpha, ec["ranking_margin"])}
    return out
