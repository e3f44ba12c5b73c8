"""Rank a user's candidate movies with a trained adapter: the same pairwise, both-order scoring the
evaluation's ranking uses, outside the evaluation.

Commands:
    # CPU smoke run: the tiny model's DPO adapter (after run_experiment.py --config configs/tiny.yaml)
    python recommend.py --config configs/tiny.yaml --input data/generated/tiny/ranking_test.jsonl
    # the thesis run's DPO adapter on your own requests; the SFT adapter; the base model; with the
    # model's own answer for the top two
    python recommend.py --config configs/llama3_8b.yaml --input my_users.jsonl --explain
    python recommend.py --config configs/llama3_8b.yaml --input my_users.jsonl --adapter runs/llama3_8b/sft
    python recommend.py --config configs/llama3_8b.yaml --input my_users.jsonl --adapter none

--input: one JSON object per line, in the layout data/prepare_movielens.py writes to ranking_test.jsonl
(a line of that file works as it is):

    {"user_id": "42", "history": [{"title": "Heat (1995)", "genres": ["Action", "Crime"]}, ...],
     "candidates": [{"title": "Toy Story (1995)", "genres": ["Animation", "Comedy"]}, ...]}

History oldest first (the last five liked movies make the prompt); two or more candidates; a candidate
may carry a "rating" (then the printout adds Kendall's tau-b against the ratings given).

--adapter DIR (default: <output_dir>/dpo, else <output_dir>/sft; `none`: the base model). --explain
generates the model's answer to "best vs second best". --out FILE.jsonl writes the rankings too.

Assumptions: N candidates cost N(N-1) scored questions (8 candidates: 56); the base loads once, as in
evaluate_dpo.py, on the backend the config picks (Unsloth on a CUDA GPU, transformers + PEFT elsewhere).
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.recommend(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
