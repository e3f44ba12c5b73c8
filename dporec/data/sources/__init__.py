"""Where pairs come from: the one list of data sources, and building the split files from any of them.

Help texts and error messages (the config schema, data/prepare_movielens.py, run_experiment.py,
verify_setup.py) are made from SOURCES, so they cannot disagree. Readers are imported only when a
source is built: listing the sources costs nothing.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dporec import UserError
from dporec.data import built


@dataclass(frozen=True)
class Source:
    form: str       # how it is written as --source / data.source
    what: str       # what it is, for help texts
    example: str    # a value that works


SOURCES = (
    Source("PATH", "MovieLens-1M, the thesis's ratings: the ml-1m/ folder or ml-1m.zip (bring it yourself; "
                   "the MD5 of a file named ml-1m.zip is checked)", "data/ml-1m.zip"),
    Source("recbole:ml-100k", "MovieLens-100K, shipped inside the recbole package (no download)",
           "recbole:ml-100k"),
    Source("synthetic[:N]", "synthetic MovieLens-format ratings of N users "
                            "(default ML-1M's 6,040): tests and smoke runs", "synthetic:200"),
    Source("thesis:FILE[?ml1m=PATH]", "the thesis's own contrastive_rec_train.jsonl, split by line (one line "
                                      "per user); with ?ml1m= each line's user is recovered from ML-1M",
           "thesis:contrastive_rec_train.jsonl"),
)


def forms() -> str:
    """'PATH (an ml-1m/ folder or ml-1m.zip), recbole:ml-100k, synthetic[:N] or thesis:FILE[?ml1m=PATH]'."""
    names = ["PATH (the ml-1m/ folder or ml-1m.zip)" if s.form == "PATH" else s.form for s in SOURCES]
    return ", ".join(names[:-1]) + " or " + names[-1]


def help_lines() -> list[str]:
    """One line per source: its form and what it is."""
    return [f"{s.form:<24} {s.what}" for s in SOURCES]


def is_thesis(source: str) -> bool:
    return str(source).startswith("thesis:")


def read_ratings(source: str, allow_md5_mismatch: bool = False):
    """(ratings, movies) of a ratings source: PATH, recbole:ml-100k or synthetic[:N_USERS]."""
    if source == "recbole:ml-100k":
        from dporec.data.sources import recbole
        return recbole.read_ml100k()
    if source.startswith("recbole:"):
        raise UserError(f"unknown source {source!r}: recbole ships only 'recbole:ml-100k'")
    if source == "synthetic" or source.startswith("synthetic:"):
        from dporec.data.sources import movielens, synthetic
        n_users = source.partition(":")[2] or str(synthetic.ML1M_USERS)
        if not n_users.isdigit() or int(n_users) < 1:
            raise UserError(f"source {source!r}: expected synthetic or "
                            "synthetic:N_USERS (N a positive integer)")
        with tempfile.TemporaryDirectory() as tmp:
            # one fixed synthetic data set (seed 0): the build seed varies sampling and splits only
            return movielens.read(synthetic.write_ml1m(tmp, n_users=int(n_users), seed=0))
    if ":" in source.split("/")[0] and not Path(source).exists():
        raise UserError(f"unknown source {source!r}: expected {forms()}")
    from dporec.data.sources import movielens
    return movielens.read(source, allow_md5_mismatch)


def config_build(cfg: dict) -> dict:
    """build()'s arguments for a config: its data.source into the folder of its data files, with its seed
    and build settings; the one rule data/prepare_movielens.py --config and run_experiment.py share, so
    every route builds the same splits."""
    d = cfg["data"]
    return {"source": d["source"], "out_dir": Path(d["train_file"]).parent, "seed": cfg["seed"],
            **{k: d[k] for k in built.DEFAULTS if k in d}}


def build(source: str, out_dir: str | Path, seed: int = 0, allow_md5_mismatch: bool = False,
          **settings) -> dict:
    """Write out_dir/{train,val,test}.jsonl (and, from ratings, the baselines' training ratings and the
    test users' candidate sets) and summary.json; return the summary. `settings`: data.built.DEFAULTS'
    keys, each defaulting to its value there."""
    unknown = set(settings) - set(built.DEFAULTS)
    if unknown:
        raise TypeError(f"unknown build settings {sorted(unknown)}; known: {sorted(built.DEFAULTS)}")
    settings = {**built.DEFAULTS, **settings}
    source = str(source)
    if is_thesis(source):
        from dporec.data.sources import thesis
        return thesis.build(source, out_dir, seed=seed, val_fraction=settings["val_fraction"],
                            test_fraction=settings["test_fraction"], allow_md5_mismatch=allow_md5_mismatch)
    from dporec.data import pairs
    start = time.perf_counter()
    ratings, movies = read_ratings(source, allow_md5_mismatch)
    return pairs.build(ratings, movies, out_dir, source=source, seed=seed, start=start, **settings)
