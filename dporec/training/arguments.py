"""The arguments TRL's SFTConfig and DPOConfig are built from: one config's train and stage sections, with
precision flags that always agree with the loaded model's dtype. Nothing here imports trl at module import
(Unsloth must patch it first).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from dporec.modeling.backends import CHECKPOINTING_KWARGS, compute_dtype
from dporec.modeling.hardware import cuda_capability

log = logging.getLogger(__name__)


def precision_flags(cfg: dict, capability=...) -> dict:
    """Trainer precision flags from the model's compute dtype (backends.compute_dtype), so the trainer and
    the loaded model always agree: bf16 only on GPUs with native bf16 (compute capability >= 8.0),
    fp16 on older GPUs, neither for fp32 (and use_cpu without a GPU)."""
    capability = cuda_capability() if capability is ... else capability
    if capability is None:
        return {"use_cpu": True, "bf16": False, "fp16": False}
    dtype = compute_dtype(cfg, capability)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def check_names(cfg: dict) -> None:
    """train.optim, train.lr_scheduler and train.report_to as transformers knows them: a typo is named here,
    before any model loads, with the nearest valid name, not as a traceback when the trainer is built."""
    import difflib

    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from dporec import UserError
    tc = cfg["train"]
    reporters = tc["report_to"] if isinstance(tc["report_to"], list) else [tc["report_to"]]
    for key, values, valid in (("optim", [tc["optim"]], [o.value for o in OptimizerNames]),
                               ("lr_scheduler", [tc["lr_scheduler"]], [t.value for t in SchedulerType]),
                               ("report_to", reporters, ["none", "all", *INTEGRATION_TO_CALLBACK])):
        for v in values:
            if v not in valid:
                near = difflib.get_close_matches(str(v), valid, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f" (one of {', '.join(valid[:12])}, ...)"
                raise UserError(f"'train.{key}': transformers knows no {v!r}{hint}")


def resolve_optim(name: str) -> str:
    # bitsandbytes' 8-bit optimizers have no CPU kernels.
    if "8bit" in name and not torch.cuda.is_available():
        log.info(f"[optim] train.optim={name} needs a CUDA GPU; using adamw_torch on CPU")
        return "adamw_torch"
    return name


def trainer_args(cfg: dict, stage: str, out_dir: Path, backend: str, resuming: bool) -> dict:
    """Keyword arguments common to SFTConfig and DPOConfig, from the config's train/<stage> sections
    (the stage's effective config: arms.StageSpec.config_settings applied)."""
    tc, sc = cfg["train"], cfg[stage]
    return dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=tc["batch_size"],
        per_device_eval_batch_size=tc["batch_size"],
        gradient_accumulation_steps=tc["grad_accum"],
        learning_rate=sc["learning_rate"],
        num_train_epochs=sc["epochs"],
        max_steps=sc["max_steps"],
        lr_scheduler_type=tc["lr_scheduler"],
        warmup_steps=tc["warmup_ratio"],  # transformers 5: a float in [0, 1) is a ratio of total steps
        weight_decay=tc["weight_decay"],
        max_grad_norm=tc["max_grad_norm"],
        optim=resolve_optim(tc["optim"]),
        # Unsloth's get_peft_model already installed its own checkpointing; a second wrap breaks it.
        gradient_checkpointing=tc["gradient_checkpointing"] and backend != "unsloth",
        gradient_checkpointing_kwargs=CHECKPOINTING_KWARGS,
        max_length=cfg["model"]["max_seq_length"],
        logging_steps=tc["logging_steps"],
        # one non-finite micro-batch loss must not poison the logged loss (Unsloth's config turns it off)
        logging_nan_inf_filter=True,
        eval_strategy="steps",
        eval_steps=tc["eval_steps"],
        # The step-0 evaluation is the baseline every curve is read against (and, for DPO, shows the
        # reference equals the policy at init: rewards ~0). Not repeated when resuming.
        eval_on_start=not resuming,
        save_strategy="steps",
        save_steps=tc["save_steps"],
        save_total_limit=tc["save_total_limit"],
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        report_to=tc["report_to"],
        dataloader_num_workers=0,
        # Under Unsloth, TRL's own num_tokens is never logged (Unsloth replaces SFTTrainer.compute_loss);
        # transformers' count of non-padding input tokens is logged under both backends.
        include_num_input_tokens_seen="non_padding",
        **precision_flags(cfg),
    )


def sft_config(cfg: dict, out_dir: Path, backend: str, resuming: bool = False):
    from trl import SFTConfig
    # prompt/completion rows: TRL masks the prompt and appends EOS to the completion.
    return SFTConfig(**trainer_args(cfg, "sft", out_dir, backend, resuming), completion_only_loss=True)


def dpo_config(cfg: dict, out_dir: Path, backend: str, resuming: bool = False):
    from trl import DPOConfig
    dc = cfg["dpo"]
    return DPOConfig(**trainer_args(cfg, "dpo", out_dir, backend, resuming), beta=dc["beta"],
                     loss_type=list(dc["loss_type"]), loss_weights=dc["loss_weights"],
                     precompute_ref_log_probs=dc["precompute_ref_log_probs"])
