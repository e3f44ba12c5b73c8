"""Synthetic ratings in the exact MovieLens-1M file format (the `synthetic:N` source, and every fixture).

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
