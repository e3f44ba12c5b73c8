"""Baselines: simple rules scored on exactly the test pairs the models get, and how to print them.

Each rule gives every option a number and picks the option with the larger one; equal numbers are a
tie, scored 0.5. The rules look at movies, never at positions, so they choose the same movie in both
option orders and their per-pair score is also their two-order accuracy, comparable with a model's.

  mean_rating    the movie's mean rating among training users (a movie they never rated gets their
                 overall mean rating)
  popularity     how many training users rated the movie
  genre_overlap  for each of the option's genres, how many history movies in the prompt have it; summed
  item_cf        item-to-item collaborative rule: the summed cosine similarity, over training users'
                 liked movies (rating >= like_threshold), between the option and each history movie
  older_year     the older release year (in the prompt: "Title (1995)")

A model that does not beat mean_rating has not shown it learned anything personal: that rule knows
only which films are good. The "personalised subset" (pairs mean_rating gets wrong) is where knowing
which films are good does not help; each model's accuracy there is reported too.

Side files, written by the builder (dporec.movielens) next to train.jsonl and found beside
data.train_file at evaluation:
  baselines.json          {"ratings_file", "like_threshold", "users", "ratings"}
  train_ratings.csv.gz    the ratings of the train split's users only (user_id, item_id, rating,
                          timestamp; item ids as the records name them), so no rule sees a test user
Without them (e.g. the thesis's own files) the rating rules are reported "not available", with why.

    results["baselines"] = {name: {"label", "available", "accuracy", "n_pairs", "ci", "reason"?}}
    results["models"][m] gains "accuracy_personalised", "accuracy_personalised_ci", "n_personalised"
                         and "vs_best_baseline": {"baseline", "difference", "ci"}
Presentation: table_lines(results), markdown(results), verdict_clause(results).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import data, metrics, stats

META_FILE = "baselines.json"
RATINGS_FILE = "train_ratings.csv.gz"
LABELS = {
    "mean_rating": "mean rating among training users",
    "popularity": "popularity among training users",
    "genre_overlap": "genre overlap with the history",
    "item_cf": "item-to-item co-occurrence with the history",
    "older_year": "older release year",
}
_YEAR_GENRES_RE = re.compile(r"\((\d{4})\)\s*\(([^()]*)\)")
_YEAR_RE = re.compile(r"\((\d{4})\)")


# ---------------------------------------------------------------------------------------------
# Side files

def write_side_files(out_dir, train_ratings: pd.DataFrame, like_threshold: int) -> Path:
    """Write baselines.json and train_ratings.csv.gz (ratings of training users only) into out_dir."""
    out = Path(out_dir)
    cols = ["user_id", "item_id", "rating", "timestamp"]
    train_ratings[cols].to_csv(out / RATINGS_FILE, index=False, compression={"method": "gzip", "mtime": 0})
    meta = {"ratings_file": RATINGS_FILE, "like_threshold": int(like_threshold),
            "users": int(train_ratings["user_id"].nunique()), "ratings": len(train_ratings),
            "note": "ratings of the train split's users only; read by dporec.baselines"}
    path = out / META_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


class Side:
    """What the rating rules need, from the side files: per-item counts and means, liked vectors."""

    def __init__(self, folder):
        folder = Path(folder)
        self.meta = json.loads((folder / META_FILE).read_text())
        r = pd.read_csv(folder / self.meta["ratings_file"])
        self.global_mean = float(r["rating"].mean())
        per_item = r.groupby("item_id")["rating"].agg(["size", "mean"])
        self.count = per_item["size"].to_dict()
        self.mean = per_item["mean"].to_dict()
        liked = r[r["rating"] >= self.meta["like_threshold"]]
        self.likers = {int(i): set(u) for i, u in liked.groupby("item_id")["user_id"]}

    def cosine(self, i: int, j: int) -> float:
        a, b = self.likers.get(i, ()), self.likers.get(j, ())
        return len(a & b) / np.sqrt(len(a) * len(b)) if a and b else 0.0


def find_side(train_file) -> tuple[Side | None, str]:
    """(Side, "") or (None, why not) for the folder holding data.train_file."""
    folder = Path(train_file).parent
    if not (folder / META_FILE).is_file():
        return None, (f"no {META_FILE} beside {train_file} (the builder, data/prepare_movielens.py, writes it "
                      f"with the training users' ratings; a file without ratings cannot have these rules)")
    return Side(folder), ""


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
    return [{"item_id": None, "genres": g.split("|")} for _, g in _YEAR_GENRES_RE.findall(data.history_text(ex.input))]


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
    return {r: None if va[r] is None or vb[r] is None else (va[r], vb[r]) for r in LABELS}


def _score(label: str, va, vb) -> float:
    """1 if the rule picks the labelled option, 0 if the other, 0.5 on a tie or a missing value."""
    if va is None or vb is None or va == vb:
        return 0.5
    return float((va > vb) == (label == "A"))


def why_missing(rule: str, side_reason: str) -> str:
    if rule in ("mean_rating", "popularity", "item_cf") and side_reason:
        return side_reason
    return {"genre_overlap": "the history in the prompt shows no genres",
            "item_cf": "the test records do not name the history movies' item ids",
            "older_year": "the options show no release year"}.get(
        rule, "the test records do not name the options' item ids (no 'option_a'/'option_b' item_id)")


def pair_scores(examples, side: Side | None, side_reason: str = "") -> dict[str, dict | str]:
    """{rule: {pair_id: score in {0, 0.5, 1}}} or {rule: why it is not available}."""
    per_rule: dict[str, dict] = {r: {} for r in LABELS}
    missing = {r: False for r in LABELS}
    for ex in examples:
        for rule, v in _values(ex, side).items():
            if v is None:  # the file lacks what the rule needs (e.g. item ids): not a per-pair gap
                missing[rule] = True
            else:
                per_rule[rule][ex.pair_id] = _score(ex.label, *v)
    return {r: (why_missing(r, side_reason) if missing[r] else per_rule[r]) for r in LABELS}


# ---------------------------------------------------------------------------------------------
# Into results.json

def _users(examples) -> dict[str, str]:
    """{pair_id: bootstrap cluster}: the same labels as the models' intervals (metrics.clusters)."""
    users = {ex.pair_id: metrics.user_of({"user_id": ex.user_id, "pair_id": ex.pair_id}) for ex in examples}
    return dict(zip(sorted(users), metrics.clusters(users)[0]))


def _mean_ci(values, clusters, n_boot, seed, alpha) -> tuple[float, list[float]]:
    lo, hi = stats.cluster_bootstrap_ci(values, clusters, n_boot=n_boot, seed=seed, alpha=alpha)
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
        model_scores, _ = stats.per_pair_scores(rows)
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


# ---------------------------------------------------------------------------------------------
# Presentation (console, report.md, verdict)

def _personalised(results: dict) -> str | None:
    ms = {n: m for n, m in results["models"].items() if m.get("n_personalised") is not None}
    if not ms:
        return None
    n = next(iter(ms.values()))["n_personalised"]
    if not n:
        return "Personalised subset: the mean-rating rule gets no test pair wrong, so there is none."
    parts = ", ".join(f"{name} {stats.pct(m['accuracy_personalised'])} {stats.ci_text(m['accuracy_personalised_ci'])}"
                      for name, m in ms.items())
    return f"Personalised subset (the {n:,} pairs the mean-rating rule gets wrong): {parts}"


def table_lines(results: dict) -> list[str]:
    """Console lines: one per baseline (accuracy, user-clustered 95% CI), then the personalised subset."""
    b = results.get("baselines")
    if not b:
        return []
    n = next(iter(b.values()))["n_pairs"]
    width = max(len(v["label"]) for v in b.values())
    lines = [f"baselines on the same {n:,} test pairs (rules on movies, same choice in both orders; tie = 0.5)"]
    for v in b.values():
        tail = f"{stats.pct(v['accuracy']):>6}  {stats.ci_text(v['ci'])}" if v["available"] else f"{'n/a':>6}  ({v['reason']})"
        lines.append(f"  {v['label']:<{width}}  {tail}")
    p = _personalised(results)
    return lines + ([p] if p else [])


def markdown(results: dict) -> list[str]:
    """report.md section: baseline table, personalised subset and the verdict clause."""
    b = results.get("baselines")
    if not b:
        return []
    lines = ["## Baselines on the same test pairs", "",
             "| Rule | Two-order accuracy [95% CI] |", "|---|---:|"]
    for v in b.values():
        lines.append(f"| {v['label']} | {stats.pct(v['accuracy'])} {stats.ci_text(v['ci'])} |" if v["available"]
                     else f"| {v['label']} | not available: {v['reason']} |")
    lines += ["", "Each rule picks a movie by a number (mean rating and popularity among training users only; "
              "genre overlap and co-occurrence with the history in the prompt), the same in both orders; "
              "a tie counts 0.5. Intervals resample users."]
    p = _personalised(results)
    return lines + (["", p] if p else []) + ["", verdict_clause(results)]


def verdict_clause(results: dict) -> str:
    """Whether each model beats the strongest available baseline (paired, user-clustered 95% CI)."""
    best = best_baseline(results)
    if best is None:
        return "No baseline could be computed on these test pairs."
    b = results["baselines"][best]
    parts = []
    for name, m in results["models"].items():
        vs = m.get("vs_best_baseline")
        if not vs:
            continue
        lo, hi = vs["ci"]
        how = "beats it" if lo > 0 else "falls below it" if hi < 0 else "does not differ clearly from it"
        parts.append(f"{name} {stats.pct(m['accuracy'])} {how} ({stats._signed(100 * vs['difference'])} points, "
                     f"95% CI {stats._signed(100 * lo)} to {stats._signed(100 * hi)})")
    return (f"Strongest baseline: {b['label']}, {stats.pct(b['accuracy'])}. " + "; ".join(parts) + "."
            if parts else f"Strongest baseline: {b['label']}, {stats.pct(b['accuracy'])}.")
