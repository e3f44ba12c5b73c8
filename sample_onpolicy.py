"""On-policy preference pairs: the SFT model's own answers, judged by the ratings and the history.

Commands:
    # CPU smoke run: the learnable tiny setting (built by scripts/build_learnable.py, about a minute),
    # its SFT stage, the sampling (~45 s), then DPO from SFT on the pairs it wrote
    python scripts/build_learnable.py --out models/learn
    python train_sft.py --config configs/tiny_learn.yaml
    python sample_onpolicy.py --config configs/tiny_learn.yaml
    python train_dpo.py --config configs/tiny_learn.yaml --arm onpolicy
    # the thesis run's SFT model, 4 samples per prompt and order; or all of it as the experiment arm
    python sample_onpolicy.py --config configs/llama3_8b.yaml
    python run_experiment.py --config configs/llama3_8b.yaml experiment.on_policy_arm=true

Writes <output_dir>/onpolicy_pairs/: samples.jsonl (every sampled answer, appended as made: a rerun
after an interruption continues from it), sampling.json (the settings the samples depend on),
pairs.jsonl (records train_dpo.py reads: `output` the chosen answer, `rejected` the rejected one),
config.yaml, run_info.json and, last, summary.json: prompts, samples, parse failures, pairs, prompts
with all samples right / all wrong, degenerate pairs (0), the chosen answers' positions, how often
the longer answer is chosen, and the sampled decisions' spread over A and B.

Assumptions:
  - The base loads once with the run's SFT adapter (dpo.sft_adapter, default <output_dir>/sft); every
    training prompt (data.train_file, up to onpolicy.max_prompts) is asked in both option orders,
    onpolicy.samples_per_prompt times each, at onpolicy.temperature / top_p. Unsloth's inference
    mode on a CUDA GPU, transformers' generate elsewhere.
  - The judge is the data, not a model (dporec/data/judge.py): the decision is parsed by the task's
    one parser and checked against the user's label; each genre claim is checked against the
    prompt's history. Chosen: the right decision with only true claims. Rejected: the wrong decision
    (onpolicy.rejected=wrong_decision_or_false_claims: also a right one with false claims).
    Unparseable answers are counted and never paired; a prompt without both kinds is skipped.
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.sample_onpolicy(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
