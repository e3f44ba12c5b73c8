"""Check that this machine can run the experiment before spending hours on it.

    # GPU: versions, GPU + driver, xformers, Unsloth, 4-bit matmul, model, memory, data, disk, and the
    # predicted time and peak memory of every stage (on this GPU; without one, an RTX 3090 and a T4)
    python verify_setup.py --config configs/llama3_8b.yaml
    # GPU: also a few SFT + DPO steps with the backend the config resolves to
    python verify_setup.py --config configs/llama3_8b.yaml --smoke
    # CPU demo (what `make verify` runs); CPU smoke with a few SFT + DPO steps on a tiny model
    python verify_setup.py --config configs/cpu_demo.yaml
    python verify_setup.py --config configs/tiny.yaml --smoke
    # before evaluate_dpo.py: the adapters must exist
    python verify_setup.py --config configs/llama3_8b.yaml --for-eval
    # predict the time from the utilisation per backend a GPU benchmark measured (benchmarks/bench_train.py)
    python verify_setup.py --config configs/llama3_8b.yaml --utilisation benchmarks/results/rtx-3090.json

Prints one row per check: ✓ fine, ! works but worth knowing (slow path, not trained yet, ...),
✗ will fail (each with the command or setting that fixes it). Exit status 1 when any check is ✗.
A GPU nvidia-smi sees but torch cannot use, xformers that does not load, and a GPU-sized model
(hardware.gpu_refusal: the rule the scripts apply) without a usable GPU are each a ✗.
Without --smoke it runs in seconds and never trains, downloads or imports Unsloth on a CPU machine.
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.verify_setup(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
