"""A built data folder: train/val/test.jsonl (and, from ratings, ranking_test.jsonl and the training
users' ratings) beside summary.json, which says how they were built. The build settings' defaults live here
(the config schema and every builder read them), and so does the rule that a config and the folder it
points at must agree: the stages, run_experiment.py and verify_setup.py all ask it.
"""
from __future__ import annotations

from pathlib import Path

from dporec import UserError
from dporec.files import read_json, write_json

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

# How pairs are built from ratings (data.* config keys of the same names)
DEFAULTS = {"history_len": 5, "train_pairs_per_user": 1, "eval_pairs_per_user": 3, "val_fraction": 0.1,
            "test_fraction": 0.1, "like_threshold": 4, "dislike_threshold": 2, "ranking_candidates": 8,
            "negatives": "disliked", "split": "users"}
SPLIT_KINDS = ("users", "temporal")
# what a config sets about its data when it builds them itself (data.source), and always
BUILD_KEYS = ("negatives", "train_pairs_per_user", "eval_pairs_per_user", "history_len", "val_fraction",
              "test_fraction", "split")
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
    # a key an earlier builder did not record was its default then (every earlier build split by users)
    built_with = {k: summary.get(k, DEFAULTS.get(k)) for k in keys}
    return [f"data.{k}={data[k]} but {folder} was built with {k}={built_with[k]} ({summary_path(folder)})"
            for k in keys if built_with[k] is not None and built_with[k] != data[k]]


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
