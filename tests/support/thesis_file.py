"""A file in the thesis's own layout (contrastive_rec_train.jsonl), built from synthetic ML-1M-format
ratings with made-up titles shaped like MovieLens-1M's. Test-only: the thesis-source tests read it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dporec.data import task
from dporec.data.sources.synthetic import write_ml1m

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
    for _, r in ratings.groupby("user", sort=True):
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
            "instruction": task.INSTRUCTION,
            "input": task.inline_input([movies[m][0] for m in history], f"{ta} ({ga})", f"{tb} ({gb})"),
            "output": task.answer_text("A", task.thesis_reasoning(ga, "B", gb)),
        })
    path = out / "contrastive_rec_train.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path, folder
