"""Baselines: simple rules scored on exactly the test pairs (and candidate sets) the models get.

Each rule gives every option a number and picks the option with the larger one; equal numbers are a
tie, scored 0.5. The rules look at movies, never at positions, so they choose the same movie in both
option orders and their per-pair score is also their two-order accuracy, comparable with a model's.
RULES is the one list: the pair baselines and the ranking baselines both use it. The rating rules read
only training users' ratings made strictly before the pair's target time (the candidate set's cutoff
for ranking), so no rule knows anything from the moment it predicts or later. The strongest rule is
chosen on the validation pairs, then compared with each model on the test pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dporec.analysis import metrics
from dporec.analysis.metrics import per_pair_scores
from dporec.analysis.resampling import cluster_bootstrap_ci, paired_interval
from dporec.data import task
from dporec.data.ratings import TrainRatings, read_train_ratings


@dataclass(frozen=True)
class Rule:
    label: str
    missing: str  # why the rule is not available when its input is absent


_NO_ITEM_IDS = "the test records do not name the options' item ids (no 'option_a'/'option_b' item_id)"
RULES = {
    # the movie's mean rating among training users before the pair's time (none yet: their overall mean)
    "mean_rating": Rule("mean rating among training users", _NO_ITEM_IDS),
    # how many training users had rated the movie before the pair's time
    "popularity": Rule("popularity among training users", _NO_ITEM_IDS),
    # for each of the option's genres, how many history movies in the prompt have it; summed
    "genre_overlap": Rule("genre overlap with the history", "the history in the prompt shows no genres"),
    # summed cosine similarity, over training users' liked movies before the pair's time, between the
    # option and each history movie
    "item_cf": Rule("item-to-item co-occurrence with the history",
                    "the test records do not name the history movies' item ids"),
    # the older release year ("Title (1995)" in the prompt)
    "older_year": Rule("older release year", "the options show no release year"),
}
RATING_RULES = ("mean_rating", "popularity", "item_cf")
NO_TIME = ("the records hold no target time (target_timestamp), so a rating rule could read ratings made "
           "after the pair; rebuild the data with data/prepare_movielens.py")
LABELS = {name: rule.label for name, rule in RULES.items()}


def find_side(train_file) -> tuple[TrainRatings | None, str]:
    """(the training users' ratings, "") or (None, why not) for the folder holding data.train_file."""
    got = read_train_ratings(train_file)
    if isinstance(got, str):
        return None, got
    ratings, meta = got
    return TrainRatings(ratings, meta["like_threshold"]), ""


# ---------------------------------------------------------------------------------------------
# What each rule sees of an example

def _option(ex, letter: str) -> dict:
    """{"item_id", "year", "genres"} of one option: the builder's structured field, else the text."""
    info = ex.option_record(letter)
    if "genres" in info:
        return {"item_id": info.get("item_id"), "year": info.get("year"), "genres": list(info["genres"])}
    text = ex.option(letter)
    return {"item_id": None, "year": task.option_year(text), "genres": task.option_genres(text)}


def _history(ex) -> list[dict]:
    """History movies as {"item_id", "genres"}: the structured field, else parsed from 'History:'."""
    hist = ex.extra.get("history")
    if isinstance(hist, list) and hist and all(isinstance(h, dict) for h in hist):
        return [{"item_id": h.get("item_id"), "genres": list(h.get("genres") or [])} for h in hist]
    # only the history part: in the thesis's one-line layout the options share the 'History:' line
    return [{"item_id": None, "genres": g} for g in task.shown_genres(task.history_text(ex.input))]


def genre_counts(history: list[dict]) -> dict[str, int]:
    """{genre: how many history movies have it}."""
    counts: dict[str, int] = {}
    for h in history:
        for g in set(h["genres"]):
            counts[g] = counts.get(g, 0) + 1
    return counts


def option_values(history: list[dict], option: dict, side: TrainRatings | None, t: int | None) -> dict:
    """{rule: the rule's number for this movie} given the history ({"item_id", "genres"} each) and the
    moment t of the question; None where the rule lacks what it needs (genres, item ids, ratings, t)."""
    counts = genre_counts(history)
    item, hist_ids = option.get("item_id"), [h.get("item_id") for h in history]
    out = {"genre_overlap": sum(counts.get(g, 0) for g in option["genres"]) if counts else None,
           "older_year": -option["year"] if option.get("year") else None,
           "mean_rating": None, "popularity": None, "item_cf": None}
    if side is not None and item is not None and t is not None:
        out.update(mean_rating=side.mean(item, t), popularity=side.count(item, t))
        if hist_ids and None not in hist_ids:
            out["item_cf"] = sum(side.cosine(h, item, t) for h in hist_ids)
    return out


def _time(ex) -> int | None:
    t = ex.extra.get("target_timestamp")
    return int(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None


# "As of" a moment after every rating: the rating rules read the training users' whole period, as the
# models' training data does (pairs from the whole period), instead of only what came before the pair
WHOLE_PERIOD = 2 ** 62


def _values(ex, side: TrainRatings | None, whole_period: bool = False) -> dict[str, tuple]:
    """{rule: (value of option A, value of option B)}; a rule without what it needs gives None."""
    hist, t = _history(ex), (WHOLE_PERIOD if whole_period else _time(ex))  # the whole period needs no time
    va, vb = (option_values(hist, _option(ex, L), side, t) for L in task.LETTERS)
    return {r: None if va[r] is None or vb[r] is None else (va[r], vb[r]) for r in RULES}


def _score(label: str, va, vb) -> float:
    """1 if the rule picks the labelled option, 0 if the other, 0.5 on a tie or a missing value."""
    if va is None or vb is None or va == vb:
        return 0.5
    return float((va > vb) == (label == "A"))


def why_missing(rule: str, side_reason: str, timed: bool = True) -> str:
    if rule in RATING_RULES and side_reason:
        return side_reason
    if rule in RATING_RULES and not timed:
        return NO_TIME
    return RULES[rule].missing


def pair_scores(examples, side: TrainRatings | None, side_reason: str = "",
                whole_period: bool = False) -> dict[str, dict | str]:
    """{rule: {pair_id: score in {0, 0.5, 1}}} or {rule: why it is not available}. whole_period: the rating
    rules read every training rating, later ones included (the information the models trained on)."""
    per_rule: dict[str, dict] = {r: {} for r in RULES}
    missing = {r: False for r in RULES}
    timed = all(_time(ex) is not None for ex in examples)
    for ex in examples:
        for rule, v in _values(ex, side, whole_period).items():
            if v is None:  # the file lacks what the rule needs (e.g. item ids): not a per-pair gap
                missing[rule] = True
            else:
                per_rule[rule][ex.pair_id] = _score(ex.label, *v)
    return {r: (why_missing(r, side_reason, timed) if missing[r] else per_rule[r]) for r in RULES}


# ---------------------------------------------------------------------------------------------
# Into results.json

def _users(examples) -> dict[str, str]:
    """{pair_id: cluster label}: the same labels as the models' intervals (metrics.clusters)."""
    users = {ex.pair_id: metrics.user_of({"user_id": ex.user_id, "pair_id": ex.pair_id}) for ex in examples}
    return dict(zip(sorted(users), metrics.clusters(users)[0]))


def _accuracies(scores: dict) -> dict[str, float]:
    return {r: float(np.mean(list(s.values()))) for r, s in scores.items() if isinstance(s, dict) and s}


def _rules(examples, val_examples, side, side_reason, users, n_boot, seed, alpha,
           whole_period: bool = False, known: dict | None = None) -> tuple[dict, dict | None, dict]:
    """(each rule's accuracy and interval on the test pairs, the rule strongest on the validation pairs
    or None, each rule's per-pair scores) with the rating rules time-cut or over the whole period. known:
    entries already computed for the rules that read no ratings (the same either way)."""
    scores = pair_scores(examples, side, side_reason, whole_period)
    out = {}
    for rule, s in scores.items():
        entry = {"label": LABELS[rule], "n_pairs": len(examples)}
        if known and rule not in RATING_RULES:
            out[rule] = known[rule]
            continue
        if isinstance(s, str):
            out[rule] = {**entry, "available": False, "accuracy": None, "ci": None, "reason": s}
            continue
        values, clusters = list(s.values()), [users[p] for p in s]
        lo, hi = cluster_bootstrap_ci(values, clusters, n_boot=n_boot, seed=seed, alpha=alpha)
        out[rule] = {**entry, "available": True, "accuracy": float(np.mean(values)), "ci": [lo, hi]}
    val = (_accuracies(pair_scores(val_examples, side, side_reason, whole_period))
           if val_examples else {})
    val = {r: a for r, a in val.items() if out[r]["available"]}
    best = max(val, key=val.get) if val else None
    chosen = ({"rule": best, "label": LABELS[best], "chosen_on": "validation pairs",
               "validation_accuracy": val[best], "n_validation_pairs": len(val_examples)} if best else None)
    return out, chosen, scores


def _versus(model_scores: dict, rule_scores: dict, users: dict, alpha: float) -> dict:
    pids = list(rule_scores)
    inf = paired_interval([model_scores[p] - rule_scores[p] for p in pids], [users[p] for p in pids],
                          alpha=alpha)
    return {"difference": inf["mean"], "ci": list(inf["ci"]), "p_value": inf["p_value"]}


def add_to_results(results: dict, examples, train_file, rows_by_model: dict, val_examples=None,
                   n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Fill results["baselines"] (each rule on the test pairs, the rating rules reading only training
    ratings made before each pair's time), results["best_baseline"] (the rule strongest on the validation
    pairs) and each model's "vs_best_baseline" (model minus that rule on the test pairs, paired over
    users). Beside them the information-matched comparator: the same with the rating rules reading the
    training users' whole period, as the models' training pairs do ("baselines_whole_period",
    "best_baseline_whole_period", "vs_best_baseline_whole_period"). `examples`: the scored test
    examples; `rows_by_model`: their rows."""
    side, side_reason = find_side(train_file)
    users = _users(examples)
    kw = dict(n_boot=n_boot, seed=seed, alpha=alpha)
    out, best, scores = _rules(examples, val_examples, side, side_reason, users, **kw)
    whole, best_whole, scores_whole = _rules(examples, val_examples, side, side_reason, users, **kw,
                                             whole_period=True, known=out)
    results["baselines"], results["best_baseline"] = out, best
    results["baselines_whole_period"] = {r: whole[r] for r in RATING_RULES}
    results["best_baseline_whole_period"] = best_whole
    for name, rows in rows_by_model.items():
        model_scores, _ = per_pair_scores(rows)
        m = results["models"][name]
        m["vs_best_baseline"] = (None if not best else
                                 {"baseline": best["rule"], **_versus(model_scores, scores[best["rule"]],
                                                                      users, alpha)})
        m["vs_best_baseline_whole_period"] = (
            None if not best_whole else
            {"baseline": best_whole["rule"], **_versus(model_scores, scores_whole[best_whole["rule"]], users,
                                                       alpha)})
    return out
