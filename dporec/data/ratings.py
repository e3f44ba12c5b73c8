"""Ratings as every source yields them, and the training users' ratings kept beside the splits.

A source (dporec.data.sources) gives (ratings, movies): a DataFrame with COLUMNS (int64) and
{item_id: Movie}. The builders put each user's ratings in time order first (prepare). The training
users' ratings are written beside train.jsonl for the baseline rules, which never see a test user's.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

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
