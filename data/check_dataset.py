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
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.check_dataset(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
