"""Ratings as every source yields them, and the training users' ratings as they stood at any moment.

A source (dporec.data.sources) gives (ratings, movies): a DataFrame with COLUMNS (int64) and
{item_id: Movie}. The builders put each user's ratings in time order first (prepare). The training
users' ratings are written beside train.jsonl; whatever is derived from them for a pair (a baseline
rule, a matched negative) reads only those made strictly before the pair's own time (TrainRatings).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from dporec.data import task

COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
META_FILE = "baselines.json"
RATINGS_FILE = "train_ratings.csv.gz"


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
        m = re.search(r"\((\d{4})\)\s*$", self.title)
        return int(m.group(1)) if m else None


def prepare(ratings: pd.DataFrame, movies: dict[int, Movie]) -> pd.DataFrame:
    """Ratings in each user's time order (ties keep file order), one rating per user and movie.

    Movies listed twice (same title and genres: 18 of them in ML-100K) are mapped to one id, so an
    example never offers the same movie as both options; a user's later rating of it wins.
    """
    canonical = {}
    mapping = {item: canonical.setdefault(movie, item) for item, movie in sorted(movies.items())}
    ratings = ratings.assign(item_id=ratings["item_id"].map(mapping)).reset_index(drop=True)
    ratings = ratings.rename_axis("row").sort_values(["user_id", "timestamp", "row"])
    return ratings.drop_duplicates(["user_id", "item_id"], keep="last").reset_index(drop=True)


def write_train_ratings(out_dir, train_ratings: pd.DataFrame, like_threshold: int) -> Path:
    """Write baselines.json and train_ratings.csv.gz (ratings of training users only) into out_dir."""
    out = Path(out_dir)
    train_ratings[COLUMNS].to_csv(out / RATINGS_FILE, index=False, compression={"method": "gzip", "mtime": 0})
    meta = {"ratings_file": RATINGS_FILE, "like_threshold": int(like_threshold),
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

    Per item: rating times in order with running sums (count and mean before t by binary search), and
    the users who liked it (rating >= like_threshold) with the time they did, for co-occurrence.
    """

    def __init__(self, ratings: pd.DataFrame, like_threshold: int):
        r = ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
        self.times = r["timestamp"].to_numpy()
        self.running = np.r_[0.0, np.cumsum(r["rating"].to_numpy(dtype=float))]
        self.items: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for item, g in r.groupby("item_id", sort=False):
            t = g["timestamp"].to_numpy()
            self.items[int(item)] = (t, np.r_[0.0, np.cumsum(g["rating"].to_numpy(dtype=float))])
        liked = r[r["rating"] >= like_threshold].sort_values(["item_id", "user_id"], kind="stable")
        self.likers = {int(i): (g["user_id"].to_numpy(), g["timestamp"].to_numpy())
                       for i, g in liked.groupby("item_id", sort=False)}

    def global_mean(self, t: int) -> float:
        """Mean of every training rating before t (3.0, the scale's middle, when there is none yet)."""
        k = int(np.searchsorted(self.times, t, "left"))
        return float(self.running[k] / k) if k else 3.0

    def count(self, item: int, t: int) -> int:
        """Training users who rated the movie before t (its popularity then)."""
        got = self.items.get(int(item))
        return int(np.searchsorted(got[0], t, "left")) if got else 0

    def mean(self, item: int, t: int) -> float:
        """The movie's mean rating before t; the overall mean then when nobody had rated it yet."""
        got = self.items.get(int(item))
        k = int(np.searchsorted(got[0], t, "left")) if got else 0
        return float(got[1][k] / k) if k else self.global_mean(t)

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
