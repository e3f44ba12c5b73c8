"""Validate preference-pair JSONL files and report what would make an experiment meaningless.

    python data/check_dataset.py data/generated/tiny/train.jsonl
    python data/check_dataset.py data/generated/tiny/{train,val,test}.jsonl     # + users shared by splits
    python data/check_dataset.py old_always_A.jsonl --rebalance balanced.jsonl   # fix position bias

Accepts both layouts (the thesis's one-line `History: ... Option A: ... Option B: ...` and options on
their own lines) and hand-made variants (no final period, extra spaces, CRLF, BOM, blank lines).
Checks every line (thesis format, see dporec/data.py) and that each example's rejected answer
differs from its chosen one and its two options differ; prints counts, A/B balance and negative kinds; warns loudly when one
position holds more than 60% of the answers. With several files, users or ids found in two files
are a split leak. Exit status: 0 fine (warnings allowed), 1 split leak, 2 invalid data or usage.
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

from dporec import UserError, data, splits
from dporec.config import run_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSONL file(s), e.g. train val test")
    p.add_argument("--rebalance", type=Path, metavar="OUT",
                   help="write a copy with the answer in position A for half (±1) of the examples")
    return p.parse_args(argv)


def load_all(paths: list[Path]) -> dict[Path, list[data.Example]]:
    """Every file's examples; all problems in all files are reported together."""
    loaded, errors = {}, []
    for path in paths:
        try:
            examples = data.load_examples(path)
        except UserError as e:
            errors.append(str(e))
            continue
        errors += splits.pair_problems(examples)
        loaded[path] = examples
    if errors:
        raise UserError("\n".join(errors))
    return loaded


def report(path: Path, examples: list[data.Example]) -> None:
    b = splits.balance(examples)
    users = {e.user_id for e in examples if e.user_id is not None}
    print(f"{path}: {b['n']} examples, {len(users) or 'unknown'} users, duplicate ids: none")
    print(f"  answer in position A: {b['A']} ({100 * b['a_fraction']:.1f}%), B: {b['B']}")
    kinds = Counter(e.extra.get("negative_kind", "unrecorded") for e in examples)
    print("  negatives: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    layouts = Counter(data.layout(e) for e in examples)
    print("  options: " + ", ".join(f"{k} {v}" for k, v in sorted(layouts.items()))
          + " (inline = the thesis's one-line layout)")
    mirrored = sum(data.reasoning_is_mirrored(e) for e in examples)
    print(f"  DPO rejected answers: {mirrored} with the reasoning mirrored to the other option, "
          f"{b['n'] - mirrored} decision sentence only (free-text reasoning, see README)")
    if not users and layouts.get("inline"):
        print(f"  to train and evaluate on it, split it (one line per user in the thesis's file): "
              f"python data/prepare_movielens.py --source thesis:{path} --out data/generated/thesis")
    warning = splits.balance_warning(examples, str(path))
    if warning:
        print(f"\n{'!' * 100}\n{warning}\n{'!' * 100}\n", file=sys.stderr)


def shared(loaded: dict[Path, list[data.Example]], key) -> list[str]:
    """'a.jsonl and b.jsonl share N ...' for each pair of files with common keys."""
    return [f"{p} and {q} share {len(common)} (e.g. {', '.join(map(str, common[:5]))})"
            for p, q, common in splits.shared_between(loaded, key)]


def rebalance(examples: list[data.Example], out: Path) -> None:
    if out.exists():
        raise UserError(f"{out} exists; --rebalance never overwrites, choose another name")
    fixed = splits.rebalance(examples)
    data.write_jsonl(out, (data.to_record(e) for e in fixed))
    b = splits.balance(fixed)
    print(f"wrote {out}: {b['n']} examples, position A {b['A']} ({100 * b['a_fraction']:.1f}%), B {b['B']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rebalance and len(args.files) > 1:
        raise UserError("--rebalance takes exactly one FILE")
    loaded = load_all(args.files)
    for path, examples in loaded.items():
        report(path, examples)
    if len(loaded) == 1:
        print("user overlap: N/A (one file)")
        if args.rebalance:
            rebalance(loaded[args.files[0]], args.rebalance)
        return 0
    leaks = [f"users: {s}" for s in shared(loaded, lambda e: e.user_id)]
    leaks += [f"ids: {s}" for s in shared(loaded, lambda e: e.pair_id)]
    if leaks:
        print("SPLIT LEAK:\n  " + "\n  ".join(leaks), file=sys.stderr)
        return 1
    print(f"user overlap: none across {len(loaded)} files")
    return 0


if __name__ == "__main__":
    run_main(main)
