"""The training stages, SFT and DPO: what train_sft.py and train_dpo.py run, and what run_experiment.py
runs for the main comparison and for every arm's training stage (dporec.arms).

A stage gets the user's config, the StageSpec it runs (the orchestrator's, or a standalone script's default
or --arm one) and the process's Runtime (modeling.runtime). It trains with the effective config (the
spec's steps, learning rate and data applied), checks its data and folder before a model loads, trains
with TRL, and writes its adapter, config.yaml (the user's config, as given), run_info.json (with the spec
and its effective settings) and, last, the finished marker metrics.json.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch

from dporec import UserError, arms, compat, weights
from dporec.config import updated
from dporec.data import balance, built, records
from dporec.files import jsonable
from dporec.modeling import backends, runtime
from dporec.modeling.hardware import return_freed_memory
from dporec.report import plots
from dporec.report.model_card import model_card
from dporec.runs import lifecycle, provenance
from dporec.runs.adapters import FinishedRun, check_adapter, require_sft_adapter
from dporec.training import arguments, dpo_trainer, health, metrics
from dporec.training.distributed import ShardLog, processes, shard_report

log = logging.getLogger(__name__)

# What the DPO reference is, recorded in run_info.json and metrics.json. TRL 1.14, given a PeftModel
# and ref_model=None, copies the trainable 'default' adapter into a frozen 'ref' adapter and scores the
# reference through it. From an SFT adapter that copy *is* the SFT model; from a fresh LoRA (lora_B = 0)
# the copy adds nothing, so the reference is exactly the base model.
REFERENCE_SFT = "sft_adapter (frozen copy)"
REFERENCE_BASE = "base model (frozen copy of the zero-initialised LoRA)"
OOM_ADVICE = ("out of memory. Lower train.batch_size (raise train.grad_accum to keep the effective batch "
              "size), shorten model.max_seq_length, set train.gradient_checkpointing=true, or use a smaller "
              "lora.r. Then rerun with --resume to continue from the last checkpoint.")
SHARED_DATASETS = ".datasets"  # the stage folder's subfolder for to_dataset's copies under several processes


def run_sft(cfg: dict, spec: arms.StageSpec | None = None, rt: runtime.Runtime | None = None,
            callbacks=()) -> int:
    """Train an SFT adapter into its stage folder (<output_dir>/sft unless `spec` says otherwise);
    `callbacks` are added to the Trainer."""
    spec = spec or arms.StageSpec(arms.SFT)
    rt = rt or runtime.setup(cfg, "sft")
    backend = rt.check("sft", spec.stage.script)
    scfg = stage_config(cfg, spec)
    arguments.check_names(scfg)
    train_exs, val_exs = load_stage_data(cfg, scfg)
    backends.check_model_name(cfg["model"]["name"])
    if spec.init_adapter:  # the control arm continues the run's SFT adapter
        check_adapter(require_sft_adapter(spec.init_adapter, f"the {spec.stage.label} stage"),
                      cfg["model"]["name"])
    start = _start(cfg, spec)
    if start is None:
        return 0
    out, resume_from = start
    with lifecycle.stage_guard(out):
        model, tok, train_ds, val_ds = _load(scfg, backend, spec.init_adapter, records.to_sft_rows,
                                             train_exs, val_exs, out)
        from trl import SFTTrainer
        sft = SFTTrainer(model=model, args=arguments.sft_config(scfg, out, backend, bool(resume_from)),
                         train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok)
        inputs = {"init_adapter": spec.init_adapter} if spec.init_adapter else {}
        if _fit(sft, tok, out, cfg, scfg, spec, backend, resume_from, callbacks, train_exs, val_exs,
                init_adapter=spec.init_adapter, inputs=provenance.input_record(inputs, cfg["output_dir"])):
            log.info(f"[{spec.stage.name}] adapter saved to {out}")
    return 0


def run_dpo(cfg: dict, spec: arms.StageSpec | None = None, rt: runtime.Runtime | None = None,
            callbacks=()) -> int:
    """Train a DPO adapter into its stage folder (<output_dir>/dpo unless `spec` says otherwise), from the
    run's SFT adapter (dpo.init=sft) or a fresh LoRA; `callbacks` are added to the Trainer."""
    spec = spec or arms.main_spec(arms.DPO, cfg, FinishedRun(cfg, "DPO"))
    rt = rt or runtime.setup(cfg, "dpo")
    backend = rt.check("dpo", spec.stage.script)
    scfg = stage_config(cfg, spec)
    arguments.check_names(scfg)
    train_exs, val_exs = load_stage_data(cfg, scfg)
    records.to_dpo_rows(train_exs + val_exs)  # rejected == chosen fails here, before any model loads
    backends.check_model_name(cfg["model"]["name"])
    adapter = spec.init_adapter
    if adapter is not None:
        needs = "dpo.init=sft (or set dpo.init=base)" if spec.arm is None else f"the {spec.stage.label} stage"
        check_adapter(require_sft_adapter(adapter, needs), cfg["model"]["name"])
    reference = REFERENCE_SFT if adapter else REFERENCE_BASE
    start = _start(cfg, spec)
    if start is None:
        return 0
    out, resume_from = start
    with lifecycle.stage_guard(out):
        model, tok, train_ds, val_ds = _load(scfg, backend, adapter, records.to_dpo_rows, train_exs, val_exs,
                                             out)
        # ref_model=None and no peft_config: TRL freezes a copy of the 'default' adapter as 'ref'.
        dpo = dpo_trainer.trainer_class(backend, scfg["dpo"]["prefix_sharing"])(
            model=model, ref_model=None, args=arguments.dpo_config(scfg, out, backend, bool(resume_from)),
            train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok)
        if _fit(dpo, tok, out, cfg, scfg, spec, backend, resume_from, callbacks, train_exs, val_exs,
                init=scfg["dpo"]["init"], reference_model=reference, sft_adapter=adapter,
                loss_type=scfg["dpo"]["loss_type"], beta=scfg["dpo"]["beta"],
                inputs=provenance.input_record({"sft": adapter} if adapter else {}, cfg["output_dir"])):
            log.info(f"[{spec.stage.name}] adapter saved to {out} (reference: {reference})")
    return 0


# ---------------------------------------------------------------------------------------------
# Before a model loads: the stage's config, data and folder

def stage_config(cfg: dict, spec: arms.StageSpec) -> dict:
    """The config the stage trains with: the user's, with the spec's settings applied."""
    settings = spec.config_settings(cfg["output_dir"])
    if settings:
        log.info(f"[{spec.stage.name}] {spec.describe()}")
    return updated(cfg, settings)


def load_stage_data(cfg: dict, scfg: dict) -> tuple[list, list]:
    """Train and validation examples of the stage's config, validated (FILE:LINE errors) before any model
    is loaded; the user's data folder must agree with the user's config (data.built).

    A training set where one option letter dominates is trained on, but loudly: the model can learn
    the position instead of the preference (the precursor's always-A data).
    """
    built.check_agrees(cfg["data"])
    dc = scfg["data"]
    train = records.load_examples(dc["train_file"], dc["max_train_examples"])
    val = records.load_examples(dc["val_file"], dc["max_val_examples"])
    for exs, name in ((train, dc["train_file"]), (val, dc["val_file"])):
        warning = balance.balance_warning(exs, name)
        if warning:
            log.warning("\n" + "!" * 100 + f"\n{warning}\n" + "!" * 100 + "\n")
    b = balance.balance(train)
    log.info(f"[data] train {b['n']} examples (A {b['A']} / B {b['B']}) from {dc['train_file']}; "
             f"val {len(val)} from {dc['val_file']}")
    return train, val


def _start(cfg: dict, spec: arms.StageSpec) -> tuple[Path, str | None] | None:
    """(the stage folder, the checkpoint to resume from), or None when resume=auto finds it finished.

    The main process checks and cleans the folder first; under several processes the others wait, then
    see the folder as it left it. A refusal on the main process ends the launch.
    """
    resume, overwrite = spec.mode(cfg)
    folder, marker = spec.stage.folder(cfg["output_dir"]), spec.stage.marker
    recipe = provenance.recipe(cfg, spec)
    if lifecycle.finished_already(folder, resume, marker, recipe):
        return None
    with processes().main_process_first():
        out = lifecycle.prepare_run_dir(folder, resume, overwrite, marker)
        checkpoint = lifecycle.resume_checkpoint(out, resume, overwrite)
        if processes().is_main_process:  # a continued run only with what it started with
            lifecycle.start_recipe(out, recipe, continuing=checkpoint is not None)
        return out, checkpoint


def to_dataset(rows: list[dict], shared_folder: Path | None = None):
    """A datasets.Dataset of the rows; under several processes, one saved in `shared_folder`.

    An in-memory dataset keeps its cache files (TRL's tokenized rows, the precomputed reference
    log-probabilities) in a temporary folder of each process's own, so the file the main process
    writes is missing in the others. A dataset on disk keeps them next to itself, seen by all.
    """
    from datasets import Dataset, load_from_disk
    state = processes()
    if state.num_processes == 1 or shared_folder is None:
        return Dataset.from_list(rows)
    if state.is_main_process:
        shutil.rmtree(shared_folder, ignore_errors=True)  # an interrupted run's copy and its caches
        Dataset.from_list(rows).save_to_disk(str(shared_folder))
    state.wait_for_everyone()
    return load_from_disk(str(shared_folder))


def _load(scfg: dict, backend: str, adapter, to_rows, train_exs, val_exs, out: Path):
    """(model with a trainable LoRA, tokenizer, train dataset, validation dataset)."""
    from transformers import set_seed
    set_seed(scfg["seed"])
    fmt = scfg["data"]["prompt_format"]
    longest = None
    if backend == "unsloth" and scfg["train"]["gradient_checkpointing"]:  # sizes Unsloth's offloading
        tok = backends.load_tokenizer(scfg["model"]["name"])
        longest = max(records.token_lengths(to_rows(train_exs + val_exs, fmt, tok), tok), default=0)
    model, tok = backends.load_for_training(scfg, backend, adapter=adapter, longest=longest)
    train_rows, val_rows = to_rows(train_exs, fmt, tok), to_rows(val_exs, fmt, tok)
    # measured with this run's tokenizer before the trainer sees them: TRL drops or cuts long rows silently
    records.check_lengths(train_exs + val_exs, train_rows + val_rows, tok, scfg["model"]["max_seq_length"])
    shared = out / SHARED_DATASETS
    return model, tok, to_dataset(train_rows, shared / "train"), to_dataset(val_rows, shared / "val")


# ---------------------------------------------------------------------------------------------
# Training and what it leaves

def _fit(tr, tok, out, cfg: dict, scfg: dict, spec: arms.StageSpec, backend: str, resume_from, callbacks,
         train_exs, val_exs, **facts) -> bool:
    """Train, then save the adapter and the run's records; True on the process that wrote them."""
    kind = spec.stage.kind
    compat.adapters_to_fp32(tr, backend)
    if kind == "dpo" and spec.init_adapter and not resume_from:
        compat.policy_from_reference(tr.model)  # the policy starts exactly at the reference (SFT)
    start = metrics.checkpoint_state(resume_from)  # before training: the checkpoint may rotate away
    wall = train(tr, resume_from, callbacks=[health.make_callback(kind, cfg["health"]), *callbacks])
    bad = [n for n, p in tr.model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:  # the logged loss can stay finite (transformers filters non-finite losses): the weights cannot
        raise UserError(f"[{spec.stage.name}] training diverged: {len(bad)} adapter tensors hold NaN or inf "
                        f"(e.g. {bad[0]}); the stage is not marked finished. Lower its learning rate (or "
                        "train.max_grad_norm) and rerun: run_experiment.py starts the stage over by itself "
                        "(its settings changed); the stage's script needs --overwrite")
    if kind == "dpo":  # whether each pair's prompt ran once, or why not (the first batch's check)
        facts["shared_prompt"] = getattr(tr, "shared_prompt", "off (the Unsloth backend)")
    facts.update(stage=kind, spec=spec.record(scfg), backend=backend, resumed_from=resume_from,
                 n_train=len(train_exs), n_val=len(val_exs), train_balance=balance.balance(train_exs),
                 # what evaluation and DPO compare to catch a same-named base with other weights
                 base_fingerprint=weights.fingerprint_base(cfg["model"]["name"]))
    return bool(finish_run(tr, tok, out, cfg, scfg, spec, wall, start, **facts))  # {} on the other processes


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def train(trainer, resume_from: str | None = None, callbacks=()) -> float:
    """trainer.train() (continuing from a checkpoint when given) with extra callbacks; returns wall seconds.

    Out-of-memory becomes a UserError naming the knobs to turn; a final evaluation is added when
    the last step was not an eval step, so every run ends with validation metrics.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:  # what building the trainer freed (datasets, the reference precompute), then after every step
        return_freed_memory()
        trainer.add_callback(_freed_memory_callback())
    for cb in callbacks:
        trainer.add_callback(cb)
    # Only several processes have shards to compare; one process skips the per-example hashing.
    if processes().num_processes > 1 and not isinstance(trainer.data_collator, ShardLog):
        trainer.data_collator = ShardLog(trainer.data_collator)
    if resume_from:
        compat.load_trainable_adapter(trainer.model, resume_from)
        # TRL counts num_tokens in the trainer, not the checkpoint: continue it from the last one logged
        # rather than restart it at 0 in the resumed run's metrics.
        state = metrics.checkpoint_state(resume_from)
        logged = [h["num_tokens"] for h in state["log_history"] if "num_tokens" in h]
        if logged and hasattr(trainer, "_total_train_tokens"):
            trainer._total_train_tokens = int(logged[-1])
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        if not evals or evals[-1].get("step") != trainer.state.global_step:
            trainer.evaluate()
    except Exception as e:  # noqa: BLE001 - only OOM is translated; everything else propagates
        if _is_oom(e):
            raise UserError(OOM_ADVICE) from None
        raise
    return time.perf_counter() - start


def _freed_memory_callback():
    """A TrainerCallback returning freed memory to the OS after each micro-batch and optimizer step (CPU)."""
    from transformers import TrainerCallback

    class ReturnFreedMemory(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            return_freed_memory()

        def on_step_end(self, args, state, control, **kwargs):
            return_freed_memory()

    return ReturnFreedMemory()


def finish_run(trainer, tokenizer, out_dir: Path, cfg: dict, scfg: dict, run_spec: arms.StageSpec,
               wall_time_s: float, start: dict, **facts) -> dict:
    """Save the adapter and tokenizer, then run_info.json, then (last: the 'finished' marker) metrics.json.

    Every process takes part (saving and the shard report gather across processes); only the main
    process writes files and reports.
    """
    trainer.save_model(str(out_dir))  # the Trainer writes from the main process only
    collator = trainer.data_collator
    shards = shard_report(trainer, collator) if isinstance(collator, ShardLog) else None
    if not processes().is_main_process:
        return {}
    shutil.rmtree(Path(out_dir) / SHARED_DATASETS, ignore_errors=True)  # to_dataset's copies, if any
    tokenizer.save_pretrained(str(out_dir))
    facts = {**facts, "world_size": processes().num_processes}
    provenance.write_run_info(out_dir, cfg, **facts)
    m = metrics.collect_metrics(trainer, wall_time_s, start, **facts)
    m["data_shards"] = shards
    history = health.split_history(trainer.state.log_history)
    kind, name = run_spec.stage.kind, run_spec.stage.name
    m["health"] = jsonable(health.check(kind, *history, cfg["health"],
                                        health.warmup_of(trainer.args, trainer.state)))
    plots.plot_training(out_dir, kind, *history)
    # replaces PEFT's card ("fine-tuned version of [None]"): the base, the data, the stage, the numbers
    (Path(out_dir) / "README.md").write_text(model_card(run_spec, scfg, m),
                                             encoding="utf-8")
    metrics.write_metrics(out_dir, m)
    log.info(metrics.summary_line(name, m))
    health.report_warnings(name, m["health"])
    return m
