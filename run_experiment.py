"""The whole experiment in one command: data -> SFT -> DPO -> evaluation, skipping finished stages.

Commands:
    # CPU smoke run on the tiny random Llama (about a minute; inputs from `make models data-tiny`)
    python run_experiment.py --config configs/tiny.yaml output_dir=runs/smoke
    # the CPU demo: SmolLM2-135M on MovieLens-100K (what `make demo` runs)
    python run_experiment.py --config configs/cpu_demo.yaml
    # the thesis setup on a GPU; repeat over seeds; add the compute-matched SFT control arm
    python run_experiment.py --config configs/llama3_8b.yaml
    python run_experiment.py --config configs/llama3_8b.yaml "seeds=[1, 2, 3]"
    python run_experiment.py --config configs/llama3_8b.yaml experiment.control_arm=true
    # run it again: finished stages are skipped, an interrupted stage continues from its last checkpoint;
    # --overwrite trains and evaluates everything again
    python run_experiment.py --config configs/llama3_8b.yaml --overwrite

Stages and the file that marks each one finished (a stage whose marker exists is skipped):
    data         data.train_file/val_file/test_file; built from data.source when missing
    sft          <run>/sft/metrics.json                         (train_sft.py)
    dpo          <run>/dpo/metrics.json                         (train_dpo.py)
    sft_control  <run>/sft_control/metrics.json, with experiment.control_arm=true: SFT continued from
                 the SFT adapter for as many optimizer steps as the DPO stage took, at the DPO stage's
                 learning rate (batch, schedule, warmup, optimizer, examples and seed are shared), so
                 "DPO beats SFT" can be told apart from "more training beats less" (train_sft.py);
                 report.md lists what is matched and what cannot be
    eval         <run>/eval/results.json                        (evaluate_dpo.py)
<run> is output_dir, or output_dir/seed-<s> for each s in `seeds`. With seeds, output_dir/aggregate.json
and aggregate.md hold mean ± sd per metric and model, the per-seed verdicts and a pooled comparison
(each test pair's score averaged over the seeds first: n is the number of distinct pairs).
Each stage runs in this process (dporec.training.stages, dporec.evaluation.stage), with this config
(the control arm and the seeds change a few keys of a copy). With experiment.launcher each training
stage runs as a child process under that command instead, reading the resolved config from a
temporary YAML file.
A stage folder without its marker but with checkpoint-N/ folders is continued (resume=true is set for
it), so rerunning this command after an interruption is all it takes; --resume here is accepted for
symmetry with the stage scripts. --overwrite reruns every stage (data files are kept).
"""
from __future__ import annotations

from dporec import experiment
from dporec.config import parse_args, run_main


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(__doc__, argv)
    return experiment.run(cfg, args.config)


if __name__ == "__main__":
    run_main(main)
