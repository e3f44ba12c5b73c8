"""The one home of the DPO trainer: TRL's DPOTrainer, on the hf backend with its waste removed.

TRL 1.14 runs the policy and the reference over two rows per pair, [prompt, chosen] and [prompt, rejected],
and turns the hidden state of EVERY position into fp32 vocabulary logits. Two savings, both returning
exactly TRL's tensors to TRL's own loss, metrics and backward (tests/training/test_dpo_trainer.py):

- answer-only logits: the decoder's output is cut to the columns from one before the batch's first answer
  token, so the LM head (the biggest single matmul on a 128k vocabulary) skips the prompt;
- a shared prompt (dpo.prefix_sharing): the decoder runs ONE row per pair, [prompt, chosen, rejected], with
  a 4D attention mask in which the rejected answer sees the prompt and itself but not the chosen answer,
  and position ids that restart at the prompt's end for it; the hidden states are then laid back out in
  TRL's two rows. The prompt (about 70% of a pair's tokens here) is computed once instead of twice.

Both are decoder hooks, so they apply to the policy forward, the reference forward (the frozen 'ref'
adapter of the same PeftModel) and the reference precompute alike. Unsloth's patched Llama drops a custom
attention mask in training (and TRL's class is Unsloth's rewrite there), so under Unsloth neither applies,
and this trainer refuses a model whose forwards another library replaced (modeling.patches): in a process
Unsloth has patched, the shared prompt would silently let the rejected answer see the chosen one.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack

import torch

from dporec import UserError, compat
from dporec.modeling.backends import decoder_of
from dporec.modeling.patches import model_patches

log = logging.getLogger(__name__)

_COLUMN_KEYS = ("input_ids", "attention_mask", "completion_mask")
_OTHER_KEYS = {"ref_chosen_logps", "ref_rejected_logps"}


def first_needed_column(completion_mask: torch.Tensor) -> int:
    """The first column whose logit is used: one before the earliest answer token of the batch."""
    cols = torch.nonzero(completion_mask.any(dim=0)).flatten()
    return max(int(cols[0]) - 1, 0) if cols.numel() else 0


def shared_prompt_layout(input_ids, attention_mask, completion_mask, pad_id: int) -> dict | None:
    """One row per pair, [prompt, chosen, rejected, pad], from TRL's right-padded [chosen rows; rejected rows]
    batch; None when a pair's two prompts differ (TRL's deprecated keep_end truncation can do that).

    Returns ids, positions (TRL's own: the rejected answer continues from the prompt's end), seg (0 prompt,
    1 chosen, 2 rejected, -1 pad) and, for each of TRL's (row, column), the packed column holding its state.
    """
    rows, width = input_ids.shape
    n = rows // 2
    dev = input_ids.device
    prompt = attention_mask.sum(1) - completion_mask.sum(1)
    p, lc, lr = prompt[:n], completion_mask[:n].sum(1), completion_mask[n:].sum(1)
    col = torch.arange(width, device=dev)
    in_prompt = col[None] < p[:, None]
    if not torch.equal(p, prompt[n:]) or not torch.equal(input_ids[:n][in_prompt], input_ids[n:][in_prompt]):
        return None
    packed = int((p + lc + lr).max())
    pcol = torch.arange(packed, device=dev)[None]
    seg = torch.full((n, packed), -1, dtype=torch.long, device=dev)
    seg[pcol < p[:, None]] = 0
    seg[(pcol >= p[:, None]) & (pcol < (p + lc)[:, None])] = 1
    seg[(pcol >= (p + lc)[:, None]) & (pcol < (p + lc + lr)[:, None])] = 2
    # where each packed column's token sits in TRL's batch: the chosen row, or for the rejected answer the
    # rejected row at a column shifted left by the chosen answer's length
    src_col = torch.where(seg == 2, pcol - lc[:, None], pcol).clamp(0, width - 1)
    pair = torch.arange(n, device=dev)[:, None]
    src_row = torch.where(seg == 2, pair + n, pair)
    ids = torch.where(seg >= 0, input_ids[src_row, src_col], pad_id)
    positions = torch.where(seg >= 0, src_col, 0)
    shift = torch.cat([torch.zeros_like(lc), lc])  # TRL's rejected answer columns sit lc further right here
    gather = torch.where(col[None] >= torch.cat([p, p])[:, None], col[None] + shift[:, None], col[None])
    return {"ids": ids, "positions": positions, "seg": seg, "gather": gather.clamp(max=packed - 1)}


def shared_prompt_mask(seg: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """(pairs, 1, L, L) attention mask: causal, real tokens only, the rejected answer blind to the chosen one.
    dtype None: bool (True = attend, for sdpa); else additive 0 / dtype min (eager adds it to the scores)."""
    length = seg.shape[1]
    valid = seg >= 0
    allowed = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    allowed = allowed & valid[:, None, :] & valid[:, :, None]
    allowed &= ~((seg[:, :, None] == 2) & (seg[:, None, :] == 1))
    # a pad row attends to itself: a row that sees nothing would make softmax NaN
    allowed |= torch.eye(length, dtype=torch.bool, device=seg.device)
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    additive = torch.zeros(allowed.shape, dtype=dtype, device=seg.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)


def _decoder(model):
    dec = decoder_of(model)
    if dec is None:
        raise TypeError(f"{type(model).__name__} exposes no separate decoder")
    return dec


class decoder_view:
    """While active, the decoder runs on the full batch (or its shared-prompt layout, given one) whatever
    it is called with, and returns hidden states in TRL's layout from column `start` on."""

    def __init__(self, model, start: int, full_ids: torch.Tensor, full_mask: torch.Tensor,
                 layout: dict | None = None):
        self.decoder, self.start, self.layout = _decoder(model), start, layout
        self.full = {"input_ids": full_ids, "attention_mask": full_mask}
        self.handles = []

    def _pre(self, module, args, kwargs):
        if args or "inputs_embeds" in kwargs and kwargs["inputs_embeds"] is not None:
            raise RuntimeError("decoder called positionally or with inputs_embeds: "
                               "cannot restore the full batch")
        if self.layout is None:
            return args, {**kwargs, **self.full}
        impl = getattr(module.config, "_attn_implementation", "eager")
        dtype = None if impl == "sdpa" else module.embed_tokens.weight.dtype
        return args, {**kwargs, "input_ids": self.layout["ids"], "position_ids": self.layout["positions"],
                      "attention_mask": shared_prompt_mask(self.layout["seg"], dtype)}

    def _post(self, module, args, kwargs, output):
        h = output["last_hidden_state"]
        if self.layout is not None:  # back to TRL's rows: pair i's states serve both row i and row n + i
            where = self.layout["gather"][:, self.start:]
            h = torch.cat([h, h]).gather(1, where[..., None].expand(-1, -1, h.shape[-1]))
        else:
            h = h[:, self.start:]
        # contiguous: the LM head on a strided slice runs as a slow batched matmul on CPU
        output["last_hidden_state"] = h.contiguous()
        return output

    def __enter__(self):
        self.handles = [self.decoder.register_forward_pre_hook(self._pre, with_kwargs=True),
                        self.decoder.register_forward_hook(self._post, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def trainer_class(backend: str, prefix_sharing: bool = False):
    """The DPO trainer class for this backend (imported lazily: Unsloth must patch TRL first).

    Under Unsloth, TRL's DPOTrainer as `import unsloth` rewrote it (its forward computes logits its own
    way); PatchDPOTrainer() is a no-op in current releases, called for older ones. On hf, answer-only logits
    and, with prefix_sharing, the shared prompt.
    """
    if backend == "unsloth":
        from unsloth import PatchDPOTrainer
        PatchDPOTrainer()
        from trl import DPOTrainer
        return DPOTrainer
    return answer_only_trainer_class(prefix_sharing)


def answer_only_trainer_class(prefix_sharing: bool = False):
    """TRL's DPOTrainer computing vocabulary logits only from the first answer column on, and with
    prefix_sharing running each pair's prompt once (checked against TRL's layout on the first batch)."""
    import trl

    if not trl.DPOTrainer.__module__.startswith("trl."):  # `import unsloth` rewrites it in place
        raise UserError(f"trl.DPOTrainer in this process is {trl.DPOTrainer.__module__}'s rewrite, not TRL's "
                        "(Unsloth was imported): the hf DPO stage runs in a fresh process (run_experiment.py "
                        "does that; run train_dpo.py on its own)")
    compat.check_trl_dpo_hooks(trl.DPOTrainer)  # the private methods overridden below

    class DPOTrainer(trl.DPOTrainer):
        # "on", or why not: set by the first batch's check, read into metrics.json by the stage
        shared_prompt = "on" if prefix_sharing else "off (dpo.prefix_sharing=false)"

        def __init__(self, model=None, *args, **kwargs):
            # before TRL's __init__, whose reference precompute already runs the hooks below
            patched = model_patches(model) if model is not None else []
            if patched:
                raise UserError("the hf DPO trainer refuses a model whose forward another library replaced "
                                f"({'; '.join(patched[:3])}): in training that forward may drop the custom "
                                "attention mask this trainer relies on. Run the hf DPO stage in a fresh "
                                "process (run_experiment.py does that), or model.backend=unsloth with "
                                "dpo.prefix_sharing=false")
            super().__init__(model, *args, **kwargs)

        def _views(self, inputs):
            """(the batch TRL is handed, start, [decoder views to enter]), or None for TRL's own path."""
            other = set(inputs) - set(_COLUMN_KEYS) - _OTHER_KEYS
            if self.use_liger_kernel or self.aux_loss_enabled or other:
                return None  # anything TRL does differently with the batch goes to TRL unchanged
            ids, mask, cm = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
            start = first_needed_column(cm)
            layout = self._layout(ids, mask, cm, start) if self.shared_prompt == "on" else None
            if start == 0 and layout is None:
                return None
            tail = {**inputs, **{k: inputs[k][:, start:] for k in _COLUMN_KEYS}}
            models = [m for m in (self.model, self.ref_model) if m is not None]
            return tail, start, [decoder_view(m, start, ids, mask, layout) for m in models]

        def _layout(self, ids, mask, cm, start):
            pad = self.processing_class.pad_token_id
            layout = shared_prompt_layout(ids, mask, cm, 0 if pad is None else pad)
            if layout is not None and not getattr(self, "_shared_prompt_checked", False):
                self._shared_prompt_checked = True
                problem = self._shared_prompt_problem(ids, mask, cm, start, layout)
                if problem:
                    self.shared_prompt = f"off: {problem}"
                    log.warning(f"[dpo] the shared-prompt forward is off for this run: {problem}; "
                                "training continues in TRL's own layout (the prompt twice per pair)")
                    return None
            return layout

        def _shared_prompt_problem(self, ids, mask, cm, start, layout) -> str | None:
            """Whether this model really runs the shared layout as TRL's: the rejected answer must not see
            the chosen one (its logits unchanged when the chosen tokens are replaced), and every answer
            token's log-prob must match TRL's layout. A model that ignores a custom 4D mask or position
            ids (Unsloth's patched Llama in training, flash-attention kernels) fails here.

            It runs in TRL's training mode, whatever mode the caller is in (the first batch is often the
            reference precompute, in eval mode): a forward that drops the mask only in training would
            pass an eval-mode check. Dropout stays off so the three passes are comparable; no gradients;
            every module's mode is restored."""
            decoder = _decoder(self.model)
            if getattr(decoder.config, "_attn_implementation", "eager") not in ("sdpa", "eager"):
                return f"attention implementation {decoder.config._attn_implementation!r} takes no 4D mask"
            tail = {"input_ids": ids[:, start:], "attention_mask": mask[:, start:], "use_cache": False}
            scrambled = dict(layout, ids=torch.where(layout["seg"] == 1, (layout["ids"] + 7) % 100 + 3,
                                                     layout["ids"]))
            modes = {m: m.training for m in self.model.modules()}
            try:
                self.model.train()
                for m in self.model.modules():
                    if isinstance(m, torch.nn.Dropout):
                        m.eval()
                with torch.no_grad():
                    logps = []
                    for lay in (None, layout, scrambled):
                        with decoder_view(self.model, start, ids, mask, lay):
                            logits = self.model(**tail).logits[:, :-1].float()
                        logps.append(torch.log_softmax(logits, -1)
                                     .gather(-1, ids[:, start + 1:, None])[..., 0])
            finally:
                for m, training in modes.items():
                    m.training = training
            answer = cm[:, start + 1:].bool()
            n = ids.shape[0] // 2
            rejected = answer.clone()
            rejected[:n] = False
            blind = (logps[1] - logps[2])[rejected].abs().max().item()
            same = (logps[0] - logps[1])[answer].abs().mean().item()
            if blind > 1e-3:
                return f"the rejected answer sees the chosen one (log-probs move by {blind:.3g})"
            if same > 0.05:
                return f"answer log-probs differ from TRL's layout by {same:.3g} nats per token"
            return None

        def _compute_loss(self, model, inputs, return_outputs):
            plan = None if return_outputs else self._views(inputs)
            if plan is None:
                return super()._compute_loss(model, inputs, return_outputs)
            tail, start, views = plan
            with ExitStack() as stack:
                for v in views:
                    stack.enter_context(v)
                loss = super()._compute_loss(model, tail, return_outputs)
            if self.model.training and start:  # TRL counted the tail's tokens only (summed over processes)
                dropped = self.accelerator.gather_for_metrics(inputs["attention_mask"][:, :start].sum()).sum()
                self._total_train_tokens += int(dropped.item()) // self._tp_size
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

        def _compute_ref_log_probs(self, model, inputs):  # the precompute pass (precompute_ref_log_probs)
            plan = self._views(inputs)
            if plan is None:
                return super()._compute_ref_log_probs(model, inputs)
            tail, _, views = plan
            with ExitStack() as stack:
                for v in views:
                    stack.enter_context(v)
                return super()._compute_ref_log_probs(model, tail)

    return DPOTrainer
