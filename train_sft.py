"""Supervised fine-tuning (4-bit QLoRA) on the pairwise movie-recommendation answers.

Commands:
    # CPU smoke run (tiny random Llama + synthetic data, ~10 s; build inputs with `make models data-tiny`)
    python train_sft.py --config configs/tiny.yaml
    # a real run; continue an interrupted one; replace a finished one
    python train_sft.py --config configs/llama3_8b.yaml
    python train_sft.py --config configs/llama3_8b.yaml --resume
    python train_sft.py --config configs/llama3_8b.yaml sft.max_steps=200 seed=3 --overwrite

Writes <output_dir>/sft/: the LoRA adapter, tokenizer, checkpoint-N/ folders, config.yaml,
run_info.json and (last, marking the run finished) metrics.json with train/eval loss history,
tokens/s, peak memory and wall time.

Assumptions:
  - Rows are prompt/completion pairs (data.to_sft_rows): TRL trains on the completion only (prompt
    labels -100) and appends EOS, so the model learns to stop after its answer.
  - backend auto -> Unsloth on a CUDA GPU with unsloth installed, else transformers + bitsandbytes
    + PEFT (CPU included). Both produce the same PEFT adapter.
  - Validation loss on data.val_file every train.eval_steps, and once before the first step.
  - Out of memory ends with advice on which config keys to change; --resume then continues.
"""
from __future__ import annotations

from dporec import data as D
from dporec import health, models, runs, splits, training
from dporec.config import parse_args, run_main


def run(cfg: dict, callbacks=()) -> int:
    """Train the SFT adapter into <output_dir>/<sft.run_name>/; `callbacks` are added to the Trainer."""
    backend = models.backend_for(cfg)  # refuses GPU-only configs on a CPU; imports unsloth first when chosen
    train_exs, val_exs = training.load_stage_data(cfg)

    # sft.run_name / sft.init_adapter: run_experiment.py's compute-matched control continues the SFT
    # adapter in its own folder (output_dir/sft_control).
    init_adapter = cfg["sft"]["init_adapter"]
    if init_adapter:
        models.check_adapter(init_adapter, cfg["model"]["name"])
    out, resume_from = training.prepare_stage_dir(cfg, runs.stage_dir(cfg, cfg["sft"]["run_name"]))

    from transformers import set_seed
    set_seed(cfg["seed"])
    model, tok = models.load_for_training(cfg, backend, adapter=init_adapter)
    fmt = cfg["data"]["prompt_format"]
    train_ds = training.to_dataset(D.to_sft_rows(train_exs, fmt, tok))
    val_ds = training.to_dataset(D.to_sft_rows(val_exs, fmt, tok))

    from trl import SFTTrainer
    trainer = SFTTrainer(model=model, args=training.sft_config(cfg, out, backend),
                         train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok)
    training.adapters_to_fp32(trainer, backend)
    wall = training.train(trainer, resume_from, callbacks=[health.make_callback("sft", cfg["health"]), *callbacks])

    facts = {"stage": "sft", "backend": backend, "resumed_from": resume_from, "init_adapter": init_adapter,
             "n_train": len(train_exs), "n_val": len(val_exs), "train_balance": splits.balance(train_exs)}
    if training.finish_run(trainer, tok, out, cfg, wall, **facts):  # {} on the other processes
        print(f"[sft] adapter saved to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(__doc__, argv)[1])


if __name__ == "__main__":
    run_main(main)
