"""A tiny configuration that can learn: easy synthetic MovieLens data and a tiny Llama pretrained for it.

Every tiny run on the random tiny Llama scores 50% for base, SFT and DPO, so no test would notice a
miswired pipeline (wrong letter, flipped labels, the wrong token scored). This module makes a setting
where SFT and DPO learn in a CPU test while every stage runs the real scripts (4-bit QLoRA, TRL,
likelihood scoring in both option orders); configs/tiny_learn.yaml holds the training settings and
tests/e2e/test_learning.py runs it, with a label-shuffled control.

  write_ml1m_shared_tastes   ML-1M-format ratings whose tastes are mostly shared: a few genres are
                             liked by nearly everyone, a few disliked by nearly everyone. Each movie
                             has one genre and a short title ("Film 17 (1994)"), so prompts are short
                             and "which option has a liked genre" decides the pair. The genre-overlap
                             baseline (dporec.evaluation.baselines) scores ~90% on the test pairs.
  build_learnable_llama      a tiny Llama whose tokenizer has most genres as one token, pretrained for
                             under a minute on label-free text in the prompt layout that restates which
                             option has which genre ("The Drama movie is Option B."). That teaches it
                             to bind an option's content to its letter, never which option is better.
                             The base model scored 39%: some arbitrary content preference, but
                             nothing learned about which option is better.

    from tests.support import learnable
    from dporec.data import sources
    folder = learnable.write_ml1m_shared_tastes("tmp/ml-1m-shared")
    sources.build(str(folder), "tmp/learn-data", history_len=learnable.HISTORY_LEN)
    learnable.build_learnable_llama("tmp/learn-llama")

or both at once (what tests/e2e/test_learning.py uses): python -m tests.support.learnable OUT_DIR
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dporec.data import task
from dporec.data.sources import synthetic
from dporec.modeling.local_models import tiny_llama, train_tokenizer

GENRES = synthetic.GENRES
# Genre appeal shared by all users: the first N_PLEASERS genres of a fixed shuffle get log-weight
# +SHARED_APPEAL of being liked, the last N_PLEASERS the same weight of being disliked.
HISTORY_LEN = 4          # history movies per prompt: 4 keeps prompts short; the genre rule then scores ~87%
N_PLEASERS = 4           # genres nearly everyone likes (and, mirrored, nearly everyone dislikes)
SHARED_APPEAL = 4.0      # how strongly the shared appeal dominates personal taste (0: personal only)
_ORDER = np.random.default_rng(7).permutation(len(GENRES))


def _tastes(rng, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """2 liked and 4 disliked genres per user, mostly the shared pleasers / shared dislikes."""
    appeal = np.zeros(len(GENRES))
    appeal[_ORDER[:N_PLEASERS]] = SHARED_APPEAL
    appeal[_ORDER[-N_PLEASERS:]] = -SHARED_APPEAL
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
    """ratings.dat, movies.dat, users.dat in ML-1M format (as dporec.synthetic) with shared tastes,
    one genre per movie and short titles; returns the folder. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(0, len(GENRES), n_movies)
    mask = np.zeros((n_movies, len(GENRES)), bool)
    mask[np.arange(n_movies), genre] = True
    ids = np.arange(1, n_movies + 1)
    years = rng.integers(1919, 2001, n_movies)
    movies = pd.DataFrame({"id": ids, "title": [f"Film {i} ({y})" for i, y in zip(ids, years)],
                           "genres": [GENRES[g] for g in genre]})
    liked, disliked = _tastes(rng, n_users)
    extra = rng.exponential(ratings_per_user - synthetic.MIN_RATINGS_PER_USER, n_users).astype(np.int64)
    counts = np.minimum(synthetic.MIN_RATINGS_PER_USER + extra, n_movies)
    users = np.repeat(np.arange(n_users), counts)
    rated = synthetic.rated_movies(rng, counts, n_movies)
    ratings = pd.DataFrame({"user": users + 1, "movie": rated + 1,
                            "rating": synthetic.star_ratings(rng, users, rated, liked, disliked, mask),
                            "timestamp": synthetic.timestamps(rng, counts)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    synthetic.write_dat(out / "ratings.dat", ratings)
    synthetic.write_dat(out / "movies.dat", movies)
    synthetic.write_dat(out / "users.dat", synthetic.users_table(rng, n_users))
    return out


# ---------------------------------------------------------------------------------------------
# The tiny model: a tokenizer for this vocabulary and a short label-free pretraining

def _prompt(rng, history_len: int) -> tuple[str, list[str]]:
    """A prompt in the training layout (task.alpaca_prompt) with random movies; returns it and the two
    options' genres (A, B)."""
    def movie():
        g = GENRES[rng.integers(len(GENRES))]
        return f"Film {rng.integers(1, 1000)} ({rng.integers(1919, 2001)}) ({g})", g

    history = [movie()[0] for _ in range(history_len)]
    (a, ga), (b, gb) = movie(), movie()
    while gb == ga:
        b, gb = movie()
    # the instruction is left out: it is the same in every prompt and would only slow the steps down
    return task.alpaca_prompt(task.own_line_input(history, a, b), instruction=None), [ga, gb]


def pretraining_texts(n: int, seed: int = 0, history_len: int = 4) -> list[str]:
    """Prompts followed by which option has which genre, in random statement order.

    Restating "The Drama movie is Option B." needs the model to bind each option's content to its
    letter, the skill the decision needs too, while saying nothing about which option is better:
    the genres are drawn at random and independently of any taste.
    """
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        prompt, genres = _prompt(rng, history_len)
        lines = [f"The {g} movie is Option {L}." for g, L in zip(genres, "AB")]
        if rng.random() < 0.5:
            lines.reverse()
        texts.append(prompt + " ".join(lines))
    return texts


def _tokenizer_texts(seed: int) -> list[str]:
    texts = pretraining_texts(300, seed=seed + 1)
    texts += [task.answer_text(L, task.genre_reasoning(f"Film 12 (1990) ({g})", [g],
                                                       "Film 7 (1950) (Drama)", []))
              for L in task.LETTERS for g in GENRES]
    return texts


def build_learnable_llama(out_dir: str | Path, seed: int = 0, hidden: int = 128, layers: int = 2,
                          heads: int = 4, vocab_size: int = 512, pretrain_steps: int = 400,
                          batch_size: int = 32, lr: float = 3e-3, initializer_range: float = 0.02,
                          verbose: bool = False) -> Path:
    """A tiny Llama (every linear layer a multiple of 64 wide, for 4-bit) with its own byte-level BPE
    tokenizer, pretrained for `pretrain_steps` steps on pretraining_texts; saved as a model folder."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(_tokenizer_texts(seed), vocab_size)
    tok.save_pretrained(out)
    model = tiny_llama(tok, hidden, layers, heads=heads, kv_heads=heads, seed=seed,
                       initializer_range=initializer_range)
    texts = pretraining_texts(pretrain_steps * batch_size, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / max(pretrain_steps, 1)))
    model.train()
    for step in range(pretrain_steps):
        chunk = texts[step * batch_size:(step + 1) * batch_size]
        batch = tok(chunk, return_tensors="pt", padding=True)
        # loss on the restatement only: the titles' random numbers would otherwise dominate it
        prompt_len = [len(tok(t[:t.index("### Response:")])["input_ids"]) for t in chunk]
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        for i, n in enumerate(prompt_len):
            labels[i, :n] = -100
        loss = model(**batch, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if verbose and step % 50 == 0:
            print(f"[pretrain] step {step} loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(out)
    return out


def build_all(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """OUT/tiny-learn-llama and OUT/data/{train,val,test}.jsonl (+ baseline side files): the inputs of
    configs/tiny_learn.yaml. Returns (model folder, data folder)."""
    from dporec.data import sources
    out = Path(out_dir)
    folder = write_ml1m_shared_tastes(out / "ml-1m-shared", seed=seed)
    sources.build(str(folder), out / "data", history_len=HISTORY_LEN, seed=seed)
    return build_learnable_llama(out / "tiny-learn-llama", seed=seed), out / "data"


if __name__ == "__main__":
    import sys
    model_dir, data_dir = build_all(sys.argv[1] if len(sys.argv) > 1 else "models/learn")
    print(f"model: {model_dir}\ndata:  {data_dir}")
