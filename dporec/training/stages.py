"""The two training stages, SFT and DPO: what train_sft.py and train_dpo.py run.

Each stage checks its data and folders before a model loads, trains with TRL, and writes its adapter,
config.yaml, run_info.json and (last, the finished marker) metrics.json into its stage folder.
"""
from __future__ import annotations

from pathlib import Path

from dporec import compat, runs, weights
from dporec.data import records, splits
from dporec.modeling import backends
from dporec.training import dpo_trainer, health, trainer

# What the DPO reference is, recorded in run_info.json and metrics.json. TRL 1.14, given a PeftModel
# and ref_model=None, copies the trainable 'default' adapter into a frozen 'ref' adapter and scores the
# reference through it. From an SFT adapter that copy *is* the SFT model; from a fresh LoRA (lora_B = 0)
# the copy adds nothing, so the reference is exactly the base model.
REFERENCE_SFT = "sft_adapter (frozen copy)"
REFERENCE_BASE = "base model (frozen copy of the zero-initialised LoRA)"


def run_sft(cfg: dict, callbacks=()) -> int:
    """Train the SFT adapter into <output_dir>/<sft.run_name>/; `callbacks` are added to the Trainer."""
    # refuses GPU-only configs on a CPU; imports unsloth first when chosen
    backend = backends.backend_for(cfg)
    train_exs, val_exs = trainer.load_stage_data(cfg)

    # sft.run_name / sft.init_adapter: run_experiment.py's compute-matched control continues the SFT
    # adapter in its own folder (output_dir/sft_control).
    init_adapter = cfg["sft"]["init_adapter"]
    backends.check_model_name(cfg["model"]["name"])
    if init_adapter:
        runs.check_adapter(init_adapter, cfg["model"]["name"])
    if runs.finished_already(runs.stage_dir(cfg, cfg["sft"]["run_name"]), cfg):
        return 0
    out, resume_from = trainer.prepare_stage_dir(cfg, runs.stage_dir(cfg, cfg["sft"]["run_name"]))
    cfg = {**cfg, "resume": resume_from is not None}  # what the trainer is told: continuing or not

    with runs.stage_guard(out):
        model, tok, train_ds, val_ds = _load(cfg, backend, init_adapter, records.to_sft_rows, train_exs,
                                             val_exs, out)
        from trl import SFTTrainer
        sft = SFTTrainer(model=model, args=trainer.sft_config(cfg, out, backend),
                         train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok)
        if _fit(sft, tok, out, cfg, backend, resume_from, callbacks, train_exs, val_exs,
                stage="sft", init_adapter=init_adapter,
                inputs=runs.input_record({"init_adapter": init_adapter} if init_adapter else {})):
            print(f"[sft] adapter saved to {out}")
    return 0


def run_dpo(cfg: dict, callbacks=()) -> int:
    """Train the DPO adapter into <output_dir>/<dpo.run_name>/; `callbacks` are added to the Trainer."""
    backend = backends.backend_for(cfg, stage="dpo")
    train_exs, val_exs = trainer.load_stage_data(cfg)
    records.to_dpo_rows(train_exs + val_exs)  # rejected == chosen fails here, before any model loads

    init = cfg["dpo"]["init"]
    backends.check_model_name(cfg["model"]["name"])
    adapter = runs.sft_adapter_path(cfg) if init == "sft" else None
    if adapter is not None:
        runs.check_adapter(adapter, cfg["model"]["name"])
    reference = REFERENCE_SFT if init == "sft" else REFERENCE_BASE
    # dpo.run_name: run_experiment.py's on-policy arm trains into dpo_onpolicy/ on its sampled pairs
    folder = runs.stage_dir(cfg, cfg["dpo"]["run_name"])
    if runs.finished_already(folder, cfg):
        return 0
    out, resume_from = trainer.prepare_stage_dir(cfg, folder)
    cfg = {**cfg, "resume": resume_from is not None}

    with runs.stage_guard(out):
        model, tok, train_ds, val_ds = _load(cfg, backend, adapter, records.to_dpo_rows, train_exs, val_exs,
                                             out)
        # ref_model=None and no peft_config: TRL freezes a copy of the 'default' adapter as 'ref'.
        dpo = dpo_trainer.trainer_class(backend, cfg["dpo"]["prefix_sharing"])(
            model=model, ref_model=None, args=trainer.dpo_config(cfg, out, backend),
            train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok)
        if _fit(dpo, tok, out, cfg, backend, resume_from, callbacks, train_exs, val_exs,
                stage="dpo", init=init, reference_model=reference,
                sft_adapter=str(adapter) if adapter else None,
                loss_type=cfg["dpo"]["loss_type"], beta=cfg["dpo"]["beta"],
                inputs=runs.input_record({"sft": adapter} if adapter else {})):
            print(f"[dpo] adapter saved to {out} (reference: {reference})")
    return 0


def _load(cfg: dict, backend: str, adapter, to_rows, train_exs, val_exs, out: Path):
    """(model with a trainable LoRA, tokenizer, train dataset, validation dataset)."""
    from transformers import set_seed
    set_seed(cfg["seed"])
    model, tok = backends.load_for_training(cfg, backend, adapter=adapter)
    fmt = cfg["data"]["prompt_format"]
    train_rows, val_rows = to_rows(train_exs, fmt, tok), to_rows(val_exs, fmt, tok)
    # measured with this run's tokenizer before the trainer sees them: TRL drops or cuts long rows silently
    records.check_lengths(train_exs + val_exs, train_rows + val_rows, tok, cfg["model"]["max_seq_length"])
    shared = out / trainer.SHARED_DATASETS
    return (model, tok, trainer.to_dataset(train_rows, shared / "train"),
            trainer.to_dataset(val_rows, shared / "val"))


def _fit(tr, tok, out, cfg: dict, backend: str, resume_from, callbacks, train_exs, val_exs, **facts) -> bool:
    """Train, then save the adapter and the run's records; True on the process that wrote them."""
    compat.adapters_to_fp32(tr, backend)
    stage = facts["stage"]
    if stage == "dpo" and facts.get("init") == "sft" and not resume_from:
        compat.policy_from_reference(tr.model)  # the policy starts exactly at the reference (SFT)
    wall = trainer.train(tr, resume_from, callbacks=[health.make_callback(stage, cfg["health"]), *callbacks])
    if stage == "dpo":  # whether each pair's prompt ran once, or why not (the first batch's check)
        facts["shared_prompt"] = getattr(tr, "shared_prompt", "off (the Unsloth backend)")
    facts.update(backend=backend, resumed_from=resume_from, n_train=len(train_exs), n_val=len(val_exs),
                 train_balance=splits.balance(train_exs),
                 # what evaluation and DPO compare to catch a same-named base with other weights
                 base_fingerprint=weights.fingerprint_base(cfg["model"]["name"]))
    return bool(trainer.finish_run(tr, tok, out, cfg, wall, **facts))  # {} on the other processes
