"""Baselines: simple rules scored on exactly the test pairs (and candidate sets) the models get.

Each rule gives every option a number and picks the option with the larger one; equal numbers are a
tie, scored 0.5. The rules look at movies, never at positions, so they choose the same movie in both
option orders and their per-pair score is also their two-order accuracy, comparable with a model's.
RULES is the one list: the pair baselines and the ranking baselines both use it. A model that does
not beat mean_rating has not shown it learned anything personal: that rule knows only which films are
good. The rating rules read the training users' ratings written beside the splits (dporec.data.ratings).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from dporec.analysis import metrics
from dporec.analysis.metrics import per_pair_scores
from dporec.analysis.resampling import cluster_bootstrap_ci
from dporec.data import task
from dporec.data.ratings import read_train_ratings


@dataclass(frozen=True)
class Rule:
    label: str
    missing: str  # why the rule is not available when its input is absent


_NO_ITEM_IDS = "the test records do not name the options' item ids (no 'option_a'/'option_b' item_id)"
RULES = {
    # the movie's mean rating among training users (a movie they never rated gets their overall mean)
    "mean_rating": Rule("mean rating among training users", _NO_ITEM_IDS),
    # how many training users rated the movie
    "popularity": Rule("popularity among training users", _NO_ITEM_IDS),
    # for each of the option's genres, how many history movies in the prompt have it; summed
    "genre_overlap": Rule("genre overlap with the history", "the history in the prompt shows no genres"),
    # summed cosine similarity, over training users' liked movies, between the option and each history movie
    "item_cf": Rule("item-to-item co-occurrence with the history",
                    "the test records do not name the history movies' item ids"),
    # the older release year ("Title (1995)" in the prompt)
    "older_year": Rule("older release year", "the options show no release year"),
}
RATING_RULES = ("mean_rating", "popularity", "item_cf")
LABELS = {name: rule.label for name, rule in RULES.items()}
_YEAR_GENRES_RE = re.compile(r"\((\d{4})\)\s*\(([^()]*)\)")
_YEAR_RE = re.compile(r"\((\d{4})\)")


class Side:
    """What the rating rules need from the training users' ratings: per-item counts and means, likers."""

    def __init__(self, ratings, like_threshold: int):
        r = ratings
        self.global_mean = float(r["rating"].mean())
        per_item = r.groupby("item_id")["rating"].agg(["size", "mean"])
        self.count = per_item["size"].to_dict()
        self.mean = per_item["mean"].to_dict()
        liked = r[r["rating"] >= like_threshold]
        self.likers = {int(i): set(u) for i, u in liked.groupby("item_id")["user_id"]}

    def cosine(self, i: int, j: int) -> float:
        a, b = self.likers.get(i, ()), self.likers.get(j, ())
        return len(a & b) / np.sqrt(len(a) * len(b)) if a and b else 0.0


def find_side(train_file) -> tuple[Side | None, str]:
    """(Side, "") or (None, why not) for the folder holding data.train_file."""
    got = read_train_ratings(train_file)
    if isinstance(got, str):
        return None, got
    ratings, meta = got
    return Side(ratings, meta["like_threshold"]), ""


# ---------------------------------------------------------------------------------------------
# What each rule sees of an example

def _option(ex, letter: str) -> dict:
    """{"item_id", "year", "genres"} of one option: the builder's structured field, else the text."""
    info = ex.extra.get("option_a" if letter == "A" else "option_b")
    if isinstance(info, dict) and "genres" in info:
        return {"item_id": info.get("item_id"), "year": info.get("year"), "genres": list(info["genres"])}
    text = ex.option(letter)
    m = _YEAR_GENRES_RE.search(text)
    year = _YEAR_RE.findall(text)
    return {"item_id": None, "year": int(m.group(1)) if m else int(year[-1]) if year else None,
            "genres": m.group(2).split("|") if m else []}


def _history(ex) -> list[dict]:
    """History movies as {"item_id", "genres"}: the structured field, else parsed from 'History:'."""
    hist = ex.extra.get("history")
    if isinstance(hist, list) and hist and all(isinstance(h, dict) for h in hist):
        return [{"item_id": h.get("item_id"), "genres": list(h.get("genres") or [])} for h in hist]
    # only the history part: in the thesis's one-line layout the options share the 'History:' line
    return [{"item_id": None, "genres": g.split("|")}
            for _, g in _YEAR_GENRES_RE.findall(task.history_text(ex.input))]


def genre_counts(history: list[dict]) -> dict[str, int]:
    """{genre: how many history movies have it}."""
    counts: dict[str, int] = {}
    for h in history:
        for g in set(h["genres"]):
            counts[g] = counts.get(g, 0) + 1
    return counts


def option_values(history: list[dict], option: dict, side: Side | None) -> dict:
    """{rule: the rule's number for this movie} given the history ({"item_id", "genres"} each);
    None where the rule lacks what it needs (no genres, no item ids, no side files)."""
    counts = genre_counts(history)
    item, hist_ids = option.get("item_id"), [h.get("item_id") for h in history]
    out = {"genre_overlap": sum(counts.get(g, 0) for g in option["genres"]) if counts else None,
           "older_year": -option["year"] if option.get("year") else None,
           "mean_rating": None, "popularity": None, "item_cf": None}
    if side is not None and item is not None:
        item = int(item)
        out.update(mean_rating=side.mean.get(item, side.global_mean), popularity=side.count.get(item, 0))
        if hist_ids and None not in hist_ids:
            out["item_cf"] = sum(side.cosine(int(h), item) for h in hist_ids)
    return out


def _values(ex, side: Side | None) -> dict[str, tuple]:
    """{rule: (value of option A, value of option B)}; a rule without what it needs gives None."""
    hist = _history(ex)
    va, vb = (option_values(hist, _option(ex, L), side) for L in "AB")
    return {r: None if va[r] is None or vb[r] is None else (va[r], vb[r]) for r in RULES}


def _score(label: str, va, vb) -> float:
    """1 if the rule picks the labelled option, 0 if the other, 0.5 on a tie or a missing value."""
    if va is None or vb is None or va == vb:
        return 0.5
    return float((va > vb) == (label == "A"))


def why_missing(rule: str, side_reason: str) -> str:
    if rule in RATING_RULES and side_reason:
        return side_reason
    return RULES[rule].missing


def pair_scores(examples, side: Side | None, side_reason: str = "") -> dict[str, dict | str]:
    """{rule: {pair_id: score in {0, 0.5, 1}}} or {rule: why it is not available}."""
    per_rule: dict[str, dict] = {r: {} for r in RULES}
    missing = {r: False for r in RULES}
    for ex in examples:
        for rule, v in _values(ex, side).items():
            if v is None:  # the file lacks what the rule needs (e.g. item ids): not a per-pair gap
                missing[rule] = True
            else:
                per_rule[rule][ex.pair_id] = _score(ex.label, *v)
    return {r: (why_missing(r, side_reason) if missing[r] else per_rule[r]) for r in RULES}


# ---------------------------------------------------------------------------------------------
# Into results.json

def _users(examples) -> dict[str, str]:
    """{pair_id: bootstrap cluster}: the same labels as the models' intervals (metrics.clusters)."""
    users = {ex.pair_id: metrics.user_of({"user_id": ex.user_id, "pair_id": ex.pair_id}) for ex in examples}
    return dict(zip(sorted(users), metrics.clusters(users)[0]))


def _mean_ci(values, clusters, n_boot, seed, alpha) -> tuple[float, list[float]]:
    lo, hi = cluster_bootstrap_ci(values, clusters, n_boot=n_boot, seed=seed, alpha=alpha)
    return float(np.mean(values)), [lo, hi]


def add_to_results(results: dict, examples, train_file, rows_by_model: dict, n_boot: int = 2000,
                   seed: int = 0, alpha: float = 0.05) -> dict:
    """Fill results["baselines"] and each model's personalised-subset and best-baseline fields.

    `examples`: the test examples the models were scored on; `rows_by_model`: their prediction rows.
    """
    side, side_reason = find_side(train_file)
    users = _users(examples)
    scores = pair_scores(examples, side, side_reason)
    out = {}
    for rule, s in scores.items():
        entry = {"label": LABELS[rule], "n_pairs": len(examples)}
        if isinstance(s, str):
            out[rule] = {**entry, "available": False, "accuracy": None, "ci": None, "reason": s}
            continue
        pids = list(s)
        acc, ci = _mean_ci([s[p] for p in pids], [users[p] for p in pids], n_boot, seed, alpha)
        out[rule] = {**entry, "available": True, "accuracy": acc, "ci": ci}
    results["baselines"] = out
    best = best_baseline(results)
    wrong = ([p for p, v in scores["mean_rating"].items() if v == 0.0]
             if isinstance(scores["mean_rating"], dict) else None)
    for name, rows in rows_by_model.items():
        model_scores, _ = per_pair_scores(rows)
        m = results["models"][name]
        m["n_personalised"] = len(wrong) if wrong is not None else None
        m["accuracy_personalised"] = m["accuracy_personalised_ci"] = None
        if wrong:
            m["accuracy_personalised"], m["accuracy_personalised_ci"] = _mean_ci(
                [model_scores[p] for p in wrong], [users[p] for p in wrong], n_boot, seed, alpha)
        m["vs_best_baseline"] = None
        if best:
            pids = list(scores[best])
            diff, ci = _mean_ci([model_scores[p] - scores[best][p] for p in pids], [users[p] for p in pids],
                                n_boot, seed, alpha)
            m["vs_best_baseline"] = {"baseline": best, "difference": diff, "ci": ci}
    return out


def best_baseline(results: dict) -> str | None:
    avail = {k: v for k, v in (results.get("baselines") or {}).items() if v.get("available")}
    return max(avail, key=lambda k: avail[k]["accuracy"]) if avail else None
