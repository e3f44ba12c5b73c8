"""The whole experiment in one command: data -> SFT -> DPO -> the arms -> evaluation, skipping finished
stages.

Commands:
    # CPU smoke run on the tiny random Llama (about a minute; inputs from `make models data-tiny`)
    python run_experiment.py --config configs/tiny.yaml output_dir=runs/smoke
    # the CPU demo: SmolLM2-135M on MovieLens-100K (what `make demo` runs)
    python run_experiment.py --config configs/cpu_demo.yaml
    # the thesis setup on a GPU; repeat over seeds; add the compute-matched SFT control arm
    python run_experiment.py --config configs/llama3_8b.yaml
    python run_experiment.py --config configs/llama3_8b.yaml "seeds=[1, 2, 3]"
    python run_experiment.py --config configs/llama3_8b.yaml experiment.control_arm=true
    python run_experiment.py --config configs/llama3_8b.yaml experiment.on_policy_arm=true
    # run it again: finished stages are skipped, an interrupted stage continues from its last checkpoint;
    # --overwrite trains and evaluates everything again
    python run_experiment.py --config configs/llama3_8b.yaml --overwrite

Stages and the file that marks each one finished (a stage whose marker exists is skipped; one built from
an adapter that has changed since runs again):
    data            data.train_file/val_file/test_file; built from data.source when missing
    sft             <run>/sft/metrics.json               (train_sft.py; none with dpo.sft_adapter set)
    dpo             <run>/dpo/metrics.json               (train_dpo.py)
    sft_control     <run>/sft_control/metrics.json       (train_sft.py --arm control), with
                    experiment.control_arm=true: SFT continued from the SFT adapter for as many optimizer
                    steps as DPO took, at DPO's learning rate, so "DPO beats SFT" can be told apart from
                    "more training beats less"; report.md lists what is matched and what cannot be
    onpolicy_pairs  <run>/onpolicy_pairs/summary.json    (sample_onpolicy.py), with
                    experiment.on_policy_arm=true: the SFT model's own answers, judged and paired
    dpo_onpolicy    <run>/dpo_onpolicy/metrics.json      (train_dpo.py --arm onpolicy): DPO from SFT on
                    those pairs, with the off-policy DPO's steps, beta, learning rate and reference
    eval            <run>/eval/results.json              (evaluate_dpo.py): every model, every comparison
The arms and their stages are defined in dporec/arms.py.
<run> is output_dir, or output_dir/seed-<s> for each s in `seeds`. With seeds, output_dir/aggregate.json
and aggregate.md hold mean ± sd per metric and model, the per-seed verdicts and a pooled comparison for
every comparison (each test pair's score averaged over the seeds first: n is the number of distinct pairs).
Each stage runs in this process, with this config as given and a stage spec (the folder, the adapter it
starts from, and the steps, learning rate or data its arm sets). A stage whose backend differs from the
one this process loaded (DPO's shared-prompt forward on transformers after Unsloth ran SFT), and with
experiment.launcher every training stage, runs as a child process of its script instead, handed the same
config and spec in files.
A stage folder without its marker but with checkpoint-N/ folders is continued, so rerunning this command
after an interruption is all it takes; --resume here is accepted for symmetry with the stage scripts.
--overwrite reruns every stage (data files are kept).
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.run_experiment(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
