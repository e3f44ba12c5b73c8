"""Synthetic ratings in the exact MovieLens-1M file format, for tests and the tiny pipeline.

MovieLens may not be redistributed, so every fixture in this project comes from here. The data
have the structure the builder relies on, with a known ground truth: each user likes a few of the
18 ML genres and dislikes a few others; ratings >= 4 fall mostly on movies of liked genres, <= 2 on
movies of disliked genres, with noise. A small share of "generous" users never rate below 3, so
the builder's fallback negative (an unseen popular movie) is exercised too. Timestamps never
decrease within a user and sometimes repeat (ML-1M has many same-second ratings), so tie
handling is exercised as well. Titles are "Synthetic Movie 17 (1994)": never a real row.

    from dporec.synthetic import write_ml1m
    write_ml1m("tmp/ml-1m", n_users=200)   # ML-1M size with the defaults: 6,040 users, ~1M ratings
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
# the liked movie 87-89% of the time, the mean-rating rule 75-79% (dporec.baselines, seeds 0 and 1).
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


def _rated_movies(rng, counts: np.ndarray, n_movies: int) -> np.ndarray:
    """For each user, `count` distinct movies drawn with a long-tailed popularity (as in ML-1M)."""
    popularity = 1.0 / np.arange(1, n_movies + 1) ** 0.8
    popularity = popularity[rng.permutation(n_movies)]
    popularity /= popularity.sum()
    return np.concatenate([rng.choice(n_movies, size=c, replace=False, p=popularity) for c in counts])


def _timestamps(rng, counts: np.ndarray) -> np.ndarray:
    """Non-decreasing per user: a random start plus exponential gaps, some of them zero (ties)."""
    gaps = rng.exponential(86400.0, counts.sum()).astype(np.int64)
    gaps[rng.random(gaps.size) < TIE_PROBABILITY] = 0
    first = np.r_[0, np.cumsum(counts)[:-1]]
    starts = rng.integers(ML1M_START, ML1M_END - 90 * 86400, counts.size)
    gaps[first] = starts
    running = np.cumsum(gaps)
    return running - np.repeat(running[first] - starts, counts)


def _ratings(rng, users, movies, liked, disliked, genre_mask) -> np.ndarray:
    """1-5 stars: liked genres push up, disliked genres push down, plus user bias and noise."""
    likes = (genre_mask[movies] & liked[users]).any(axis=1)
    dislikes = (genre_mask[movies] & disliked[users]).any(axis=1)
    bias = rng.normal(0.0, USER_BIAS_SD, liked.shape[0])[users]
    score = 3.0 + TASTE_EFFECT * (likes.astype(float) - dislikes) + bias + rng.normal(0.0, NOISE_SD, users.size)
    stars = np.clip(np.rint(score), 1, 5).astype(np.int64)
    generous = rng.random(liked.shape[0]) < GENEROUS_FRACTION
    return np.where(generous[users], np.maximum(stars, 3), stars)


def _users_table(rng, n_users: int) -> pd.DataFrame:
    return pd.DataFrame({
        "id": np.arange(1, n_users + 1),
        "gender": rng.choice(["M", "F"], n_users),
        "age": rng.choice(AGES, n_users),
        "occupation": rng.integers(0, 21, n_users),
        "zip": [f"{z:05d}" for z in rng.integers(0, 100000, n_users)],
    })


def _write_dat(path: Path, table: pd.DataFrame) -> None:
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
    extra = rng.exponential(ratings_per_user - MIN_RATINGS_PER_USER, n_users).astype(np.int64)
    counts = np.minimum(MIN_RATINGS_PER_USER + extra, n_movies)
    users = np.repeat(np.arange(n_users), counts)
    movies = _rated_movies(rng, counts, n_movies)
    ratings_table = pd.DataFrame({
        "user": users + 1,
        "movie": movies + 1,
        "rating": _ratings(rng, users, movies, liked, disliked, genre_mask),
        "timestamp": _timestamps(rng, counts),
    })
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_dat(out / "ratings.dat", ratings_table)
    _write_dat(out / "movies.dat", movies_table)
    _write_dat(out / "users.dat", _users_table(rng, n_users))
    return out


# ---------------------------------------------------------------------------------------------
# The thesis's own file layout (contrastive_rec_train.jsonl), from synthetic ML-1M-format ratings

_WORDS = ("Night", "River", "Signal", "Garden", "Island", "Winter", "Crown", "Letter", "Machine", "Harbor",
          "Lantern", "Orchard", "Comet", "Velvet", "Meadow", "Paper", "Copper", "Thunder", "Silver", "Hollow")
# Made-up titles in MovieLens-1M's shapes: trailing articles after a comma, commas and colons inside,
# periods, an alternative title in parentheses, a latin-1 letter. Never a real row.
_SHAPES = ("{a} {b}, The", "{a} {b}, A", "Hello, {a}", "{a}: {b} of the {c}", "{a}'s {b}, A",
           "Dr. {a} and the {b}", "{a} {b} (La {c} d'été)", "{a}, {b}, and {c}", "St. {a}'s {b}: Part II",
           "{a} {b}")


def thesis_titles(n: int, seed: int = 0) -> list[str]:
    """`n` distinct made-up titles with a year, shaped like MovieLens-1M's: 'Garden Letter, The (1930)'."""
    rng = np.random.default_rng(seed)
    titles: list[str] = []
    seen = set()
    while len(titles) < n:
        a, b, c = rng.choice(_WORDS, 3, replace=False)
        title = f"{_SHAPES[len(titles) % len(_SHAPES)].format(a=a, b=b, c=c)} ({rng.integers(1919, 2001)})"
        if title not in seen:
            seen.add(title)
            titles.append(title)
    return titles


def write_thesis_file(out_dir: str | Path, n_users: int = 40, n_movies: int = 300, seed: int = 0,
                      history_len: int = 5) -> tuple[Path, Path]:
    """A synthetic ML-1M folder with thesis-shaped titles and, built from it, a file in the thesis's
    layout: one line per user, every answer Option A, the reasoning in the thesis's template.

    Returns (jsonl path, ml-1m folder). Per user: Option A is the user's most recent liked movie (>= 4
    stars; the highest rated when fewer than history_len+1 are liked), the history the history_len
    liked movies before it, Option B the user's lowest-rated movie if <= 2 stars, else a movie the
    user never rated.
    """
    import json
    out = Path(out_dir)
    folder = write_ml1m(out / "ml-1m", n_users=n_users, n_movies=n_movies, ratings_per_user=40, seed=seed)
    rows = [line.split("::") for line in (folder / "movies.dat").read_text(encoding="latin-1").splitlines()]
    titles = thesis_titles(len(rows), seed)
    movies = {int(r[0]): (t, r[2]) for r, t in zip(rows, titles)}
    (folder / "movies.dat").write_text("".join(f"{i}::{t}::{g}\n" for i, (t, g) in movies.items()),
                                       encoding="latin-1")
    ratings = pd.DataFrame([list(map(int, line.split("::"))) for line in
                            (folder / "ratings.dat").read_text(encoding="latin-1").splitlines()],
                           columns=["user", "movie", "rating", "ts"])
    rng = np.random.default_rng(seed)
    lines = []
    for user, r in ratings.groupby("user", sort=True):
        r = r.sort_values("ts", kind="stable")
        liked = r[r["rating"] >= 4]
        if len(liked) < history_len + 1:
            liked = r.sort_values("rating", ascending=False, kind="stable").head(history_len + 1)
        picked = liked["movie"].tolist()[-(history_len + 1):]
        history, target = picked[:-1], picked[-1]
        low = r[r["rating"] <= 2]
        if len(low):
            negative = int(low.sort_values("rating", kind="stable")["movie"].iloc[0])
        else:
            negative = int(rng.choice(sorted(set(movies) - set(r["movie"]))))
        (ta, ga), (tb, gb) = movies[target], movies[negative]
        lines.append({
            "instruction": ("Analyze the user's history to identify their preference. Compare two potential "
                            "movies and explain which one is the better recommendation."),
            "input": (f"History: {', '.join(movies[m][0] for m in history)}. "
                      f"Option A: {ta} ({ga}). Option B: {tb} ({gb})."),
            "output": (f"The better recommendation is Option A. Reasoning: The user has shown a strong "
                       f"preference for themes found in {ga}. Option B ({gb}) does not align with their "
                       f"recent viewing patterns."),
        })
    path = out / "contrastive_rec_train.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path, folder
