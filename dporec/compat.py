"""Every version-pinned workaround in one place: what it fixes, the pin it was written for, and when it
can go. Each is harmless where its bug is absent; remove one only after its test passes without it.
"""
from __future__ import annotations

from pathlib import Path

from dporec import UserError


def disable_cpu_weight_packing(model) -> int:
    """Keep bitsandbytes 4-bit layers in their training layout on CPU; returns how many were changed.

    Pin: bitsandbytes 0.50.2. On CPUs with AVX512-BF16 it repacks a Linear4bit weight for a faster
    kernel at its first no-grad forward in eval mode and keeps that layout afterwards; training steps
    after any evaluation then run through a kernel without an autograd formula, so gradients stop at
    every 4-bit layer (LoRA gradients off by >100%, with only a torch warning), and unpacking on save
    re-quantizes the absmax scales, so the frozen base drifts. Remove when
    tests/modeling/test_qlora_gradients.py passes without it on such a CPU.
    """
    n = 0
    for m in model.modules():
        if getattr(m, "support_avx512bf16_for_cpu", False):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def adapters_to_fp32(trainer, backend: str) -> int:
    """Keep every LoRA weight (trainable and TRL's frozen 'ref' copy) in fp32; returns how many changed.

    Pin: trl 1.14.0. Its trainers cast the trainable adapter of a 4-bit model to bf16 when built, but a
    resumed run gets fp32 adapters back (the Trainer reloads the checkpoint through PEFT, which
    upcasts), so the two halves of a resumed run would train at different precision. fp32 adapters
    (PEFT's own default) are a few MB. Under Unsloth its generated trainer skips the cast and this
    changes nothing; if that rewrite fails Unsloth falls back to TRL's class, which casts, and this
    restores fp32 there too. Remove when TRL stops casting.
    """
    import torch
    changed = 0
    for name, p in trainer.model.named_parameters():
        if "lora_" in name and p.dtype != torch.float32:
            p.data = p.data.float()
            changed += 1
    return changed


def policy_from_reference(model) -> int:
    """Copy TRL's frozen 'ref' adapter into the trainable 'default' one; returns how many tensors.

    Pin: trl 1.14.0 (dpo_trainer.py ~647-708). Given an adapter-initialised PeftModel it copies 'default'
    into 'ref' in fp32 and then casts the trainable adapter of a 4-bit model to bf16: widening it back
    (adapters_to_fp32) cannot restore the lost bits, so the policy would start at bf16(SFT) and the
    reference at SFT, and step-0 rewards carry rounding noise. Call after adapters_to_fp32 and before
    the first step of a fresh DPO run from an adapter. Remove when TRL copies after the cast.
    """
    params = dict(model.named_parameters())
    n = 0
    for name, p in params.items():
        ref = params.get(name.replace(".default.", ".ref.")) if ".default." in name else None
        if ref is not None and "lora_" in name:
            p.data.copy_(ref.data.to(p.dtype))
            n += 1
    return n


def load_trainable_adapter(model, checkpoint: str | Path) -> bool:
    """Load the checkpoint's trainable ('default') adapter into the model; True if there was one.

    Pin: transformers 5.17.0. Resuming a PeftModel whose checkpoint also holds adapter sub-folders
    (DPO's frozen ref/), its Trainer reloads only the sub-folders: the policy would silently restart
    from its initial weights with the optimizer state of step N. Loading it here first is harmless
    when the Trainer does load it (SFT). Remove when the DPO resume test passes without it.
    """
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    weights = Path(checkpoint) / "adapter_model.safetensors"
    if not (isinstance(model, PeftModel) and weights.is_file()):
        return False
    result = set_peft_model_state_dict(model, load_file(str(weights)), adapter_name="default")
    if result.unexpected_keys:
        raise UserError(f"{weights}: adapter does not fit this model (unexpected keys such as "
                        f"{result.unexpected_keys[0]}); was the config changed since the checkpoint?")
    return True


def allow_indexed_cpu_storages() -> None:
    """Let torch.load restore storages tagged "cpu:<rank>".

    Pin: transformers 5.17.0 + accelerate 1.15.0. accelerate names each CPU process's device
    cpu:<rank>; optimizer states saved in a checkpoint carry that tag, and the Trainer resumes them
    with map_location=args.device ("cpu:0"), which torch's default restore rejects, so resuming a
    multi-process CPU run would fail. Remove when tests/training/test_distributed.py resumes without it.
    """
    import torch.serialization as ser
    if getattr(ser, "_dporec_cpu_index", False):
        return

    def restore(obj, location):
        return obj.cpu() if isinstance(location, str) and location.startswith("cpu:") else None

    ser.register_package(5, lambda obj: None, restore)
    ser._dporec_cpu_index = True


TRL_DPO_HOOKS = ("_compute_loss", "_compute_ref_log_probs")  # what dporec.training.dpo_trainer overrides


def check_trl_dpo_hooks(base) -> None:
    """Refuse a trl.DPOTrainer that lacks a private method the project's DPO trainer overrides.

    Pin: trl 1.14.0. dporec.training.dpo_trainer speeds up DPO by overriding TRL_DPO_HOOKS (the loss's
    forward and the reference precompute). A TRL that renamed one would never call the override: the
    speed-up would be off without a word. Remove this when the trainer no longer overrides private
    methods; tests/training/test_dpo_trainer.py counts that each hook is called in training.
    """
    missing = [h for h in TRL_DPO_HOOKS if not callable(getattr(base, h, None))]
    if missing:
        import trl
        raise UserError(f"trl {trl.__version__}'s DPOTrainer has no {', '.join(missing)}, which the "
                        "project's DPO trainer overrides (dporec/training/dpo_trainer.py, written for trl "
                        "1.14.0): pip install -r requirements.txt")
