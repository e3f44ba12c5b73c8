"""Direct Preference Optimization (4-bit QLoRA) on chosen/rejected movie-recommendation answers.

Commands:
    # CPU smoke run on the tiny random Llama (after train_sft.py --config configs/tiny.yaml)
    python train_dpo.py --config configs/tiny.yaml
    # from a fresh LoRA instead of the SFT adapter (reference = base model)
    python train_dpo.py --config configs/tiny.yaml dpo.init=base output_dir=runs/tiny-dpo-base
    # NLL-regularised DPO (RPO), IPO; continue an interrupted run
    python train_dpo.py --config configs/llama3_8b.yaml "dpo.loss_type=[sigmoid, sft]" "dpo.loss_weights=[1.0, 1.0]"
    python train_dpo.py --config configs/llama3_8b.yaml dpo.loss_type=[ipo] dpo.beta=0.5
    python train_dpo.py --config configs/llama3_8b.yaml --resume

Writes <output_dir>/dpo/: the LoRA adapter (plus ref/, the frozen reference copy, when started
from SFT), tokenizer, checkpoint-N/, config.yaml, run_info.json and (last) metrics.json with the
loss and rewards/chosen|rejected|margins|accuracies and logps/* histories (train and eval), tokens/s,
peak memory, wall time and which reference was used.

Assumptions:
  - dpo.init=sft: the policy starts from the SFT adapter (dpo.sft_adapter, default <output_dir>/sft)
    and TRL keeps a frozen copy of it as the reference: DPO measures movement away from the SFT
    model. dpo.init=base: a fresh LoRA; its frozen copy adds nothing (lora_B = 0), so the reference
    is the base model. The choice is recorded in run_info.json and metrics.json.
  - The rejected answer names the other option with reasoning for it; a pair whose rejected text
    equals its chosen text is an error (data.to_dpo_rows).
  - Rewards are ~0 at the step-0 evaluation because policy == reference at init.
  - Unsloth: PatchDPOTrainer() is called (a no-op in current releases) and no peft_config is passed.
"""
from __future__ import annotations

from dporec import data as D
from dporec import completion_logits, health, models, runs, splits, training
from dporec.config import parse_args, run_main


def run(cfg: dict, callbacks=()) -> int:
    """Train the DPO adapter into <output_dir>/dpo/; `callbacks` are added to the Trainer."""
    backend = models.backend_for(cfg)  # refuses GPU-only configs on a CPU; imports unsloth first when chosen
    train_exs, val_exs = training.load_stage_data(cfg)
    fmt = cfg["data"]["prompt_format"]
    D.to_dpo_rows(train_exs + val_exs)  # rejected == chosen fails here, before any model loads

    init = cfg["dpo"]["init"]
    adapter = runs.sft_adapter_path(cfg) if init == "sft" else None
    if adapter is not None:
        models.check_adapter(adapter, cfg["model"]["name"])
    reference = training.REFERENCE_SFT if init == "sft" else training.REFERENCE_BASE

    out, resume_from = training.prepare_stage_dir(cfg, runs.stage_dir(cfg, runs.DPO))

    from transformers import set_seed
    set_seed(cfg["seed"])
    model, tok = models.load_for_training(cfg, backend, adapter=adapter)
    train_ds = training.to_dataset(D.to_dpo_rows(train_exs, fmt, tok))
    val_ds = training.to_dataset(D.to_dpo_rows(val_exs, fmt, tok))

    if backend == "unsloth":
        from unsloth import PatchDPOTrainer
        PatchDPOTrainer()
    from trl import DPOTrainer
    if backend == "hf":  # the same trainer without the prompt's vocabulary logits (dporec/completion_logits.py)
        DPOTrainer = completion_logits.dpo_trainer_class()  # noqa: N806
    # ref_model=None and no peft_config: TRL freezes a copy of the 'default' adapter as 'ref'.
    trainer = DPOTrainer(model=model, ref_model=None, args=training.dpo_config(cfg, out, backend),
                         train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok)
    training.adapters_to_fp32(trainer, backend)
    wall = training.train(trainer, resume_from, callbacks=[health.make_callback("dpo", cfg["health"]), *callbacks])

    facts = {"stage": "dpo", "backend": backend, "init": init, "reference_model": reference,
             "sft_adapter": str(adapter) if adapter else None, "resumed_from": resume_from,
             "loss_type": cfg["dpo"]["loss_type"], "beta": cfg["dpo"]["beta"],
             "n_train": len(train_exs), "n_val": len(val_exs), "train_balance": splits.balance(train_exs)}
    if training.finish_run(trainer, tok, out, cfg, wall, **facts):  # {} on the other processes
        print(f"[dpo] adapter saved to {out} (reference: {reference})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(__doc__, argv)[1])


if __name__ == "__main__":
    run_main(main)
