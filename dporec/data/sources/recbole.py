"""MovieLens-100K as RecBole's atomic files, shipped inside the recbole package (read, never imported:
importing recbole pulls ray and much more). Real ratings that install from the package index."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from dporec import UserError
from dporec.data.ratings import Movie


def ml100k_dir() -> Path | None:
    """Where recbole keeps its ML-100K example files, found without importing recbole."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    return folder if (folder / "ml-100k.inter").is_file() else None


def _read_atomic(path: Path) -> pd.DataFrame:
    """A recbole atomic file: tab-separated, headers typed like 'user_id:token'."""
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def read_ml100k() -> tuple[pd.DataFrame, dict[int, Movie]]:
    folder = ml100k_dir()
    if folder is None:
        raise UserError("recbole:ml-100k needs the recbole package (its files only): "
                        "pip install --no-deps recbole==1.2.1")
    inter = _read_atomic(folder / "ml-100k.inter")
    ratings = inter[["user_id", "item_id", "rating", "timestamp"]].astype(float).astype(np.int64)
    items = _read_atomic(folder / "ml-100k.item")
    movies = {}
    columns = ["item_id", "movie_title", "release_year", "class"]
    for item, title, year, genres in items[columns].itertuples(False):
        # ML-1M puts the year in the title; ML-100K has it apart (and 'unkonwn' for one item)
        full = f"{title} ({year})" if year.isdigit() else title
        movies[int(item)] = Movie(full, tuple(genres.split()))
    return ratings, movies
