"""The one home of the DPO trainer: TRL's DPOTrainer, on the hf backend without the prompt's logits.

TRL 1.14 runs the policy and the reference over prompt + answer and turns the hidden state of EVERY
position into fp32 vocabulary logits, then keeps the answer tokens' log-probs only. On the CPU demo
77% of those positions are prompt (394 MiB of logits per forward of 4 pairs); not computing them makes
a demo DPO step 26% faster (benchmarks/profile_dpo_step.py). Our subclass hands TRL's `_compute_loss` a
batch whose columns start one position before the batch's first answer token, while hooks let the
decoder still see every column and keep hidden states only from that column on. Losses, rewards,
log-probs and gradients are TRL's own (tests/training/test_dpo_trainer.py checks equality).
"""
from __future__ import annotations

import torch

_COLUMN_KEYS = ("input_ids", "attention_mask", "completion_mask")
_OTHER_KEYS = {"ref_chosen_logps", "ref_rejected_logps"}


def first_needed_column(completion_mask: torch.Tensor) -> int:
    """The first column whose logit is used: one before the earliest answer token of the batch."""
    cols = torch.nonzero(completion_mask.any(dim=0)).flatten()
    return max(int(cols[0]) - 1, 0) if cols.numel() else 0


def _decoder(model):
    """The decoder stack (e.g. LlamaModel) under a PeftModel / ForCausalLM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dec = base.get_decoder() if hasattr(base, "get_decoder") else None
    if dec is None or dec is base:
        raise TypeError(f"{type(base).__name__} exposes no separate decoder")
    return dec


class tail_hidden_states:
    """While active, the decoder runs on `full_ids`/`full_mask` (whatever it is called with) and
    returns hidden states from column `start` on."""

    def __init__(self, model, start: int, full_ids: torch.Tensor, full_mask: torch.Tensor):
        self.decoder, self.start = _decoder(model), start
        self.full = {"input_ids": full_ids, "attention_mask": full_mask}
        self.handles = []

    def _pre(self, module, args, kwargs):
        if args or "inputs_embeds" in kwargs and kwargs["inputs_embeds"] is not None:
            raise RuntimeError("decoder called positionally or with inputs_embeds: "
                               "cannot restore the full batch")
        return args, {**kwargs, **self.full}

    def _post(self, module, args, kwargs, output):
        # contiguous: the LM head on a strided slice runs as a slow batched matmul on CPU
        output["last_hidden_state"] = output["last_hidden_state"][:, self.start:].contiguous()
        return output

    def __enter__(self):
        self.handles = [self.decoder.register_forward_pre_hook(self._pre, with_kwargs=True),
                        self.decoder.register_forward_hook(self._post, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def trainer_class(backend: str):
    """The DPO trainer class for this backend (imported lazily: Unsloth must patch TRL first).

    Under Unsloth, TRL's DPOTrainer as `import unsloth` rewrote it (its forward computes logits its own
    way); PatchDPOTrainer() is a no-op in current releases, called for older ones. On hf, answer-only logits.
    """
    if backend == "unsloth":
        from unsloth import PatchDPOTrainer
        PatchDPOTrainer()
        from trl import DPOTrainer
        return DPOTrainer
    return answer_only_trainer_class()


def answer_only_trainer_class():
    """TRL's DPOTrainer computing vocabulary logits only from the first answer column on."""
    import trl

    class DPOTrainer(trl.DPOTrainer):
        def _compute_loss(self, model, inputs, return_outputs):
            start = first_needed_column(inputs["completion_mask"])
            # Anything TRL does differently with the batch (liger kernel, returned outputs, other inputs)
            # goes to TRL unchanged.
            if (start == 0 or return_outputs or self.use_liger_kernel
                    or set(inputs) - set(_COLUMN_KEYS) - _OTHER_KEYS):
                return super()._compute_loss(model, inputs, return_outputs)
            tail = {**inputs, **{k: inputs[k][:, start:] for k in _COLUMN_KEYS}}
            with tail_hidden_states(self.model, start, inputs["input_ids"], inputs["attention_mask"]):
                loss = super()._compute_loss(model, tail, return_outputs)
            if self.model.training:  # TRL counted the tail's tokens only (summed over processes, as TRL does)
                dropped = self.accelerator.gather_for_metrics(inputs["attention_mask"][:, :start].sum()).sum()
                self._total_train_tokens += int(dropped.item()) // self._tp_size
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return DPOTrainer
