"""Direct Preference Optimization (4-bit QLoRA) on chosen/rejected movie-recommendation answers.

Commands:
    # CPU smoke run on the tiny random Llama (after train_sft.py --config configs/tiny.yaml)
    python train_dpo.py --config configs/tiny.yaml
    # from a fresh LoRA instead of the SFT adapter (reference = base model)
    python train_dpo.py --config configs/tiny.yaml dpo.init=base output_dir=runs/tiny-dpo-base
    # NLL-regularised DPO (RPO), IPO; continue an interrupted run
    python train_dpo.py --config configs/llama3_8b.yaml "dpo.loss_type=[sigmoid, sft]" \\
        "dpo.loss_weights=[1.0, 1.0]"
    python train_dpo.py --config configs/llama3_8b.yaml dpo.loss_type=[ipo] dpo.beta=0.5
    python train_dpo.py --config configs/llama3_8b.yaml --resume
    # the on-policy arm's DPO (after sample_onpolicy.py): the same steps as DPO, on the sampled pairs
    python train_dpo.py --config configs/llama3_8b.yaml --arm onpolicy

Writes <output_dir>/dpo/ (--arm onpolicy: <output_dir>/dpo_onpolicy/): the LoRA adapter (plus ref/, the
frozen reference copy, when started
from SFT), tokenizer, checkpoint-N/, config.yaml, run_info.json and (last) metrics.json with the
loss and rewards/chosen|rejected|margins|accuracies and logps/* histories (train and eval), tokens/s,
peak memory, wall time and which reference was used.

Assumptions:
  - dpo.init=sft: the policy starts from the run's SFT adapter (dpo.sft_adapter, default <output_dir>/sft)
    and TRL keeps a frozen copy of it as the reference: DPO measures movement away from the SFT
    model. dpo.init=base: a fresh LoRA; its frozen copy adds nothing (lora_B = 0), so the reference
    is the base model. The choice is recorded in run_info.json and metrics.json.
  - The rejected answer names the other option with reasoning for it; a pair whose rejected text
    equals its chosen text is an error (records.to_dpo_rows).
  - Rewards are ~0 at the step-0 evaluation because policy == reference at init.
  - Unsloth: PatchDPOTrainer() is called (a no-op in current releases) and no peft_config is passed.
"""
from __future__ import annotations

from dporec import cli
from dporec.config import run_main


def main(argv: list[str] | None = None) -> int:
    return cli.train_dpo(argv, __doc__)


if __name__ == "__main__":
    run_main(main)
