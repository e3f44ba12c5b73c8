"""Candidate sets for ranking adherence: N movies one test user rated after a history, and their ratings.

Written by the builder (dporec.data.pairs.build) beside the splits as `ranking_test.jsonl`,
for TEST users only (the users of test.jsonl: none of them trains), one JSON object per line:

    {"id": "u42-rank", "user_id": "42", "cutoff_timestamp": 881250949, "like_threshold": 4.0,
     "history":    [{"item_id", "title", "year", "genres", "timestamp"}, ...],   oldest first
     "candidates": [{"item_id", "title", "year", "genres", "rating"}, ...]}      in random order

`like_threshold` is the build's: hit@1 counts a top candidate rated at least that as liked, the rule the
pairs use (dporec.data.ratings.liked); a file without it was built at 4 stars.

For one user, in the user's time order (ties: file order):
  pool        the user's last `pool_factor * N` ratings (fewer if the history needs the room), all
              rated at or after the cutoff (the first pool rating's time);
  history     the `history_len` most recent movies rated >= like_threshold strictly before the cutoff,
              as in the pair examples, so the prompt looks the same;
  candidates  N movies from the pool, spread over the rating scale: the pool's rating levels take
              turns (highest first), each giving one random movie per turn, until N are taken. Ties
              are allowed; a user whose N candidates all have one rating is left out (no ranking to
              adhere to), as is one with fewer than N pool movies. The summary counts both.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd

from dporec import UserError, files
from dporec.data import built
from dporec.data import ratings as R
from dporec.data.ratings import Movie

FILE = "ranking_test.jsonl"
POOL_FACTOR = 3  # the pool is the last 3N ratings: recent enough to follow the history, varied enough to rank


def _spread(ratings: np.ndarray, n: int, rng) -> np.ndarray:
    """Indices of n items, rating levels taking turns (highest first), a random item per level and turn."""
    by_level = {r: list(rng.permutation(np.flatnonzero(ratings == r)))
                for r in sorted(set(ratings.tolist()), reverse=True)}
    picked = []
    while len(picked) < n:
        for level in list(by_level):
            if by_level[level] and len(picked) < n:
                picked.append(by_level[level].pop())
    return np.array(picked)


def _one_user(stars: np.ndarray, ts: np.ndarray, n: int, history_len: int, like_threshold, rng):
    """(history rows, candidate rows, cutoff time) of one user's ratings (time order), or the reason the
    user has no set."""
    liked = R.liked(stars, like_threshold)
    # liked movies rated strictly before each position's time (ts is sorted: same-time ratings do not count)
    liked_before = np.r_[0, np.cumsum(liked)][np.searchsorted(ts, ts, "left")]
    # the cutoff: the first of the last 3N positions (or later) with enough liked movies strictly before it
    first = max(len(ts) - POOL_FACTOR * n, 0)
    ok = np.flatnonzero(liked_before[first:] >= history_len)
    start = first + (int(ok[0]) if ok.size else len(ts))
    if len(ts) - start < n:
        return "too_few_ratings"
    hist = np.flatnonzero((ts < ts[start]) & liked)[-history_len:]
    picked = start + np.sort(_spread(stars[start:], n, rng))
    if np.unique(stars[picked]).size < 2:
        return "one_rating_level"
    return hist, picked[rng.permutation(n)], int(ts[start])


def build(ratings: pd.DataFrame, movies: dict[int, Movie], users, n: int, history_len: int,
          like_threshold, rng) -> tuple[list[dict], dict]:
    """(records, counts) for `users`; `ratings` as dporec.data.ratings.prepare returns them (each user's
    ratings in time order, one per movie)."""
    if n < 2:
        raise UserError(f"ranking candidates: N must be at least 2, got {n}")
    records, left_out = [], {"too_few_ratings": 0, "one_rating_level": 0}
    wanted = ratings[np.isin(ratings["user_id"].to_numpy(), np.fromiter(users, np.int64, len(users)))]
    ids, items, stars, times = (wanted[c].to_numpy() for c in ("user_id", "item_id", "rating", "timestamp"))
    bounds = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1], True])  # each user's rows, users in id order
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        got = _one_user(stars[lo:hi], times[lo:hi], n, history_len, like_threshold, rng)
        if isinstance(got, str):
            left_out[got] += 1
            continue
        hist, cands, cutoff = (got[0] + lo, got[1] + lo, got[2])
        records.append({
            "id": f"u{ids[lo]}-rank", "user_id": str(ids[lo]), "cutoff_timestamp": cutoff,
            "like_threshold": R.rating_value(like_threshold),
            "history": [{**movies[i].record(i), "timestamp": int(t)}
                        for i, t in zip(items[hist], times[hist])],
            "candidates": [{**movies[i].record(i), "rating": R.rating_value(x)}
                           for i, x in zip(items[cands], stars[cands])],
        })
    return records, {"users": len(records), "candidates_per_user": n, "left_out": left_out}


def default_path(test_file) -> Path:
    return Path(test_file).parent / FILE


_NEEDED = {"user_id": str, "history": list, "candidates": list}
_MOVIE = ("title", "genres")


SAMPLE_SEED = 0  # which candidate sets eval.ranking_max_users keeps


def load(path, limit: int | None = None, rated: bool = True) -> list[dict]:
    """Candidate sets from `path`, checked: FILE:LINE: field for anything a ranking cannot use.

    rated=False (recommend.py's requests) lets candidates come without a 'rating'; one given must be a number.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no candidate-set file (data/prepare_movielens.py writes {FILE} beside the "
                        f"splits; set data.ranking_file, or eval.ranking=false)")
    out = []
    for _, where, rec in files.jsonl_lines(path):
        if isinstance(rec, UserError):
            raise rec
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        for key, kind in _NEEDED.items():
            if not isinstance(rec.get(key), kind):
                raise UserError(f"{where}: field '{key}' missing or not a {kind.__name__}")
        if not rec["history"]:
            raise UserError(f"{where}: 'history' needs at least one movie the user watched")
        for field in ("history", "candidates"):
            for k, m in enumerate(rec[field]):
                if not isinstance(m, dict) or not all(x in m for x in _MOVIE):
                    raise UserError(f"{where}: {field}[{k}] needs 'title' and 'genres'")
                if not isinstance(m["title"], str) or not m["title"].strip():
                    raise UserError(f"{where}: {field}[{k}].title must be a non-empty string")
                if isinstance(m["genres"], str):  # MovieLens' own "Comedy|Family" form
                    m["genres"] = [g for g in m["genres"].split("|") if g]
                if not isinstance(m["genres"], list) or not all(isinstance(g, str) for g in m["genres"]):
                    raise UserError(f"{where}: {field}[{k}].genres must be a list of names or a "
                                    "'Comedy|Family' string")
        ratings = [c.get("rating") for c in rec["candidates"]]
        if not rated:
            ratings = [0 if x is None else x for x in ratings]
        if len(ratings) < 2 or not all(isinstance(x, (int, float)) for x in ratings):
            raise UserError(f"{where}: 'candidates' needs at least 2 movies, each with a numeric 'rating'"
                            if rated else f"{where}: 'candidates' needs at least 2 movies ('rating' "
                                          f"optional, a number when given)")
        liked = rec.setdefault("like_threshold", built.DEFAULTS["like_threshold"])  # older files: 4 stars
        if isinstance(liked, bool) or not isinstance(liked, (int, float)):
            raise UserError(f"{where}: 'like_threshold' must be a number of stars, got {liked!r}")
        ids = [c.get("item_id", c["title"]) for c in rec["candidates"]]
        if len(set(map(str, ids))) != len(ids):
            raise UserError(f"{where}: a movie appears twice in 'candidates'")
        rec.setdefault("id", f"{path.name}:{where.rsplit(':', 1)[-1]}")  # a request may come without one
        out.append(rec)
    if not out:
        raise UserError(f"{path}: no candidate sets")
    if limit is not None and len(out) > limit:
        # a seeded sample, not the first sets by user id (users in id order may differ from the rest), and
        # the same whatever the training seed: every seed's models rank the same users
        keep = sorted(random.Random(SAMPLE_SEED).sample(range(len(out)), limit))
        out = [out[k] for k in keep]
    return out


def movie(m: dict) -> Movie:
    return Movie(m["title"], tuple(m["genres"]))
