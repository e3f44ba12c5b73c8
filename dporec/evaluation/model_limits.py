"""What a loaded model can run unchanged: whether it can continue a shared prefix from a KV cache (not under
Unsloth, whose forward sends every cached call down a one-token decoding path), and the longest input it
runs without cutting it (Unsloth's max_seq_length). Read from the model's own classes and attributes.
"""
from __future__ import annotations

from dporec import UserError
from dporec.modeling.patches import model_patches


def can_share_prefix(model) -> bool:
    """False when another library replaced a forward of this model (Unsloth's patched forward sends every
    call with past_key_values down a one-new-token decoding path, kv length = cache + 1, which would
    mis-score a continuation)."""
    return not model_patches(model)


def length_limit(model) -> int | None:
    """The longest input the model runs unchanged: Unsloth's max_seq_length (its forward cuts longer
    input_ids to the first max_seq_length tokens, which with left padding drops the answer we score),
    None for a plain transformers model. Under Unsloth without a readable limit: an error, not a guess."""
    for m in _model_chain(model):
        limit = getattr(m, "max_seq_length", None)
        if isinstance(limit, int) and limit > 0:
            return limit
    if not can_share_prefix(model):
        raise RuntimeError("model runs under Unsloth but exposes no max_seq_length: cannot check that "
                           "scored sequences are not truncated")
    return None


def _model_chain(model):
    """The model and the models it wraps (PeftModel -> LoraModel -> ForCausalLM -> decoder)."""
    seen, todo = [], [model]
    while todo:
        m = todo.pop(0)
        if m is None or any(m is s for s in seen):
            continue
        seen.append(m)
        todo += [getattr(m, "base_model", None), getattr(m, "model", None)]
    return seen


class SequenceTooLong(UserError):
    pass


def check_lengths(lengths, limit: int | None, what: str = "scored sequence") -> None:
    """Refuse input longer than the model's limit instead of letting it be silently cut."""
    longest = max(lengths, default=0)
    if limit is not None and longest > limit:
        n = sum(x > limit for x in lengths)
        raise SequenceTooLong(f"{n} {what}(s) are longer than the model's max_seq_length {limit} (longest "
                              f"{longest} tokens); Unsloth would cut them and the scores would be wrong. "
                              f"Raise model.max_seq_length to at least {longest}.")
