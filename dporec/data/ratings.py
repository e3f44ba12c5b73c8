"""Ratings as every source yields them, the one rule of what counts as liked and disliked, and the training
users' ratings as they stood at any moment.

A source (dporec.data.sources) gives (ratings, movies): a DataFrame with COLUMNS and {item_id: Movie}; ids
and timestamps are integers, ratings whole stars (ML-1M, ML-100K: 1-5) or half stars (ML-10M and later:
0.5-5.0). The builders put each user's ratings in time order first (prepare). The training users' ratings
are written beside train.jsonl; whatever is derived from them for a pair (a baseline rule, a matched
negative) reads only those made strictly before the pair's own time (TrainRatings).

Liked and disliked (`liked`, `disliked`): a rating >= like_threshold is liked, <= dislike_threshold
disliked, anything between is neither (with the defaults 4 and 2 and half stars: 4.0-5.0 liked, 0.5-2.0
disliked, 2.5-3.5 neither). The pairs, the candidate sets, hit@1 and the baselines all ask these two.
"""
from __future__ import annotations

import gzip
import json
import re
from functools import cache, cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from dporec.data import task

COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
META_FILE = "baselines.json"
RATINGS_FILE = "train_ratings.csv.gz"
GZIP_LEVEL = 1  # the side file of ML-32M's training users (25M ratings): 9 s at level 1, 33 s at level 6


def liked(stars, like_threshold) -> np.ndarray:
    """Which ratings count as liked: >= like_threshold (data.like_threshold)."""
    return np.asarray(stars) >= like_threshold


def disliked(stars, dislike_threshold) -> np.ndarray:
    """Which ratings count as disliked: <= dislike_threshold (data.dislike_threshold)."""
    return np.asarray(stars) <= dislike_threshold


def rating_value(x) -> int | float:
    """A rating as a JSON number: 4 for whole stars (what ML-1M's files hold), 3.5 for a half star."""
    x = float(x)
    return int(x) if x.is_integer() else x


class Movie(NamedTuple):
    title: str              # as the source spells it, year included: "Lion King, The (1994)"
    genres: tuple[str, ...]

    @property
    def display(self) -> str:
        """How the prompt shows a movie: 'Heat (1995) (Action|Crime|Thriller)'."""
        return task.movie_text(self.title, self.genres)

    def record(self, item: int) -> dict:
        """The structured field records carry for a movie: {"item_id", "title", "year", "genres"}."""
        return {"item_id": int(item), "title": self.title, "year": self.year, "genres": list(self.genres)}

    @property
    def year(self) -> int | None:
        return _year(self.title)


@cache
def _year(title: str) -> int | None:
    """The year a title ends with, '(1994)'; asked once per movie, not once per record."""
    m = re.search(r"\((\d{4})\)\s*$", title)
    return int(m.group(1)) if m else None


def _order(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The stable order of rows by (first, second), both non-negative-offset integers: one argsort of a
    combined int64 key (lexsort of 32M rows takes 13 s, this 2 s)."""
    if first.size == 0:
        return np.arange(0)
    a = first.astype(np.int64) - int(first.min())
    b = second.astype(np.int64) - int(second.min())
    span = int(b.max()) + 1
    if int(a.max()) < (1 << 62) // span:
        return np.argsort(a * span + b, kind="stable")
    return np.lexsort((b, a))  # a range too wide for one key: never for unix times and MovieLens ids


def prepare(ratings: pd.DataFrame, movies: dict[int, Movie]) -> pd.DataFrame:
    """Ratings in each user's time order (ties keep file order), one rating per user and movie.

    Movies listed twice (same title and genres: 18 of them in ML-100K) are mapped to one id, so an
    example never offers the same movie as both options; a user's later rating of it wins.
    """
    canonical: dict[Movie, int] = {}
    ids = np.array(sorted(movies), dtype=np.int64)
    same = np.array([canonical.setdefault(movies[i], i) for i in ids], dtype=np.int64)
    items = ratings["item_id"].to_numpy()
    if (same != ids).any():  # a lookup table over the ids: Series.map of a dict is slow on 32M rows
        table = np.arange(int(max(ids.max(), items.max())) + 1, dtype=np.int64)
        table[ids] = same
        items = table[items].astype(items.dtype)
    order = _order(ratings["user_id"].to_numpy(), ratings["timestamp"].to_numpy())
    out = pd.DataFrame({"user_id": ratings["user_id"].to_numpy()[order], "item_id": items[order],
                        "rating": ratings["rating"].to_numpy()[order],
                        "timestamp": ratings["timestamp"].to_numpy()[order]}, copy=False)
    pair = out["user_id"].to_numpy().astype(np.int64) * (int(out["item_id"].max()) + 1) + out["item_id"]
    again = pd.Series(pair).duplicated(keep="last").to_numpy()
    return out[~again].reset_index(drop=True) if again.any() else out


def write_train_ratings(out_dir, train_ratings: pd.DataFrame, like_threshold) -> Path:
    """Write baselines.json and train_ratings.csv.gz (ratings of training users only) into out_dir."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    out = Path(out_dir)
    table = pa.Table.from_pandas(train_ratings[COLUMNS], preserve_index=False)
    # pyarrow writes CSV ~10x faster than pandas; mtime=0 keeps the bytes the same for the same ratings
    with gzip.GzipFile(out / RATINGS_FILE, "wb", compresslevel=GZIP_LEVEL, mtime=0) as f:
        f.write((",".join(COLUMNS) + "\n").encode())  # pyarrow would quote the header's names
        pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    meta = {"ratings_file": RATINGS_FILE, "like_threshold": rating_value(like_threshold),
            "users": int(train_ratings["user_id"].nunique()), "ratings": len(train_ratings),
            "note": "ratings of the train split's users only; read by the baseline rules"}
    path = out / META_FILE
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_train_ratings(train_file) -> tuple[pd.DataFrame, dict] | str:
    """(training users' ratings, their meta) from the folder holding data.train_file, or why there is none."""
    folder = Path(train_file).parent
    if not (folder / META_FILE).is_file():
        return (f"no {META_FILE} beside {train_file} (the builder, data/prepare_movielens.py, writes it "
                f"with the training users' ratings; a file without ratings cannot have these rules)")
    meta = json.loads((folder / META_FILE).read_text())
    return pd.read_csv(folder / meta["ratings_file"]), meta


class TrainRatings:
    """The training users' ratings queried as of a moment t: only ratings made strictly before t count.

    All ratings sorted by (item, time) under one int64 key (item id x time span + time), with running sums:
    a movie's count and mean before t are one binary search, for one movie or for many at once
    (counts_means). The users who liked each movie (liked()) with the time they did, for co-occurrence
    (cosine), are built on first use; co_occurrence=False (the builder) keeps no copy of the ratings for it.
    """

    def __init__(self, ratings: pd.DataFrame, like_threshold, co_occurrence: bool = True):
        self.like_threshold = like_threshold
        self._ratings = ratings if co_occurrence else None
        t = ratings["timestamp"].to_numpy().astype(np.int64)
        stars = ratings["rating"].to_numpy(dtype=float)
        order = np.argsort(t, kind="stable")
        self.times = t[order]
        self.running = np.r_[0.0, np.cumsum(stars[order])]
        del order
        self.t0 = int(t.min()) if t.size else 0
        self.span = (int(t.max()) - self.t0 + 2) if t.size else 2  # offsets 0..span-1, queries clipped to it
        item = ratings["item_id"].to_numpy().astype(np.int64)
        self.max_item = int(item.max()) + 1 if item.size else 0  # ids above it are movies nobody rated
        key = item * self.span + (t - self.t0)
        del item, t
        by_item = np.argsort(key, kind="stable")
        self.keys = key[by_item]
        del key
        # sums of half stars are exact in float64, so a difference of running sums is the exact sum
        self.item_running = np.r_[0.0, np.cumsum(stars[by_item])]
        self.starts = np.searchsorted(self.keys, np.arange(self.max_item + 1, dtype=np.int64) * self.span)

    def global_mean(self, t: int) -> float:
        """Mean of every training rating before t (3.0, the scale's middle, when there is none yet)."""
        return float(self._global_means(t))

    def _global_means(self, t) -> np.ndarray:
        k = np.searchsorted(self.times, t, "left")
        return np.where(k > 0, self.running[k] / np.maximum(k, 1), 3.0)

    def _before(self, items, t) -> tuple[np.ndarray, np.ndarray]:
        """(first row of each item in the key order, how many of its ratings precede t); 0 for a movie
        nobody rated."""
        idx = np.clip(np.asarray(items, dtype=np.int64), 0, self.max_item)
        offset = np.clip(np.asarray(t, dtype=np.int64) - self.t0, 0, self.span - 1)
        start = self.starts[idx]
        return start, np.searchsorted(self.keys, idx * self.span + offset, "left") - start

    def counts_means(self, items, t) -> tuple[np.ndarray, np.ndarray]:
        """(counts, means) of many movies before t: how many training users rated each (its popularity
        then) and its mean rating (the overall mean then when nobody had rated it yet)."""
        start, k = self._before(items, t)
        sums = self.item_running[start + k] - self.item_running[start]
        return k, np.where(k > 0, sums / np.maximum(k, 1), self._global_means(t))

    def count(self, item: int, t: int) -> int:
        """Training users who rated the movie before t (its popularity then)."""
        return int(self.counts_means([item], t)[0][0])

    def mean(self, item: int, t: int) -> float:
        """The movie's mean rating before t; the overall mean then when nobody had rated it yet."""
        return float(self.counts_means([item], t)[1][0])

    @cached_property
    def likers(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{item: (ids of the users who liked it, sorted; when they rated it)}: built on first use (the
        evaluation's co-occurrence rule), not by the builder."""
        if self._ratings is None:
            raise ValueError("TrainRatings(..., co_occurrence=False) keeps no ratings for cosine")
        r = self._ratings
        r = r[liked(r["rating"].to_numpy(), self.like_threshold)]
        r = r.sort_values(["item_id", "user_id"], kind="stable")
        return {int(i): (g["user_id"].to_numpy(), g["timestamp"].to_numpy())
                for i, g in r.groupby("item_id", sort=False)}

    def cosine(self, i: int, j: int, t: int) -> float:
        """Cosine similarity of two movies' sets of users who liked them before t."""
        a, b = self.likers.get(int(i)), self.likers.get(int(j))
        if a is None or b is None:
            return 0.0
        na, nb = int(np.sum(a[1] < t)), int(np.sum(b[1] < t))
        if not na or not nb:
            return 0.0
        _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
        both = int(np.sum(np.maximum(a[1][ia], b[1][ib]) < t))
        return both / np.sqrt(na * nb)
