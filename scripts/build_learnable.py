"""Build the learnable tiny setting configs/tiny_learn.yaml reads: a tiny Llama pretrained on label-free
text, and synthetic MovieLens-format data with mostly shared tastes (dporec.modeling.local_models).

Commands:
    python scripts/build_learnable.py --out models/learn      # about a minute on 2 CPU cores, offline
    python run_experiment.py --config configs/tiny_learn.yaml # base ~40%, SFT and DPO ~90%

Writes OUT/tiny-learn-llama/ (model and tokenizer), OUT/ml-1m-shared/ (the ratings) and OUT/data/
(train/val/test.jsonl, ranking_test.jsonl and the baselines' side files). Numbers from this setting show
that the pipeline learns; they mean nothing about recommendation quality on real data.
"""
from __future__ import annotations

import argparse

from dporec.config import run_main
from dporec.modeling.local_models import build_learnable, claim_model_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/learn", help="output folder (default models/learn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild a non-empty --out folder")
    args = p.parse_args(argv)
    model_dir, data_dir = build_learnable(claim_model_dir(args.out, args.force), seed=args.seed)
    print(f"model: {model_dir}\ndata:  {data_dir}")
    return 0


if __name__ == "__main__":
    run_main(main)
