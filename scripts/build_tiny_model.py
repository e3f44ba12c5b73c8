"""Build the tiny random-weight Llama (and its locally trained tokenizer) used by tests and smoke runs.

Commands:
    python scripts/build_tiny_model.py                       # -> models/tiny-llama
    python scripts/build_tiny_model.py --out /tmp/tiny --force

Assumptions: no network; the model is random (it learns only what a smoke run teaches it) and
small enough (hidden 64, 2 layers) to train in seconds on a CPU, with every linear layer a multiple
of 64 wide so bitsandbytes can quantize it to 4-bit.
"""
from __future__ import annotations

import argparse

from dporec.config import run_main
from dporec.modeling.local_models import build_tiny_llama, claim_model_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/tiny-llama", help="model folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = claim_model_dir(args.out, args.force)
    build_tiny_llama(out, seed=args.seed)
    print(f"tiny Llama written to {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
