"""Compare base, SFT and DPO on the held-out test pairs: position-debiased likelihood scoring and an
honest statistical verdict.

Commands:
    # CPU smoke run on the tiny random Llama (after train_sft.py and train_dpo.py with the same config)
    python evaluate_dpo.py --config configs/tiny.yaml
    # a real run; add free-text generation; add the 4-bit vs 16-bit stability check; evaluate again
    python evaluate_dpo.py --config configs/llama3_8b.yaml
    python evaluate_dpo.py --config configs/llama3_8b.yaml eval.generate=true
    python evaluate_dpo.py --config configs/llama3_8b.yaml eval.stability=true --overwrite
    # without the ranking (on by default, 150 users): the pairwise verdict alone, faster
    python evaluate_dpo.py --config configs/llama3_8b.yaml eval.ranking=false --overwrite
    # with an arm's model (trained by run_experiment.py or the stage scripts' --arm), or any other adapter
    python evaluate_dpo.py --config configs/llama3_8b.yaml experiment.control_arm=true --overwrite
    python evaluate_dpo.py --config configs/llama3_8b.yaml "eval.adapters={other: runs/x/dpo}"
    # re-analyse a finished evaluation from its predictions.csv: no model is loaded (seconds, no GPU)
    python evaluate_dpo.py --config configs/tiny.yaml --from-predictions runs/tiny/eval/predictions.csv
    python evaluate_dpo.py --config configs/tiny.yaml --from-predictions old/predictions.csv \\
        output_dir=runs/re

Writes <output_dir>/eval/: predictions.csv (one row per test pair, option order and model),
accuracy.png, confidence.png, report.md, config.yaml, run_info.json, with eval.ranking also
ranking.csv and ranking.png, and, last (marking the evaluation finished), results.json.

--from-predictions PATH recomputes every statistic, results.json, report.md and the plots into
<output_dir>/eval/ from a predictions.csv (this version's or an earlier one's), with this config's
eval.bootstrap_samples, eval.alpha and seed. PATH = <output_dir>/eval/predictions.csv re-analyses in
place: predictions.csv, config.yaml and run_info.json stay as scored, the old results.json is kept
as results.previous.json, and what a CSV cannot give back (timings, the stability check, the scoring
setup) is carried over from it. Any other PATH is copied into <output_dir>/eval/, which must not
hold a finished evaluation unless --overwrite is given.

How it measures (docs/statistics.md):
  - Every test pair is scored in its original option order and with the options swapped, so a
    model that always answers "A" scores 50%, not 100% (the precursor's always-A labels).
  - Likelihood scoring, no sampling: the decision is the option whose "... Option X" has the higher
    log-prob (dporec/evaluation/scoring.py); eval.full_answer=true also scores both complete answers
    (the quantity DPO trains) as a secondary table.
  - The 4-bit base is loaded once; adapters are switched with set_adapter; the base is scored with
    its adapters disabled. A DPO run started from SFT also saved a ref/ sub-folder (the frozen
    reference); the top-level adapter, the policy, is what is evaluated.
  - Verdict: two-order accuracy DPO vs SFT, the mean per-pair difference with a cluster-robust
    (CR2) t interval over users and its p-value; the label follows the interval with the practical
    margin eval.margin_points: SUPPORTED (all above 0), NOT SUPPORTED (all below the margin) or
    INCONCLUSIVE; then the test size the margin needs (dporec/analysis/). Baselines read only
    ratings made before each pair's time; the strongest is chosen on validation. Each arm the config
    switches on (dporec/arms.py) adds its model and its comparisons, under the same rule.
  - eval.ranking (default true, eval.ranking_max_users users) ranks N rated candidates per test user
    (ranking_test.jsonl beside the test file) from all their pairs in both orders: Kendall tau-b,
    NDCG@3 and hit@1 against the user's ratings, per model and baseline rule, and a second verdict
    line for DPO - SFT in tau-b by the same rule; adds ranking.csv and ranking.png.
  - eval.generate=true adds greedy generation, parsed strictly (an answer naming both options or
    neither is invalid). eval.stability=true loads the base again unquantized and reports how many
    decisions change between 4-bit and 16-bit (fp32 on CPU).
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.evaluate_dpo(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
