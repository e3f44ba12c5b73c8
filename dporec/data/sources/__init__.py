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
from dporec.data.sources.releases import RELEASES, Release, release, release_names  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Source:
    form: str       # how it is written as --source / data.source
    what: str       # what it is, for help texts
    example: str    # a value that works


SOURCES = (
    Source("PATH", f"a MovieLens release, its zip or unpacked folder ({release_names()}; bring it yourself; "
                   "the release is told by its files, a zip's MD5 is checked where GroupLens publishes one)",
           "data/ml-1m.zip"),
    Source("recbole:ml-100k", "MovieLens-100K, shipped inside the recbole package (no download)",
           "recbole:ml-100k"),
    Source("synthetic[:N]", "synthetic MovieLens-format ratings of N users "
                            "(default ML-1M's 6,040): tests and smoke runs", "synthetic:200"),
    Source("thesis:FILE[?ml1m=PATH]", "the thesis's own contrastive_rec_train.jsonl, split by line (one line "
                                      "per user); with ?ml1m= each line's user is recovered from ML-1M",
           "thesis:contrastive_rec_train.jsonl"),
)


def forms() -> str:
    """'PATH (a MovieLens release's zip or folder: ml-1m, ...), recbole:ml-100k, synthetic[:N] or
    thesis:FILE[?ml1m=PATH]'."""
    names = [f"PATH (a MovieLens release's zip or folder: {release_names()})" if s.form == "PATH" else s.form
             for s in SOURCES]
    return ", ".join(names[:-1]) + " or " + names[-1]


def help_lines() -> list[str]:
    """One line per source: its form and what it is."""
    return [f"{s.form:<24} {s.what}" for s in SOURCES]


def expected_users(source: str | None, max_users: int | None = None) -> int | None:
    """How many users a build from `source` draws pairs from, before building it: the release's users
    (told by the zip or folder name), synthetic:N's N, ML-100K's 943; at most max_users. None when the
    name does not tell, and for the thesis's file (split by line, not built from ratings)."""
    source = str(source or "")
    name = Path(source.split("?")[0]).name.removesuffix(".zip")
    users = next((r.users for r in RELEASES if name in (r.name, r.folder)), None)
    if source == "recbole:ml-100k":
        users = 943
    elif source == "synthetic" or source.startswith("synthetic:"):
        from dporec.data.sources import synthetic
        n = source.partition(":")[2]
        users = int(n) if n.isdigit() else synthetic.ML1M_USERS
    elif is_thesis(source):
        users = None
    if users is None:
        return None
    return min(users, max_users) if max_users else users


def is_thesis(source: str) -> bool:
    return str(source).startswith("thesis:")


def read_ratings(source: str, allow_md5_mismatch: bool = False):
    """(ratings, movies) of a ratings source: PATH, recbole:ml-100k or synthetic[:N_USERS]."""
    ratings, movies, _ = read_source(source, allow_md5_mismatch)
    return ratings, movies


def read_source(source: str, allow_md5_mismatch: bool = False):
    """(ratings, movies, what was read) of a ratings source (read_ratings): `what` names the release and
    what its checksum said, for the summary."""
    if source == "recbole:ml-100k":
        from dporec.data.sources import recbole
        return (*recbole.read_ml100k(), {"release": "ml-100k (recbole)"})
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
            folder = synthetic.write_ml1m(tmp, n_users=int(n_users), seed=0)
            return (*movielens.read(folder), {"release": "synthetic (ML-1M format)"})
    if ":" in source.split("/")[0] and not Path(source).exists():
        raise UserError(f"unknown source {source!r}: expected {forms()}")
    from dporec.data.sources import movielens
    return movielens.read_release(source, allow_md5_mismatch)


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
    keys, each defaulting to its value there. Each phase logs a line with its time as it ends."""
    unknown = set(settings) - set(built.DEFAULTS)
    if unknown:
        raise TypeError(f"unknown build settings {sorted(unknown)}; known: {sorted(built.DEFAULTS)}")
    settings = {**built.DEFAULTS, **settings}
    source = str(source)
    if is_thesis(source):
        if settings["max_users"] is not None:
            raise UserError(f"{source}: max_users applies to ratings sources; the thesis's file has one line "
                            "per user and is split as it is (leave data.max_users null)")
        from dporec.data.sources import thesis
        return thesis.build(source, out_dir, seed=seed, val_fraction=settings["val_fraction"],
                            test_fraction=settings["test_fraction"], allow_md5_mismatch=allow_md5_mismatch)
    from dporec.data import pairs
    start = time.perf_counter()
    phases = built.Phases()
    with phases("read", "files parsed and checked, each user's ratings in time order"):
        ratings, movies, about = read_source(source, allow_md5_mismatch)
        # reassigned, so that the raw ratings are freed once they are in time order (ML-32M's: 0.8 GB)
        ratings, facts = pairs.time_ordered(ratings, movies, settings["max_users"], seed)
        about |= facts
    return pairs.build(ratings, movies, out_dir, source=source, seed=seed, start=start, phases=phases,
                       about=about, **settings)
