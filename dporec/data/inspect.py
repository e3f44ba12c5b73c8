"""What pair files hold, for data/check_dataset.py: every file loaded and checked, counts per file, and
users or ids that two files share (a split leak)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from dporec import UserError, files
from dporec.data import balance, built, records, splits


def load_all(paths: list[Path]) -> dict[Path, list[records.Example]]:
    """Every file's examples; all problems in all files are reported together."""
    loaded, errors = {}, []
    for path in paths:
        try:
            examples = records.load_examples(path)
        except UserError as e:
            errors.append(str(e))
            continue
        errors += splits.pair_problems(examples)
        loaded[path] = examples
    if errors:
        raise UserError("\n".join(errors))
    return loaded


def describe(examples: list[records.Example], path: Path | None = None) -> dict:
    """Counts of one file: examples, users, A/B balance, negative kinds, layouts, mirrored reasonings, and
    whether a builder split it already."""
    b = balance.balance(examples)
    return {**b, "built_split": path is not None and built.is_built_split(path),
            "users": len({e.user_id for e in examples if e.user_id is not None}),
            "negatives": dict(sorted(Counter(e.extra.get("negative_kind", "unrecorded")
                                             for e in examples).items())),
            "layouts": dict(sorted(Counter(records.layout(e) for e in examples).items())),
            "own_rejected": sum(records.REJECTED in e.extra for e in examples),
            "mirrored": sum(records.reasoning_is_mirrored(e) for e in examples
                            if records.REJECTED not in e.extra)}


def leaks(loaded: dict[Path, list[records.Example]], involving: Path | None = None) -> list[str]:
    """'users: a.jsonl and b.jsonl share N (e.g. ...)' for each pair of files sharing users or ids (with
    `involving`: only the pairs that include that file)."""
    out = []
    for what, key in (("users", lambda e: e.user_id), ("ids", lambda e: e.pair_id)):
        out += [f"{what}: {p} and {q} share {len(common)} (e.g. {', '.join(map(str, common[:5]))})"
                for p, q, common in splits.shared_between(loaded, key) if involving in (None, p, q)]
    return out


def check_held_out(test: Path, test_examples: list[records.Example], training: dict[str, str]) -> None:
    """Refuse test pairs whose users or ids the training files hold (the same check as check_dataset.py):
    a verdict on training users says nothing about the held-out ones. `training`: {config key: path}."""
    loaded = {Path(test): test_examples}
    for key, path in training.items():
        if path and Path(path).is_file() and Path(path).resolve() != Path(test).resolve():
            loaded[Path(path)] = records.load_examples(path)
        elif path and Path(path).is_file():  # the test file IS a training file
            raise UserError(f"data.test_file {test} is also {key}: the evaluation would score training "
                            "pairs; point data.test_file at the held-out split")
    found = leaks(loaded, involving=Path(test))
    if found:
        raise UserError(f"data.test_file {test} shares users or pairs with the training data "
                        f"({'; '.join(found)}): the evaluation would score training users; rebuild the "
                        "splits by user (data/prepare_movielens.py) or check them with data/check_dataset.py")


def write_rebalanced(examples: list[records.Example], out: Path) -> dict:
    """Write a copy with the answer in position A for half (±1) of the examples; never overwrites."""
    if out.exists():
        raise UserError(f"{out} exists; --rebalance never overwrites, choose another name")
    fixed = balance.rebalance(examples)
    files.write_jsonl(out, (records.to_record(e) for e in fixed))
    return balance.balance(fixed)
