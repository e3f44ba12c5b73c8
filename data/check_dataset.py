"""Validate preference-pair JSONL files and report what would make an experiment meaningless.

    python data/check_dataset.py data/generated/tiny/train.jsonl
    python data/check_dataset.py data/generated/tiny/{train,val,test}.jsonl     # + users shared by splits
    python data/check_dataset.py old_always_A.jsonl --rebalance balanced.jsonl   # fix position bias

Accepts both layouts (the thesis's one-line `History: ... Option A: ... Option B: ...` and options on
their own lines) and hand-made variants (no final period, extra spaces, CRLF, BOM, blank lines).
Checks every line (the thesis format, dporec/data/records.py), that each example's rejected answer
differs from its chosen one and that its two options differ; prints counts, A/B balance and negative
kinds; warns loudly when one position holds more than 60% of the answers. With several files, users
or ids found in two files are a split leak. Exit status: 0 fine (warnings allowed), 1 split leak,
2 invalid data or usage.
"""
import argparse
import sys
from pathlib import Path

from dporec import UserError
from dporec.config import run_main
from dporec.data import inspect, splits
from dporec.report.tables import dataset_lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSONL file(s), e.g. train val test")
    p.add_argument("--rebalance", type=Path, metavar="OUT",
                   help="write a copy with the answer in position A for half (±1) of the examples")
    args = p.parse_args(argv)
    if args.rebalance and len(args.files) > 1:
        raise UserError("--rebalance takes exactly one FILE")
    loaded = inspect.load_all(args.files)
    for path, examples in loaded.items():
        print("\n".join(dataset_lines(path, inspect.describe(examples, path))))
        warning = splits.balance_warning(examples, str(path))
        if warning:
            print(f"\n{'!' * 100}\n{warning}\n{'!' * 100}\n", file=sys.stderr)
    if len(loaded) == 1:
        print("user overlap: N/A (one file)")
        if args.rebalance:
            b = inspect.write_rebalanced(loaded[args.files[0]], args.rebalance)
            print(f"wrote {args.rebalance}: {b['n']} examples, position A {b['A']} "
                  f"({100 * b['a_fraction']:.1f}%), B {b['B']}")
        return 0
    leaks = inspect.leaks(loaded)
    if leaks:
        print("SPLIT LEAK:\n  " + "\n  ".join(leaks), file=sys.stderr)
        return 1
    print(f"user overlap: none across {len(loaded)} files")
    return 0


if __name__ == "__main__":
    run_main(main)
