"""MovieLens-1M, the thesis's ratings: the ml-1m/ folder or ml-1m.zip, read line-checked, MD5 verified.

`ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and `movies.dat` (`MovieID::Title::Genres`,
genres `|`-separated), latin-1. Licence: research use, no redistribution (never commit them).
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from dporec import UserError, broken_link
from dporec.data.ratings import COLUMNS, Movie

MD5 = "c4d9eecfca2ab87c1945afe126590906"
URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"  # from https://grouplens.org/datasets/movielens/1m/
RATING_FIELDS = ("UserID", "MovieID", "Rating", "Timestamp")


def _first_bad_line(text: str, where: str, check: Callable[[str], str | None]) -> str:
    """The 'FILE:LINE: problem' message for the first line `check` rejects.

    The readers parse whole files with pandas and only come here once that failed, so the slow
    line-by-line pass runs only to explain an error.
    """
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if line.strip() and (problem := check(line)):
            return f"{where}:{n}: {problem}"
    return f"{where}: could not be parsed as UserID::MovieID::Rating::Timestamp lines"


def _check_rating_line(line: str) -> str | None:
    fields = line.split("::")
    if len(fields) != len(RATING_FIELDS):
        return f"expected 4 '::'-separated fields ({'::'.join(RATING_FIELDS)}), got {len(fields)}"
    for name, value in zip(RATING_FIELDS, fields):
        if not value.strip().lstrip("-").isdigit():
            return f"field '{name}' is not an integer: {value!r}"
    if not 1 <= int(fields[2]) <= 5:
        return f"field 'Rating' must be 1-5, got {fields[2]}"
    return None


def _parse_ratings_dat(text: str, where: str) -> pd.DataFrame:
    try:
        # the C parser takes one-character separators only; '::' never occurs inside a field
        df = pd.read_csv(io.StringIO(text.replace("::", "\t")), sep="\t", header=None)
        ok = (df.shape[1] == 4 and all(pd.api.types.is_integer_dtype(t) for t in df.dtypes)
              and df[2].between(1, 5).all())
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        ok = False
    if not ok:
        raise UserError(_first_bad_line(text, where, _check_rating_line))
    df.columns = COLUMNS
    return df.astype(np.int64)


def _parse_movies_dat(text: str, where: str) -> dict[int, Movie]:
    movies = {}
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != 3:
            raise UserError(f"{where}:{n}: expected 3 '::'-separated fields "
                            f"(MovieID::Title::Genres), got {len(fields)}")
        if not fields[0].strip().isdigit():
            raise UserError(f"{where}:{n}: field 'MovieID' is not an integer: {fields[0]!r}")
        if not fields[1].strip() or not fields[2].strip():
            raise UserError(f"{where}:{n}: empty Title or Genres")
        item = int(fields[0])
        if item in movies:
            raise UserError(f"{where}:{n}: MovieID {item} appears twice")
        movies[item] = Movie(fields[1].strip(), tuple(fields[2].strip().split("|")))
    if not movies:
        raise UserError(f"{where}: no movies")
    return movies


def _check_md5(path: Path, allow_mismatch: bool) -> None:
    digest = hashlib.md5(path.read_bytes()).hexdigest()
    if digest != MD5 and not allow_mismatch:
        raise UserError(f"{path}: MD5 is {digest}, but the published ml-1m.zip has {MD5}. The "
                        f"download is incomplete or a different file; download it again, or pass "
                        f"--allow-md5-mismatch if you know what it is.")


def _texts(path: Path, allow_md5_mismatch: bool) -> dict[str, tuple[str, str]]:
    """{'ratings.dat': (text, where), 'movies.dat': (text, where)} from a folder or a zip."""
    wanted = ("ratings.dat", "movies.dat")
    if path.is_dir():
        missing = [w for w in wanted if not (path / w).is_file()]
        if missing:
            raise UserError(f"{path}: no {' or '.join(missing)} here; give "
                            "the unzipped ml-1m/ folder or ml-1m.zip")
        return {w: ((path / w).read_text(encoding="latin-1"), str(path / w)) for w in wanted}
    if not path.is_file():
        broken = broken_link(path)
        if broken:
            raise UserError(broken)
        raise UserError(f"data source not found: {path}. MovieLens-1M may not be redistributed: download "
                        f"ml-1m.zip yourself from {URL} (terms: "
                        f"https://grouplens.org/datasets/movielens/1m/) and put it at {path}, e.g. "
                        f"`curl -L -o {path} {URL}`; its MD5 is checked")
    if path.suffix != ".zip":
        raise UserError(f"{path}: expected the ml-1m/ folder or ml-1m.zip")
    if path.name == "ml-1m.zip":
        _check_md5(path, allow_md5_mismatch)
    try:
        with zipfile.ZipFile(path) as z:
            members = {Path(n).name: n for n in z.namelist() if Path(n).name in wanted}
            missing = [w for w in wanted if w not in members]
            if missing:
                raise UserError(f"{path}: the zip holds no {' or '.join(missing)}")
            return {w: (z.read(members[w]).decode("latin-1"), f"{path}/{members[w]}") for w in wanted}
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a readable zip file") from None


def read(path: str | Path, allow_md5_mismatch: bool = False) -> tuple[pd.DataFrame, dict[int, Movie]]:
    """Ratings and movies from the ML-1M folder or zip (latin-1, '::'-separated)."""
    texts = _texts(Path(path), allow_md5_mismatch)
    ratings = _parse_ratings_dat(*texts["ratings.dat"])
    movies = _parse_movies_dat(*texts["movies.dat"])
    unknown = np.setdiff1d(ratings["item_id"].unique(), list(movies))
    if unknown.size:
        raise UserError(f"{texts['ratings.dat'][1]}: MovieID {unknown[0]} is not in movies.dat "
                        f"({unknown.size} unknown ids)")
    return ratings, movies
