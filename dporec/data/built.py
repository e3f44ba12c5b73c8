"""A built data folder: train/val/test.jsonl (and, from ratings, ranking_test.jsonl and the training
users' ratings) beside summary.json, which says how they were built. The build settings' defaults live here
(the config schema and every builder read them), and so does the rule that a config and the folder it
points at must agree: the stages, run_experiment.py and verify_setup.py all ask it.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

from dporec import UserError
from dporec.files import read_json, write_json

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
SPLITS = ("train", "val", "test")
# Written beside the splits of the default task (data.negatives: disliked): the test users' pairs of the
# personal task (matched negatives), which the evaluation scores for a second verdict (eval.personal_task)
PERSONAL_FILE = "test_matched.jsonl"


def personal_test_file(test_file) -> Path | None:
    """The personal task's test pairs beside a built test file, or None when the build wrote none (the
    matched task itself, the thesis's file, files made by hand)."""
    path = Path(test_file).parent / PERSONAL_FILE
    return path if Path(test_file).name == "test.jsonl" and path.is_file() else None

# How pairs are built from ratings (data.* config keys of the same names). The thresholds are stars on
# MovieLens's scale: a rating >= like_threshold is liked, <= dislike_threshold disliked, between them
# neither (half stars: 4.0-5.0 liked, 0.5-2.0 disliked, 2.5-3.5 neither); max_users None: every user.
DEFAULTS = {"history_len": 5, "train_pairs_per_user": 1, "eval_pairs_per_user": 3, "val_fraction": 0.1,
            "test_fraction": 0.1, "like_threshold": 4.0, "dislike_threshold": 2.0, "ranking_candidates": 8,
            "negatives": "disliked", "split": "users", "max_users": None}
STARS = (0.5, 5.0)  # the lowest and highest rating of every MovieLens release: the thresholds' range
SPLIT_KINDS = ("users", "temporal")
# what a config sets about its data when it builds them itself (data.source), and always
BUILD_KEYS = ("negatives", "train_pairs_per_user", "eval_pairs_per_user", "history_len", "val_fraction",
              "test_fraction", "split", "like_threshold", "dislike_threshold", "max_users")
TASK_KEYS = ("negatives",)


def summary_path(folder) -> Path:
    return Path(folder) / SUMMARY


def read_summary(folder) -> dict | None:
    """The folder's summary.json, or None when it has none (files made by hand, or by an older builder)."""
    path = summary_path(folder)
    return read_json(path) if path.is_file() else None


def write_summary(folder, summary: dict) -> Path:
    return write_json(summary_path(folder), summary)


def is_built_split(path) -> bool:
    """Whether `path` is a split a builder wrote (train/val/test.jsonl beside its summary.json)."""
    path = Path(path)
    return path.name in {f"{s}.jsonl" for s in SPLITS} and summary_path(path.parent).is_file()


def disagreements(data: dict) -> list[str]:
    """How the built folder of a config's data (its data section) differs from what the config says:
    'data.KEY=config value, built with built value (FILE)' for each key; [] when they agree or the folder
    has no summary. The task (negatives) always counts; the build settings when the config builds its
    data itself (data.source)."""
    folder = Path(data["train_file"]).parent
    summary = read_summary(folder)
    if summary is None:
        return []
    keys = BUILD_KEYS if data.get("source") else TASK_KEYS
    # a key an earlier builder did not record was its default then (every earlier build split by users,
    # at 4 and 2 stars, from every user)
    built_with = {k: summary.get(k, DEFAULTS[k]) for k in keys}
    return [f"data.{k}={data[k]} but {folder} was built with {k}={v} ({summary_path(folder)})"
            for k, v in built_with.items() if v != data[k]]


def check_agrees(data: dict) -> None:
    """Refuse data files built with other settings than the config's (disagreements): what they would
    train or score is not this config's experiment."""
    problems = disagreements(data)
    if problems:
        raise UserError("the data files were built with other settings than this config's: "
                        + "; ".join(problems) + ". Point data.train_file/val_file/test_file at another "
                        "folder and build it there (python data/prepare_movielens.py --config ...), or use "
                        "the config they were built with")


def check_not_empty(summary: dict, source) -> None:
    """Refuse a build that left a split empty (a run would stop later on the empty file): what the
    commands that build data for a run check (data/prepare_movielens.py, run_experiment.py)."""
    empty = [s for s, n in (summary.get("splits") or {}).items() if not (n or {}).get("examples")]
    if empty:
        raise UserError(f"{source}: the build left the {', '.join(empty)} split(s) empty "
                        f"({summary.get('rating_users', '?')} users with ratings; each split needs users "
                        "with a liked and a disliked movie): use a source with more users, or other split "
                        "fractions")


def peak_rss_mib() -> int | None:
    """This process's peak resident memory so far, in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10))  # bytes on macOS, KiB on Linux


class Phases:
    """Wall time and peak resident memory of each phase of a build (read, pairs, splits, candidates,
    baselines), one console line as each ends: a long build says where it is. `record` goes into
    summary.json."""

    def __init__(self):
        self.record: dict[str, dict] = {}

    @contextmanager
    def __call__(self, name: str, what: str = ""):
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        peak = peak_rss_mib()
        self.record[name] = {"seconds": round(seconds, 2), "peak_rss_mib": peak}
        log.info(f"[data] {name}: {seconds:.1f} s" + (f", peak memory so far {peak:,} MiB" if peak else "")
                 + (f" ({what})" if what else ""))
