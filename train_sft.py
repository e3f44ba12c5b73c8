"""Supervised fine-tuning (4-bit QLoRA) on the pairwise movie-recommendation answers.

Commands:
    # CPU smoke run (tiny random Llama + synthetic data, ~10 s; build inputs with `make models data-tiny`)
    python train_sft.py --config configs/tiny.yaml
    # a real run; continue an interrupted one; replace a finished one
    python train_sft.py --config configs/llama3_8b.yaml
    python train_sft.py --config configs/llama3_8b.yaml --resume
    python train_sft.py --config configs/llama3_8b.yaml sft.max_steps=200 seed=3 --overwrite
    # the compute-matched control arm (after train_dpo.py): SFT continued for as many steps as DPO took
    python train_sft.py --config configs/llama3_8b.yaml --arm control

Writes <output_dir>/sft/ (--arm control: <output_dir>/sft_control/): the LoRA adapter, tokenizer,
checkpoint-N/ folders, config.yaml (the config as given), run_info.json (with the stage's effective steps,
learning rate and data), a model card and (last, marking the run finished) metrics.json with train/eval
loss history, tokens/s, peak memory and wall time.

Assumptions:
  - Rows are prompt/completion pairs (records.to_sft_rows): TRL trains on the completion only (prompt
    labels -100) and appends EOS, so the model learns to stop after its answer.
  - backend auto -> Unsloth on a CUDA GPU with unsloth installed, else transformers + bitsandbytes
    + PEFT (CPU included). Both produce the same PEFT adapter.
  - Validation loss on data.val_file every train.eval_steps, and once before the first step.
  - Out of memory ends with advice on which config keys to change; --resume then continues.
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.train_sft(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
