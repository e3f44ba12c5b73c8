"""Log-probability kernels: batched forwards that return exactly the log-probs a scorer needs, reading as
few logits as the question allows. Each kernel is pinned to the plain full-sequence path by an equality test
(tests/evaluation/test_scoring.py).

  token_logps       every completion token of each sequence, one full forward per sequence (the reference)
  pair_logps        both answers of a pair-order, their shared prefix run once and its cache repeated
  decision_logps    the two letters of a pair-order's decision from one context's last logit
  margins_sharing_context  the same for many contexts that share a long prefix (one user's candidates)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from dporec.evaluation.batches import model_device, pad, pad_id
from dporec.evaluation.sequences import Seq, common_prefix
from dporec.modeling.backends import decoder_of


@dataclass
class ScoringInfo:
    n_sequences: int = 0               # answers scored (4 per pair)
    fallback_decision_spans: int = 0
    forward_passes: int = 0
    forward_tokens: int = 0            # positions run through the model, padding included


HEAD_CHUNK = 16384  # vocabulary rows of the LM head widened to fp32 at a time (256 MiB at hidden 4096)


def fp32_logits(hidden: torch.Tensor, head) -> torch.Tensor:
    """The LM head's logits in fp32 from the decoder's (16-bit) hidden states: a bf16 logit near 15 is
    rounded to 0.0625, which would quantise a letter margin and make exact ties common. The head's weight
    is widened a chunk at a time into one preallocated output."""
    w, x = head.weight, hidden.float()
    out = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32, device=x.device)
    for i in range(0, w.shape[0], HEAD_CHUNK):
        out[..., i:i + HEAD_CHUNK] = x @ w[i:i + HEAD_CHUNK].float().T
    bias = getattr(head, "bias", None)
    return out if bias is None else out + bias.float()


def _forward(model, ids, mask, pos, keep: int, **kw):
    """Model output and fp32 logits for the last `keep` positions only (0: all).

    The logits are computed here from the decoder's last hidden state (caught by a hook on the decoder
    module), not read from the model's output: Unsloth's causal-LM forward casts its logits back to the
    model's 16-bit dtype. The model itself is asked for one column only. A model without a separate
    decoder and a plain linear head gets its own logits, widened."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = decoder_of(model)
    caught = {}
    handle = None
    if decoder is not None and isinstance(head, torch.nn.Linear):
        def catch(module, args, output):
            caught["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state
        handle = decoder.register_forward_hook(catch)
    try:
        try:
            asked = 1 if handle is not None else keep
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=asked, **kw)
        except TypeError as e:  # only a model without logits_to_keep: compute all logits and slice
            if "logits_to_keep" not in str(e):
                raise
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
    finally:
        if handle is not None:
            handle.remove()
    if "h" in caught:
        h = caught["h"]
        return out, fp32_logits(h[:, -keep:] if keep else h, head)
    return out, (out.logits[:, -keep:] if keep else out.logits).float()


def _picked_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target], float64 on CPU; without materialising a second vocabulary-wide tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return picked.double().cpu()


def token_logps(model, tokenizer, batch: list[Seq], info: ScoringInfo | None = None) -> list[torch.Tensor]:
    """Per-token log-probs (float64, CPU) of each sequence's completion tokens: one forward per sequence."""
    dev = model_device(model)
    ids, mask, pos = pad([s.ids for s in batch], pad_id(tokenizer))
    width = ids.shape[1]
    # the logit before the first completion token too
    keep = min(max(len(s.comp_ids) for s in batch) + 1, width)
    _, logits = _forward(model, ids.to(dev), mask.to(dev), pos.to(dev), keep, use_cache=False)
    # logits[:, j] predicts token at absolute position width - keep + j + 1
    picked = _picked_logps(logits[:, :-1], ids[:, width - keep + 1:].to(dev))
    if info is not None:
        info.forward_passes += 1
        info.forward_tokens += ids.numel()
    return [picked[r, picked.shape[1] - len(s.comp_ids):] for r, s in enumerate(batch)]


def _shared_length(a: Seq, b: Seq) -> int:
    # At least one token of each answer is left to the continuation: its log-prob comes from the
    # shared part's last logit, and a continuation cannot be empty.
    return min(common_prefix(a.ids, b.ids), len(a.ids) - 1, len(b.ids) - 1)


def pair_logps(model, tokenizer, batch: list[tuple[Seq, Seq]],
               info: ScoringInfo | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-token completion log-probs (float64, CPU) of both answers of each pair, sharing their prefix.

    The A and B answers of one order share the prompt and the answer tokens up to the letter: the
    longest common prefix of their token ids, split there whatever the tokenizer merges. One forward
    runs the shared parts (left-padded) with a KV cache; the cache is repeated for the two answers and
    a second forward runs the continuations (right-padded, so they start right after the cache).
    Same tokens and positions as two full sequences; the shared tokens' log-probs are one tensor.
    """
    dev = model_device(model)
    pad_token = pad_id(tokenizer)
    cut = [_shared_length(a, b) for a, b in batch]
    ids, mask, pos = pad([a.ids[:c] for (a, _), c in zip(batch, cut)], pad_token)
    width = ids.shape[1]
    # completion tokens in the shared part
    n_shared = [c - len(a.prompt_ids) for (a, _), c in zip(batch, cut)]
    keep = min(max(n_shared) + 1, width)
    out, logits = _forward(model, ids.to(dev), mask.to(dev), pos.to(dev), keep, use_cache=True)
    # logits[:, j] predicts the token at width - keep + j + 1; the last one, each answer's first own token
    shared = _picked_logps(logits[:, :-1], ids[:, width - keep + 1:].to(dev))
    first = torch.tensor([[a.ids[c], b.ids[c]] for (a, b), c in zip(batch, cut)], device=dev)
    first = _picked_logps(logits[:, -1:].expand(-1, 2, -1), first)

    cache = out.past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):  # a forward returning a legacy tuple cache, or none
        warnings.warn(f"{type(model).__name__} returned no transformers Cache ({type(cache).__name__}): "
                      f"scoring full sequences instead of sharing the prefix", stacklevel=2)
        flat = token_logps(model, tokenizer, [s for pair in batch for s in pair], info)
        return list(zip(flat[0::2], flat[1::2]))
    cache.batch_repeat_interleave(2)  # rows: pair 0 A, pair 0 B, pair 1 A, ...
    conts = [s.ids[c:] for pair, c in zip(batch, cut) for s in pair]
    ids2, mask2, _ = pad(conts, pad_token, left=False)
    pos2 = torch.tensor(cut).repeat_interleave(2)[:, None] + torch.arange(ids2.shape[1])
    mask2 = torch.cat([mask.repeat_interleave(2, dim=0), mask2], dim=1)
    _, logits2 = _forward(model, ids2.to(dev), mask2.to(dev), pos2.to(dev), 0, past_key_values=cache,
                          use_cache=True)
    rest = _picked_logps(logits2[:, :-1], ids2[:, 1:].to(dev))
    del out, cache
    if info is not None:
        info.forward_passes += 2
        info.forward_tokens += ids.numel() + ids2.numel()

    result = []
    for g, (n, (a, b)) in enumerate(zip(n_shared, batch)):
        common = shared[g, shared.shape[1] - n:]
        result.append(tuple(
            torch.cat([common, first[g, k:k + 1], rest[2 * g + k, :len(s.ids) - cut[g] - 1]])
            for k, s in enumerate((a, b))))
    return result


def decision_logps(model, tokenizer, batch: list[tuple[Seq, Seq]],
                   info: ScoringInfo | None = None) -> list[tuple[float, float]]:
    """(logp_a, logp_b) of the decision sentence of each pair-order from ONE context: the prompt and the
    answer's words up to the letter, left-padded so that every context ends in the last column, the
    last logits kept only. The same numbers as the full-answer path's decision scores (the words before
    the letter are shared), at the cost of one prompt per order instead of two answers."""
    dev = model_device(model)
    ctx = [a.ids[:common_prefix(a.ids, b.ids)] for a, b in batch]
    ids, mask, pos = pad(ctx, pad_id(tokenizer), left=True)
    keep = max(len(c) - len(a.prompt_ids) + 1 for c, (a, _) in zip(ctx, batch))  # answer words + letter
    _, logits = _forward(model, ids.to(dev), mask.to(dev), pos.to(dev), keep, use_cache=False)
    width = ids.shape[1]
    words = _picked_logps(logits[:, :-1], ids[:, width - keep + 1:].to(dev))
    letters = torch.tensor([[a.ids[len(c)], b.ids[len(c)]] for c, (a, b) in zip(ctx, batch)], device=dev)
    last = _picked_logps(logits[:, -1:].expand(-1, 2, -1), letters)
    if info is not None:
        info.forward_passes += 1
        info.forward_tokens += ids.numel()
    out = []
    for r, (c, (a, _)) in enumerate(zip(ctx, batch)):
        m = len(c) - len(a.prompt_ids)  # "The better recommendation is Option": this row's last m columns
        shared = float(words[r, words.shape[1] - m:].sum()) if m else 0.0
        out.append((shared + float(last[r, 0]), shared + float(last[r, 1])))
    return out


def margins_sharing_context(model, tokenizer, items, batch_size: int,
                             info: ScoringInfo | None) -> list[float]:
    """logp(A letter) - logp(B letter) after each context, the contexts' common prefix run once per batch."""
    dev, pad_token = model_device(model), pad_id(tokenizer)
    ctx = [c for c, _, _ in items]
    shared = min(min(common_prefix(ctx[0], c) for c in ctx), min(len(c) for c in ctx) - 1)
    prefix = torch.tensor([ctx[0][:shared]], device=dev)
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        # the shared prefix once, its cache repeated for every continuation of the batch
        first, _ = _forward(model, prefix, torch.ones_like(prefix), torch.arange(shared, device=dev)[None], 1,
                            use_cache=True)
        cache = first.past_key_values
        cache.batch_repeat_interleave(len(chunk))
        # continuations LEFT-padded: every one's last token (where the letter is predicted) is the last column
        ids, mask, pos = pad([c[shared:] for c, _, _ in chunk], pad_token, left=True)
        mask = torch.cat([torch.ones(len(chunk), shared, dtype=torch.long), mask], dim=1)
        _, logits = _forward(model, ids.to(dev), mask.to(dev), (pos + shared).to(dev), 1,
                             past_key_values=cache, use_cache=True)
        letters = torch.tensor([[x, y] for _, x, y in chunk], device=dev)
        lp = _picked_logps(logits[:, -1:].expand(-1, 2, -1), letters)
        out += (lp[:, 0] - lp[:, 1]).tolist()
        if info is not None:
            info.forward_passes += 2
            info.forward_tokens += shared + ids.numel()
    return out
