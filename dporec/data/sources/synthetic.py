"""Synthetic ratings in the exact MovieLens-1M file format (the `synthetic:N` source, and every fixture),
and in every other release's format (write_release: ML-10M's `::` files, the CSV releases' files).

MovieLens may not be redistributed, so fixtures come from here, with a known ground truth: each user
likes a few of the 18 ML genres and dislikes a few others; ratings >= 4 fall mostly on movies of
liked genres, <= 2 on disliked ones, with noise. A few "generous" users never rate below 3 (the
builder's unseen-popular negative), and timestamps repeat within a user (same-second ties, as in
ML-1M). Titles are "Synthetic Movie 17 (1994)": never a real row. write_ml1m_shared_tastes writes the
learnable setting's ratings with the same parts (rated_movies, star_ratings, timestamps, users_table).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")
ML1M_USERS, ML1M_MOVIES, ML1M_RATINGS_PER_USER = 6040, 3883, 165  # 6,040 x 165 ~ 1M ratings
MIN_RATINGS_PER_USER = 20  # as in ML-1M: every user has at least 20 ratings
GENEROUS_FRACTION = 0.05   # users who never rate below 3 (no "disliked" negative for them)
TIE_PROBABILITY = 0.2      # share of ratings given in the same second as the previous one
ML1M_START, ML1M_END = 956703932, 1046454590  # the ML-1M timestamp range
AGES = (1, 18, 25, 35, 45, 50, 56)  # ML-1M's age codes
# Stars = 3 + TASTE_EFFECT x (has a liked genre - has a disliked genre) + user bias + noise. Strong
# enough that a movie without a liked genre rarely reaches 4 stars (~3%), so the liked movies in a
# history show the user's tastes: on test pairs built from 600 users the genre-overlap rule picks
# the liked movie 87-89% of the time, the mean-rating rule 75-79% (the baseline rules, seeds 0 and 1).
TASTE_EFFECT, USER_BIAS_SD, NOISE_SD = 2.0, 0.15, 0.25
LIKED_GENRES, DISLIKED_GENRES = 2, 4  # few liked genres: they recur in a history
# log-weights of a genre being drawn as liked (and, negated, as disliked): from +APPEAL to -APPEAL
# over a fixed shuffle of GENRES; some genres are liked by many users, as in MovieLens
APPEAL = 1.5
GENRE_APPEAL = np.linspace(APPEAL, -APPEAL, len(GENRES))[np.random.default_rng(1).permutation(len(GENRES))]


def _movies(rng, n_movies: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Each movie gets 1-3 genres; returns the (n_movies, 18) genre mask and movies.dat rows."""
    n_genres = rng.integers(1, 4, n_movies)
    keys = rng.random((n_movies, len(GENRES)))
    ranks = keys.argsort(axis=1).argsort(axis=1)
    mask = ranks < n_genres[:, None]
    names = np.array(GENRES)
    ids = np.arange(1, n_movies + 1)
    years = rng.integers(1919, 2001, n_movies)
    table = pd.DataFrame({
        "id": ids,
        "title": [f"Synthetic Movie {i} ({y})" for i, y in zip(ids, years)],
        "genres": ["|".join(names[row]) for row in mask],
    })
    return mask, table


def _tastes(rng, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """LIKED_GENRES liked and DISLIKED_GENRES disliked genres per user, never overlapping.

    Drawn at random, weighted by a fixed appeal per genre (GENRE_APPEAL), so tastes are personal
    but not uniform.
    """
    gumbel = lambda: -np.log(-np.log(rng.random((n_users, len(GENRES)))))  # noqa: E731
    appeal = GENRE_APPEAL
    liked = np.zeros((n_users, len(GENRES)), bool)
    rows = np.arange(n_users)[:, None]
    liked[rows, (-(appeal + gumbel())).argsort(axis=1)[:, :LIKED_GENRES]] = True
    # among the rest, the least appealing genres are the likeliest to be disliked
    dislike_key = np.where(liked, -np.inf, -appeal + gumbel())
    disliked = np.zeros_like(liked)
    disliked[rows, (-dislike_key).argsort(axis=1)[:, :DISLIKED_GENRES]] = True
    return liked, disliked


def rated_movies(rng, counts: np.ndarray, n_movies: int) -> np.ndarray:
    """For each user, `count` distinct movies drawn with a long-tailed popularity (as in ML-1M)."""
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.8
    popularity = popularity[rng.permutation(n_movies)]
    popularity /= popularity.sum()
    return np.concatenate([rng.choice(n_movies, size=c, replace=False, p=popularity) for c in counts])


def timestamps(rng, counts: np.ndarray) -> np.ndarray:
    """Non-decreasing per user: a random start plus exponential gaps, some of them zero (ties)."""
    gaps = rng.exponential(86400.0, counts.sum()).astype(np.int64)
    gaps[rng.random(gaps.size) < TIE_PROBABILITY] = 0
    first = np.r_[0, np.cumsum(counts)[:-1]]
    starts = rng.integers(ML1M_START, ML1M_END - 90 * 86400, counts.size)
    gaps[first] = starts
    running = np.cumsum(gaps)
    return running - np.repeat(running[first] - starts, counts)


def star_ratings(rng, users, movies, liked, disliked, genre_mask) -> np.ndarray:
    """1-5 stars: liked genres push up, disliked genres push down, plus user bias and noise."""
    likes = (genre_mask[movies] & liked[users]).any(axis=1)
    dislikes = (genre_mask[movies] & disliked[users]).any(axis=1)
    bias = rng.normal(0.0, USER_BIAS_SD, liked.shape[0])[users]
    noise = rng.normal(0.0, NOISE_SD, users.size)
    score = 3.0 + TASTE_EFFECT * (likes.astype(float) - dislikes) + bias + noise
    stars = np.clip(np.rint(score), 1, 5).astype(np.int64)
    generous = rng.random(liked.shape[0]) < GENEROUS_FRACTION
    return np.where(generous[users], np.maximum(stars, 3), stars)


def users_table(rng, n_users: int) -> pd.DataFrame:
    return pd.DataFrame({
        "id": np.arange(1, n_users + 1),
        "gender": rng.choice(["M", "F"], n_users),
        "age": rng.choice(AGES, n_users),
        "occupation": rng.integers(0, 21, n_users),
        "zip": [f"{z:05d}" for z in rng.integers(0, 100000, n_users)],
    })


def write_dat(path: Path, table: pd.DataFrame) -> None:
    """`::`-separated, latin-1, no header: pandas cannot write a two-character separator, so write
    tabs (no field contains one) and replace them."""
    text = table.to_csv(sep="\t", header=False, index=False, lineterminator="\n")
    path.write_text(text.replace("\t", "::"), encoding="latin-1")


def write_ml1m(out_dir: str | Path, n_users: int = ML1M_USERS, n_movies: int = ML1M_MOVIES,
               ratings_per_user: int = ML1M_RATINGS_PER_USER, seed: int = 0) -> Path:
    """Write ratings.dat, movies.dat and users.dat in ML-1M format into `out_dir`; return it.

    `ratings_per_user` is the mean; every user gets at least 20 ratings (capped at `n_movies`).
    The defaults give ML-1M's size. Deterministic for a seed.
    """
    if n_users < 1 or n_movies < MIN_RATINGS_PER_USER or ratings_per_user < MIN_RATINGS_PER_USER:
        raise ValueError(f"need n_users >= 1, n_movies >= {MIN_RATINGS_PER_USER} and "
                         f"ratings_per_user >= {MIN_RATINGS_PER_USER}")
    rng = np.random.default_rng(seed)
    genre_mask, movies_table = _movies(rng, n_movies)
    liked, disliked = _tastes(rng, n_users)
    return _write_folder(out_dir, rng, movies_table, genre_mask, liked, disliked, ratings_per_user)


def _write_folder(out_dir, rng, movies_table: pd.DataFrame, genre_mask: np.ndarray, liked: np.ndarray,
                  disliked: np.ndarray, ratings_per_user: int) -> Path:
    """Draw each user's ratings from their tastes and write ratings.dat, movies.dat and users.dat."""
    n_users, n_movies = liked.shape[0], len(movies_table)
    extra = rng.exponential(ratings_per_user - MIN_RATINGS_PER_USER, n_users).astype(np.int64)
    counts = np.minimum(MIN_RATINGS_PER_USER + extra, n_movies)
    users = np.repeat(np.arange(n_users), counts)
    movies = rated_movies(rng, counts, n_movies)
    ratings_table = pd.DataFrame({
        "user": users + 1,
        "movie": movies + 1,
        "rating": star_ratings(rng, users, movies, liked, disliked, genre_mask),
        "timestamp": timestamps(rng, counts),
    })
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_dat(out / "ratings.dat", ratings_table)
    write_dat(out / "movies.dat", movies_table)
    write_dat(out / "users.dat", users_table(rng, n_users))
    return out


# ---------------------------------------------------------------------------------------------
# Shared tastes: the learnable setting's ratings (configs/tiny_learn.yaml, dporec.modeling.local_models)
# A few genres are liked by nearly everyone and a few disliked by nearly everyone; each movie has one
# genre and a short title ("Film 17 (1994)"), so prompts are short and "which option has a liked genre"
# decides the pair: the genre-overlap baseline scores ~90% on the test pairs.

# Genre appeal shared by all users: the first N_PLEASERS genres of a fixed shuffle get log-weight
# +SHARED_APPEAL of being liked, the last N_PLEASERS the same weight of being disliked.
SHARED_HISTORY_LEN = 4   # history movies per prompt: 4 keeps prompts short; the genre rule then scores ~87%
N_PLEASERS = 4           # genres nearly everyone likes (and, mirrored, nearly everyone dislikes)
SHARED_APPEAL = 4.0      # how strongly the shared appeal dominates personal taste (0: personal only)
_SHARED_ORDER = np.random.default_rng(7).permutation(len(GENRES))


def _shared_tastes(rng, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """2 liked and 4 disliked genres per user, mostly the shared pleasers / shared dislikes."""
    appeal = np.zeros(len(GENRES))
    appeal[_SHARED_ORDER[:N_PLEASERS]] = SHARED_APPEAL
    appeal[_SHARED_ORDER[-N_PLEASERS:]] = -SHARED_APPEAL
    gumbel = lambda: -np.log(-np.log(rng.random((n_users, len(GENRES)))))  # noqa: E731
    rows = np.arange(n_users)[:, None]
    liked = np.zeros((n_users, len(GENRES)), bool)
    liked[rows, (-(appeal + gumbel())).argsort(axis=1)[:, :2]] = True
    key = np.where(liked, -np.inf, -appeal + gumbel())
    disliked = np.zeros_like(liked)
    disliked[rows, (-key).argsort(axis=1)[:, :4]] = True
    return liked, disliked


def write_ml1m_shared_tastes(out_dir: str | Path, n_users: int = 400, n_movies: int = 400,
                             ratings_per_user: int = 80, seed: int = 0) -> Path:
    """ratings.dat, movies.dat, users.dat in ML-1M format (as write_ml1m) with mostly shared tastes,
    one genre per movie and short titles; returns the folder. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, len(GENRES), n_movies)
    mask = np.zeros((n_movies, len(GENRES)), bool)
    mask[np.arange(n_movies), genre] = True
    ids = np.arange(1, n_movies + 1)
    years = rng.integers(1919, 2001, n_movies)
    movies = pd.DataFrame({"id": ids, "title": [f"Film {i} ({y})" for i, y in zip(ids, years)],
                           "genres": [GENRES[g] for g in genre]})
    liked, disliked = _shared_tastes(rng, n_users)
    return _write_folder(out_dir, rng, movies, mask, liked, disliked, ratings_per_user)


# ---------------------------------------------------------------------------------------------
# Every release's own format (dporec.data.sources.RELEASES): the fixtures of each reader, and files of
# ML-32M's size for benchmarks/bench_data.py. Drawn in chunks of users, vectorised: ML-32M's 32M ratings
# take about a minute to write. Movie ids have gaps, as the releases' do; titles include what the readers
# must handle: a comma (quoted in the CSV layout), double quotes, non-ASCII letters (UTF-8), and movies
# with no genres ("(no genres listed)").

RELEASE_START, RELEASE_END = 789652009, 1697068800  # the later releases' span: 1995-01-09 to 2023-10-12
CHUNK_USERS = 20_000  # users drawn per step: bounds the memory of the (ratings x 18 genres) masks


def release_titles(ids: np.ndarray, years: np.ndarray) -> list[str]:
    """Synthetic titles in the releases' own style, every few with a comma, quotes or accents."""
    out = []
    for i, y in zip(ids, years):
        if i % 7 == 3:
            out.append(f"Synthetic Movie {i}, The ({y})")       # 'Lion King, The (1994)'
        elif i % 11 == 5:
            out.append(f'Synthetic "Movie" {i} ({y})')           # quotes, doubled in the CSV layout
        elif i % 13 == 6:
            out.append(f"Synthétique Café {i} ({y})")            # non-ASCII: the CSV releases are UTF-8
        else:
            out.append(f"Synthetic Movie {i} ({y})")
    return out


def _release_movies(rng, n_movies: int) -> tuple[np.ndarray, pd.DataFrame]:
    """(genre mask, movies table with sparse ids, release-style titles, some without genres)."""
    mask, table = _movies(rng, n_movies)
    ids = np.cumsum(rng.integers(1, 4, n_movies))  # gaps between ids, as in the releases
    years = table["title"].str.extract(r"\((\d{4})\)$")[0].astype(int).to_numpy()
    genres = table["genres"].to_numpy().copy()
    none = np.arange(n_movies) % 17 == 9
    genres[none] = "(no genres listed)"
    mask = mask & ~none[:, None]
    return mask, pd.DataFrame({"id": ids, "title": release_titles(ids, years), "genres": genres})


def _release_ratings(rng, users: np.ndarray, liked, disliked, genre_mask, ratings_per_user: int,
                     half_stars: bool) -> pd.DataFrame:
    """One chunk of users' ratings (0-based user and movie indices), in file order: by user, then movie."""
    n_movies = genre_mask.shape[0]
    extra = rng.exponential(ratings_per_user - MIN_RATINGS_PER_USER, users.size).astype(np.int64)
    counts = np.minimum(MIN_RATINGS_PER_USER + extra, n_movies)
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.8
    popularity = np.cumsum(popularity[np.random.default_rng(5).permutation(n_movies)])
    # draw with replacement (a third more), keep each user's first `count` distinct movies in draw order
    drawn = np.ceil(counts * 1.34 + 8).astype(np.int64)
    who = np.repeat(np.arange(users.size), drawn)
    movie = np.searchsorted(popularity, rng.random(who.size) * popularity[-1]).clip(0, n_movies - 1)
    _, first = np.unique(who * n_movies + movie, return_index=True)
    first = np.sort(first)
    rank = np.arange(first.size) - np.searchsorted(who[first], who[first], "left")
    first = first[rank < counts[who[first]]]
    u, m = who[first], movie[first]
    n = np.bincount(u, minlength=users.size)
    likes = (genre_mask[m] & liked[users[u]]).any(axis=1)
    dislikes = (genre_mask[m] & disliked[users[u]]).any(axis=1)
    bias = rng.normal(0.0, USER_BIAS_SD, users.size)[u]
    score = 3.0 + TASTE_EFFECT * (likes.astype(float) - dislikes) + bias + rng.normal(0.0, NOISE_SD, u.size)
    stars = np.clip(np.rint(score * 2) / 2, 0.5, 5.0) if half_stars else np.clip(np.rint(score), 1, 5)
    generous = (rng.random(users.size) < GENEROUS_FRACTION)[u]
    stars = np.where(generous, np.maximum(stars, 3), stars)
    gaps = rng.exponential(86400.0 * 3, u.size).astype(np.int64)
    gaps[rng.random(u.size) < TIE_PROBABILITY] = 0
    starts = np.r_[0, np.cumsum(n)[:-1]]
    begin = rng.integers(RELEASE_START, RELEASE_END - 400 * 86400, users.size)
    running = np.cumsum(gaps)
    when = begin[u] + running - np.repeat(running[starts] - gaps[starts], n)
    when = np.minimum(when, RELEASE_END)
    # the file's order: by user, then movie id (not by time: the builder sorts)
    order = np.lexsort((m, u))
    return pd.DataFrame({"user": users[u][order] + 1, "movie": m[order], "rating": stars[order],
                         "timestamp": when[order]})


def _stars_text(stars: np.ndarray, layout: str) -> np.ndarray:
    """Ratings as the layout writes them: '4' and '4.5' in ML-10M's ratings.dat, '4.0' and '4.5' in CSV."""
    text = np.array([f"{k / 2:.1f}" for k in range(11)], dtype=object)
    if layout == "dat":
        text = np.array([f"{k / 2:g}" for k in range(11)], dtype=object)
    return text[np.rint(np.asarray(stars) * 2).astype(int)]


def write_release(out_dir: str | Path, name: str = "ml-32m", n_users: int = 200, n_movies: int = 400,
                  ratings_per_user: int = 60, seed: int = 0, zipped: bool = False) -> Path:
    """Synthetic ratings in the exact files and format of the release `name` (dporec.data.sources.RELEASES),
    in out_dir/<the release's folder> (returned), or, zipped, in out_dir/<name>.zip (returned) holding that
    folder as GroupLens's zip does. Deterministic for a seed; `n_users` and `ratings_per_user` as in
    write_ml1m (release_size(name) gives the release's own)."""
    import csv
    import zipfile

    from dporec.data.sources.releases import release
    rel = release(name)
    if rel.name == "ml-1m":
        folder = write_ml1m(Path(out_dir) / rel.folder, n_users, n_movies, ratings_per_user, seed)
    else:
        rng = np.random.default_rng(seed)
        genre_mask, movies = _release_movies(rng, n_movies)
        liked, disliked = _tastes(rng, n_users)
        folder = Path(out_dir) / rel.folder
        folder.mkdir(parents=True, exist_ok=True)
        ratings_path, movies_path = (folder / f for f in rel.files)
        with ratings_path.open("wb") as f:
            if rel.layout == "csv":
                f.write(b"userId,movieId,rating,timestamp\n")
            for lo in range(0, n_users, CHUNK_USERS):
                chunk = _release_ratings(rng, np.arange(lo, min(lo + CHUNK_USERS, n_users)), liked, disliked,
                                         genre_mask, ratings_per_user, rel.half_stars)
                chunk["movie"] = movies["id"].to_numpy()[chunk["movie"].to_numpy()]
                chunk["rating"] = _stars_text(chunk["rating"].to_numpy(), rel.layout)
                _write_rows(f, chunk, rel.layout)
        if rel.layout == "dat":  # by hand: pandas would quote the titles with quotes, the release does not
            movies_path.write_text("".join(f"{i}::{t}::{g}\n" for i, t, g in movies.itertuples(index=False)),
                                   encoding="utf-8")
            tags = pd.DataFrame({"user": [1, 2], "movie": movies["id"].to_numpy()[:2],
                                 "tag": ["funny", "dark"],
                                 "timestamp": [RELEASE_START + 1, RELEASE_START + 2]})
            write_dat(folder / "tags.dat", tags)  # ML-10M's own companion file (it has no users.dat)
        else:
            with movies_path.open("w", encoding="utf-8", newline="") as f:
                w = csv.writer(f, lineterminator="\n")  # quotes only a field that needs it, as GroupLens's
                w.writerow(["movieId", "title", "genres"])
                w.writerows(movies.itertuples(index=False))
    if not zipped:
        return folder
    archive = Path(out_dir) / f"{rel.name}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for path in sorted(folder.iterdir()):
            z.write(path, f"{rel.folder}/{path.name}")
    return archive


def _write_rows(f, chunk: pd.DataFrame, layout: str) -> None:
    """Append ratings rows to an open binary file: '::'-separated (dat) or CSV, no quotes (numbers only)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    if layout == "dat":  # pyarrow writes one-character separators only
        text = chunk.to_csv(sep="\t", header=False, index=False, lineterminator="\n")
        f.write(text.replace("\t", "::").encode())
        return
    table = pa.Table.from_pandas(chunk, preserve_index=False)
    pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False, quoting_style="none"))


def release_size(name: str) -> dict:
    """write_release's arguments for the release's own size: its users, movies and ratings per user."""
    from dporec.data.sources.releases import release
    rel = release(name)
    return {"n_users": rel.users, "n_movies": rel.movies, "ratings_per_user": round(rel.ratings / rel.users)}
