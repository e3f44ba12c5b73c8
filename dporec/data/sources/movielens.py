"""Every MovieLens release as a source: its zip or unpacked folder, told by its files, its zip's MD5 checked
where GroupLens publishes one, and any malformed line named by file and line (the releases:
dporec.data.sources.RELEASES).

Two layouts, genres `|`-separated in both:
  dat  ML-1M and ML-10M: ratings.dat `UserID::MovieID::Rating::Timestamp` and movies.dat
       `MovieID::Title::Genres`, no header. ML-10M (unpacks into ml-10M100K/, ships tags.dat and no
       users.dat): half stars 0.5-5.0, UTF-8 where it decodes as such (else latin-1). Any other folder or
       zip in this layout is ML-1M: whole stars 1-5, latin-1.
  csv  ML-20M, ML-25M, ML-32M, ml-latest-small: ratings.csv `userId,movieId,rating,timestamp` and movies.csv
       `movieId,title,genres` with headers; a title with a comma is in double quotes; UTF-8; half stars;
       a movie without genres says "(no genres listed)" (read as no genres).
Licence: research use, no redistribution (never commit them or anything derived from them).

Ratings are parsed by pyarrow (a 32M-line ratings.csv in about 4 s on 2 cores); only when that fails, or a
value is out of range, does a slow line-by-line pass find the first bad line to name it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from dporec import UserError, broken_link
from dporec.data.ratings import COLUMNS, Movie
from dporec.data.sources.releases import RELEASES, Release, release

RATING_FIELDS = {"dat": ("UserID", "MovieID", "Rating", "Timestamp"),
                 "csv": ("userId", "movieId", "rating", "timestamp")}
MOVIE_FIELDS = {"dat": ("MovieID", "Title", "Genres"), "csv": ("movieId", "title", "genres")}
SEPARATED = {"dat": "'::'-separated", "csv": "comma-separated"}
RATINGS_NAMES = ("ratings.dat", "ratings.csv")
NO_GENRES = "(no genres listed)"  # how the CSV releases (and ML-10M) write a movie without genres
# a CSV folder or zip whose name is none of RELEASES' (ml-latest, a trimmed copy): read as the CSV releases
OTHER_CSV = Release("movielens-csv", "a MovieLens release in the CSV layout", "", "csv", True, 0, 0, 0, None,
                    None, "not a release listed here")


@dataclass(frozen=True)
class _File:
    where: str                   # for messages: the path, or ZIP/member
    open: Callable[[], io.BufferedIOBase]


# ---------------------------------------------------------------------------------------------
# Which release, where its files are, and its checksum

def _identify(where: Path, names: set[str], hints: set[str]) -> Release:
    """The release that `names` (the files present) and `hints` (the zip's and folder's names) tell."""
    named = next((r for r in RELEASES if r.name in hints or r.folder in hints), None)
    if {"ratings.csv", "movies.csv"} <= names:
        return named if named and named.layout == "csv" else replace(OTHER_CSV, name=sorted(hints)[0])
    if {"ratings.dat", "movies.dat"} <= names:
        if named and named.layout == "dat":
            return named
        # ML-10M ships tags.dat and no users.dat; anything else in this layout is read as the thesis's ML-1M,
        # whole stars, so a half star there is named as a malformed line rather than read
        return release("ml-10m") if "tags.dat" in names and "users.dat" not in names else release("ml-1m")
    raise UserError(f"{where}: no MovieLens ratings here: expected ratings.dat and movies.dat (ML-1M, "
                    "ML-10M) or ratings.csv and movies.csv (ML-20M and later); give a release's zip or the "
                    "folder it unpacks into")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):  # 16 MiB at a time: ML-25M's zip is 262 MB
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(path: Path, rel: Release, allow_mismatch: bool) -> str:
    """What the checksum said, for the summary; refuses a zip named as a release whose MD5 differs from the
    published one."""
    if path.name != f"{rel.name}.zip":
        return f"not checked: only a zip named {rel.name}.zip is taken for the published one"
    if rel.md5 is None:
        return f"not checked: {rel.md5_note}"
    digest = _md5(path)
    if digest == rel.md5:
        return f"matches {rel.url}.md5"
    if not allow_mismatch:
        raise UserError(f"{path}: MD5 is {digest}, but the published {rel.name}.zip has {rel.md5}. The "
                        f"download is incomplete or a different file; download it again, or pass "
                        f"--allow-md5-mismatch if you know what it is.")
    return f"differs from the published one ({digest}), accepted by --allow-md5-mismatch"


def _not_found(path: Path) -> UserError:
    broken = broken_link(path)
    if broken:
        return UserError(broken)
    stem = path.name.removesuffix(".zip")
    rel = next((r for r in RELEASES if stem in (r.name, r.folder)), release("ml-1m"))
    return UserError(f"data source not found: {path}. MovieLens may not be redistributed: download "
                     f"{rel.name}.zip yourself from {rel.url} (terms: "
                     f"https://grouplens.org/datasets/movielens/) and put it at {path}, e.g. "
                     f"`curl -L -o {path} {rel.url}`"
                     + ("; its MD5 is checked" if rel.md5 else ""))


def locate(path: Path, allow_md5_mismatch: bool = False) -> tuple[Release, dict[str, _File], str]:
    """(the release, {file name: _File} of its ratings and movies files, what the checksum said)."""
    if path.is_dir():
        inside = [d for d in path.iterdir() if d.is_dir() and any((d / n).is_file() for n in RATINGS_NAMES)]
        if not any((path / n).is_file() for n in RATINGS_NAMES) and len(inside) == 1:
            path = inside[0]  # the folder the zip was unpacked in, holding the release's own folder
        present = {p.name: p for p in path.iterdir() if p.is_file()}
        rel = _identify(path, set(present), {path.name})
        files = {n: _File(str(present[n]), lambda p=present[n]: p.open("rb")) for n in rel.files}
        return rel, files, "not checked: an unpacked folder (GroupLens publishes the zip's MD5)"
    if not path.is_file():
        raise _not_found(path)
    if path.suffix != ".zip":
        raise UserError(f"{path}: expected a MovieLens release's zip (e.g. ml-25m.zip) or the folder it "
                        "unpacks into")
    try:
        with zipfile.ZipFile(path) as z:
            members = sorted((n for n in z.namelist() if not n.endswith("/")), key=lambda n: n.count("/"))
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a readable zip file") from None
    by_name: dict[str, str] = {}
    for n in members:  # the shallowest file of each name: the release's own, not a copy further down
        by_name.setdefault(Path(n).name, n)
    folders = {n.split("/")[0] for n in members if "/" in n}
    rel = _identify(path, set(by_name), {path.name.removesuffix(".zip"), *folders})
    checksum = _check_md5(path, rel, allow_md5_mismatch)

    def opener(member: str):
        def open_member():
            with zipfile.ZipFile(path) as z:  # the member stays readable after the archive closes
                return z.open(member)
        return open_member
    return rel, {n: _File(f"{path}/{by_name[n]}", opener(by_name[n])) for n in rel.files}, checksum


# ---------------------------------------------------------------------------------------------
# Ratings: pyarrow first, a line-by-line pass to name what it could not read

def _is_int(value: str) -> bool:
    return value.strip().lstrip("-").isdigit()


def _rating_problem(fields: list[str], rel: Release, known: set | None) -> str | None:
    """What is wrong with one ratings line's fields, or None."""
    names = RATING_FIELDS[rel.layout]
    if len(fields) != len(names):
        sep = "::" if rel.layout == "dat" else ","
        return f"expected 4 {SEPARATED[rel.layout]} fields ({sep.join(names)}), got {len(fields)}"
    for name, value in zip(names, fields):
        if not value.strip():
            return f"field '{name}' is empty" + (" (a rating with no user)" if name == names[0] else "")
    for name, value in zip(names, fields):
        if name != names[2] and not _is_int(value):
            return f"field '{name}' is not an integer: {value!r}"
        if name == names[2] and not rel.half_stars and not _is_int(value):
            return f"field '{name}' is not an integer: {value!r}"
    stars = fields[2].strip()
    if not rel.half_stars:
        if not 1 <= int(stars) <= 5:
            return f"field '{names[2]}' must be 1-5, got {stars}"
    else:
        try:
            value = float(stars)
        except ValueError:
            return f"field '{names[2]}' is not a number: {stars!r}"
        if not (0.5 <= value <= 5 and (2 * value).is_integer()):
            return f"field '{names[2]}' must be 0.5-5.0 in half stars, got {stars}"
    if known is not None and int(fields[1]) not in known:
        return f"{names[1]} {int(fields[1])} is not in {rel.files[1]}"
    return None


def _first_bad_line(f: _File, rel: Release, known: set | None = None, why: str = "") -> str:
    """The 'FILE:LINE: problem' message for the first ratings line that is wrong (the slow pass, run only to
    explain an error)."""
    header = ",".join(RATING_FIELDS["csv"])
    with f.open() as raw:
        text = io.TextIOWrapper(raw, encoding="latin-1", newline="")  # numbers only: any byte decodes
        for n, line in enumerate(text, 1):
            line = line.rstrip("\r\n")
            if rel.layout == "csv" and n == 1:
                if line.strip() != header:
                    return f"{f.where}:1: expected the header {header}, got {line!r}"
                continue
            if not line.strip():
                continue
            fields = line.split("::") if rel.layout == "dat" else next(csv.reader([line]))
            problem = _rating_problem(fields, rel, known)
            if problem:
                return f"{f.where}:{n}: {problem}"
    fields = ("::" if rel.layout == "dat" else ",").join(RATING_FIELDS[rel.layout])
    return f"{f.where}: could not be read as {fields} lines" + (f" ({why})" if why else "")


def _parse_ratings(f: _File, rel: Release) -> pd.DataFrame:
    """The ratings file as COLUMNS: ids int32, timestamps int64, ratings int64 (whole) or float64 (half
    stars)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    stars = pa.float64() if rel.half_stars else pa.int64()
    if rel.layout == "dat":
        # split on ':' (pyarrow takes one-character separators): '::' leaves an empty column between fields,
        # typed null so that anything in it fails the parse; titles (which may hold ':') are not in this file
        names = ["u", "-1", "i", "-2", "r", "-3", "t"]
        read = pacsv.ReadOptions(column_names=names)
        parse = pacsv.ParseOptions(delimiter=":", quote_char=False)
        types = {"u": pa.int32(), "i": pa.int32(), "r": stars, "t": pa.int64(),
                 **{n: pa.null() for n in names if n.startswith("-")}}
    else:
        names = ["u", "i", "r", "t"]
        read = pacsv.ReadOptions(column_names=names, skip_rows=1)  # the header is checked below
        parse = pacsv.ParseOptions(delimiter=",")
        types = {"u": pa.int32(), "i": pa.int32(), "r": stars, "t": pa.int64()}
    try:
        if rel.layout == "csv":
            with f.open() as raw:
                first = raw.readline().decode("latin-1").strip()
            if first != ",".join(RATING_FIELDS["csv"]):
                raise UserError(_first_bad_line(f, rel))
        with f.open() as raw:
            table = pacsv.read_csv(raw, read_options=read, parse_options=parse,
                                   convert_options=pacsv.ConvertOptions(column_types=types))
    except pa.ArrowInvalid as e:
        raise UserError(_first_bad_line(f, rel, why=str(e).splitlines()[0])) from None
    except zipfile.BadZipFile as e:
        raise UserError(f"{f.where}: the zip is damaged ({e}); download it again") from None
    if table.num_rows == 0:
        raise UserError(f"{f.where}: no ratings")
    cols = {c: table.column(k).to_numpy() if table.column(k).null_count == 0 else None
            for c, k in zip(COLUMNS, ("u", "i", "r", "t"))}
    if any(v is None for v in cols.values()):  # an empty field
        raise UserError(_first_bad_line(f, rel))
    r = cols["rating"]
    ok = (0.5 <= r.min() and r.max() <= 5 and np.all((2 * r) == np.floor(2 * r))) if rel.half_stars \
        else (1 <= r.min() and r.max() <= 5)
    if not ok:
        raise UserError(_first_bad_line(f, rel))
    return pd.DataFrame(cols, copy=False)  # the arrays are this frame's own: no second copy of 32M rows


# ---------------------------------------------------------------------------------------------
# Movies

def _movie_text(f: _File, rel: Release) -> str:
    with f.open() as raw:
        data = raw.read()
    if rel.name == "ml-1m":
        return data.decode("latin-1")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if rel.layout == "dat":  # ML-10M's own encoding is not stated: latin-1 reads any byte
            return data.decode("latin-1")
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{f.where}:{line}: not UTF-8 (the CSV releases are UTF-8): {e.reason}") from None


def _movie_rows(f: _File, rel: Release, text: str):
    """(line number, fields) of each movie line, the header checked."""
    if rel.layout == "dat":
        for n, line in enumerate(text.split("\n"), 1):
            line = line.rstrip("\r")
            if line.strip():
                yield n, line.split("::")
        return
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header, line = ",".join(MOVIE_FIELDS["csv"]), 0
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            if start == 1:
                if ",".join(row).strip() != header:
                    raise UserError(f"{f.where}:1: expected the header {header}, got {','.join(row)!r}")
            elif any(x.strip() for x in row):
                yield line, row
    except csv.Error as e:  # named where the broken row begins: a stray quote runs it on over later lines
        on = f"; the row runs on to line {reader.line_num}" if reader.line_num > line + 1 else ""
        raise UserError(f"{f.where}:{line + 1}: a double quote opened on this line is never closed, or "
                        f"stands inside an unquoted field ({e}{on})") from None


def _parse_movies(f: _File, rel: Release) -> dict[int, Movie]:
    names = MOVIE_FIELDS[rel.layout]
    movies = {}
    for n, fields in _movie_rows(f, rel, _movie_text(f, rel)):
        if len(fields) != 3:
            sep = "::" if rel.layout == "dat" else ","
            hint = ("; a title with a comma must be in double quotes"
                    if rel.layout == "csv" and len(fields) > 3 else "")
            raise UserError(f"{f.where}:{n}: expected 3 {SEPARATED[rel.layout]} fields "
                            f"({sep.join(names)}), got {len(fields)}{hint}")
        if not _is_int(fields[0]):
            raise UserError(f"{f.where}:{n}: field '{names[0]}' is not an integer: {fields[0]!r}")
        if not fields[1].strip() or not fields[2].strip():
            raise UserError(f"{f.where}:{n}: empty {names[1]} or {names[2]}")
        item = int(fields[0])
        if item in movies:
            raise UserError(f"{f.where}:{n}: {names[0]} {item} appears twice")
        genres = fields[2].strip()
        movies[item] = Movie(fields[1].strip(), () if genres == NO_GENRES else tuple(genres.split("|")))
    if not movies:
        raise UserError(f"{f.where}: no movies")
    return movies


# ---------------------------------------------------------------------------------------------

def read_release(path: str | Path, allow_md5_mismatch: bool = False
                 ) -> tuple[pd.DataFrame, dict[int, Movie], dict]:
    """Ratings (COLUMNS), movies and {"release", "md5"} (which release, what its checksum said) from a
    release's zip or folder."""
    rel, files, checksum = locate(Path(path), allow_md5_mismatch)
    ratings_file, movies_file = (files[n] for n in rel.files)
    movies = _parse_movies(movies_file, rel)
    ratings = _parse_ratings(ratings_file, rel)
    unknown = np.setdiff1d(np.unique(ratings["item_id"].to_numpy()), np.fromiter(movies, np.int64))
    if unknown.size:
        message = _first_bad_line(ratings_file, rel, known=set(movies))
        raise UserError(f"{message} ({unknown.size} unknown ids)")
    return ratings, movies, {"release": rel.name, "md5": checksum}


def read(path: str | Path, allow_md5_mismatch: bool = False) -> tuple[pd.DataFrame, dict[int, Movie]]:
    """Ratings and movies from a release's zip or folder (read_release without what was read)."""
    ratings, movies, _ = read_release(path, allow_md5_mismatch)
    return ratings, movies
