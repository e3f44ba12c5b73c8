"""Likelihood scoring of both answers of every test pair in both option orders.

Every test pair is scored in its file order ("original") and with the two options exchanged
("swapped", records.swap); nothing is generated. Each order gives:
  decision (logp_a / logp_b): summed log-prob of "The better recommendation is Option X"; the words
      before the letter are shared, so logp_a - logp_b is exactly the letter token(s). By default this
      is all that is scored: one context per order, prompt + "...Option", whose last logit reads both
      letters (decision_logps).
  full (logp_a_full / logp_b_full, eval.full_answer): both complete answers "The better recommendation
      is Option A. <reasoning for A>" + EOS, every token, the quantity TRL's DPO loss uses (checked
      against DPOTrainer in the tests); secondary, as answers differ in length.
Tokenization follows TRL 1.14: EOS appended to the completion as text, completion ids = the joint
ids after the prompt's length.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from dporec import UserError
from dporec.data import records, task
from dporec.data.records import Example, orders
from dporec.data.task import LETTERS
from dporec.evaluation.batches import encode, model_device, pad, pad_id, run_batches

# ---------------------------------------------------------------------------------------------
# Tokenization (TRL-compatible)

def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _with_eos(text: str, tokenizer) -> str:
    eos = tokenizer.eos_token
    return text if not eos or text.endswith(eos) else text + eos


def completionencode(tokenizer, prompt: str, completion: str, prompt_ids: list[int] | None = None):
    """(prompt_ids, completion_ids, prompt_ok) as TRL 1.14 builds them for a prompt/completion row.

    prompt_ok is False when the joint tokenization does not start with the prompt's own ids (TRL
    warns and carries on; so do we, counting it).
    """
    if prompt_ids is None:
        prompt_ids = encode(tokenizer, prompt)
    joint = encode(tokenizer, prompt + completion)
    return prompt_ids, joint[len(prompt_ids):], joint[:len(prompt_ids)] == prompt_ids


@dataclass
class _Seq:
    prompt_ids: list[int]
    comp_ids: list[int]
    n_decision: int       # completion tokens that make up "The better recommendation is Option X"
    exact_span: bool      # False when the fallback span (common prefix + letter token) was used

    @property
    def ids(self) -> list[int]:
        # prompt_ids + completion ids, not the joint tokenization: what TRL feeds the model
        return self.prompt_ids + self.comp_ids


def _decision_span(tokenizer, prompt: str, prompt_ids: list[int], letter: str, comp: list[int]):
    _, dec, _ = completionencode(tokenizer, prompt, task.ANSWER_PREFIX + letter, prompt_ids)
    n = _common_prefix(dec, comp)
    if n == len(dec) and n > 0:
        return n, True
    # The letter shares a token with what follows it ('A.'): include that token, which is the
    # first one where the A and B answers differ.
    return min(n + 1, len(comp)), False


def _build_pairs(examples, tokenizer, fmt: str) -> list[tuple[_Seq, _Seq]]:
    """(A answer, B answer) for every example in both orders, in the order score_pairs writes rows."""
    pairs, mismatched_prompts = [], 0
    for ex in examples:
        for _, e in orders(ex):
            prompt = records.format_prompt(e, fmt, tokenizer)
            prompt_ids = encode(tokenizer, prompt)
            pair = []
            for letter in LETTERS:
                text = _with_eos(task.answer_text(letter, records.reasoning_for(e, letter)), tokenizer)
                _, comp, ok = completionencode(tokenizer, prompt, text, prompt_ids)
                mismatched_prompts += not ok
                span = _decision_span(tokenizer, prompt, prompt_ids, letter, comp)
                pair.append(_Seq(prompt_ids, comp, *span))
            pairs.append(tuple(pair))
    if mismatched_prompts:
        warnings.warn(f"{mismatched_prompts} sequences: the tokenized prompt is not a prefix of the "
                      "tokenized prompt+answer (TRL shows the same mismatch during training)", stacklevel=2)
    return pairs


@dataclass
class ScoringInfo:
    n_sequences: int = 0               # answers scored (4 per pair)
    fallback_decision_spans: int = 0
    forward_passes: int = 0
    forward_tokens: int = 0            # positions run through the model, padding included


# ---------------------------------------------------------------------------------------------
# Batched forward

def _forward(model, ids, mask, pos, keep: int, **kw):
    """Model output with logits for the last `keep` positions only (0: all)."""
    try:
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, **kw)
    except TypeError as e:  # only a model without logits_to_keep: compute all logits and slice
        if "logits_to_keep" not in str(e):
            raise
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
    return out, (out.logits[:, -keep:] if keep else out.logits)


def _picked_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target], float64 on CPU; without materialising a second vocabulary-wide tensor."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return picked.double().cpu()


def token_logps(model, tokenizer, batch: list[_Seq], info: ScoringInfo | None = None) -> list[torch.Tensor]:
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


def can_share_prefix(model) -> bool:
    """False under Unsloth: its patched forward sends every call with past_key_values down a
    one-new-token decoding path (kv length = cache + 1), which would mis-score a continuation."""
    return not any("unsloth" in (getattr(type(m).forward, "__module__", None) or "")
                   for m in _model_chain(model))


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


def _shared_length(a: _Seq, b: _Seq) -> int:
    # At least one token of each answer is left to the continuation: its log-prob comes from the
    # shared part's last logit, and a continuation cannot be empty.
    return min(_common_prefix(a.ids, b.ids), len(a.ids) - 1, len(b.ids) - 1)


def pair_logps(model, tokenizer, batch: list[tuple[_Seq, _Seq]],
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


def decision_logps(model, tokenizer, batch: list[tuple[_Seq, _Seq]],
                   info: ScoringInfo | None = None) -> list[tuple[float, float]]:
    """(logp_a, logp_b) of the decision sentence of each pair-order from ONE context: the prompt and the
    answer's words up to the letter, left-padded so that every context ends in the last column, the
    last logits kept only. The same numbers as the full-answer path's decision scores (the words before
    the letter are shared), at the cost of one prompt per order instead of two answers."""
    dev = model_device(model)
    ctx = [a.ids[:_common_prefix(a.ids, b.ids)] for a, b in batch]
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


def _exact_decisions(pairs) -> bool:
    """Whether every pair-order's decision ends at the first token where A and B differ (the letter), so
    one context with its last logit gives both decision scores (not so for a tokenizer merging 'A.')."""
    for a, b in pairs:
        split = _common_prefix(a.ids, b.ids)
        if (len(a.prompt_ids) + a.n_decision, len(b.prompt_ids) + b.n_decision) != (split + 1, split + 1):
            return False
    return True


def _decision_items(examples, tokenizer, fmt: str):
    """(context ids, A's letter token, B's letter token) per example and order, or None when some
    answer's decision span does not end at the first token where A and B differ (then the letters
    alone do not give the decision margin and score_pairs must)."""
    items = []
    for a, b in _build_pairs(examples, tokenizer, fmt):
        split = _common_prefix(a.ids, b.ids)
        ends = (len(a.prompt_ids) + a.n_decision, len(b.prompt_ids) + b.n_decision)
        if ends != (split + 1, split + 1):
            return None
        items.append((a.ids[:split], a.ids[split], b.ids[split]))
    return items


def _margins_sharing_context(model, tokenizer, items, batch_size: int,
                             info: ScoringInfo | None) -> list[float]:
    """logp(A letter) - logp(B letter) after each context, the contexts' common prefix run once per batch."""
    dev, pad_token = model_device(model), pad_id(tokenizer)
    ctx = [c for c, _, _ in items]
    shared = min(min(_common_prefix(ctx[0], c) for c in ctx), min(len(c) for c in ctx) - 1)
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


def decision_margins(model, tokenizer, groups, fmt: str = "alpaca", batch_size: int = 8,
                     desc: str | None = None,
                     info: ScoringInfo | None = None) -> list[list[tuple[float, float]]]:
    """For each group of examples (e.g. every pair of one user's candidates: one history), per example
    (margin in the original order, margin swapped), margin = logp_a - logp_b of the decision, exactly
    score_pairs' decision score.

    Only the decision is needed, and within a group every prompt starts with the same instruction and
    history: that common prefix runs once per batch and each example-order adds only its options and
    the answer up to the letter, whose two candidates are read off one logit. Under Unsloth (no
    prefix sharing), or for a tokenizer that merges the letter with what follows it, score_pairs does it.
    """
    from tqdm.auto import tqdm

    out, share = [], can_share_prefix(model)
    for group in tqdm(groups, desc=desc or "ranking", unit="set", leave=False):
        items = _decision_items(group, tokenizer, fmt) if share else None
        if items is None:
            rows = score_pairs(model, tokenizer, group, fmt, batch_size, info=info, full_answer=False)
            flat = [r["logp_a"] - r["logp_b"] for r in rows]
        else:
            was_training = getattr(model, "training", False)
            model.eval()
            try:
                with torch.inference_mode():
                    flat = _margins_sharing_context(model, tokenizer, items, 4 * batch_size, info)
            finally:
                if was_training:
                    model.train()
        out.append(list(zip(flat[0::2], flat[1::2])))
    return out


# ---------------------------------------------------------------------------------------------
# Rows

def option_id(ex: Example, letter: str) -> str:
    """Identity of the movie in position `letter`: its item_id when the builder recorded one."""
    info = ex.extra.get("option_a" if letter == "A" else "option_b")
    if isinstance(info, dict) and info.get("item_id") is not None:
        return str(info["item_id"])
    return ex.option(letter)


def option_title(ex: Example, letter: str) -> str:
    """The movie in position `letter` as people read it: the builder's title, else the option's text."""
    info = ex.extra.get("option_a" if letter == "A" else "option_b")
    if isinstance(info, dict) and info.get("title"):
        return str(info["title"])
    return ex.option(letter).rstrip(".")


def _choice(la: float, lb: float) -> str:
    return "A" if la > lb else "B" if lb > la else "tie"


def row_identity(model_name: str, ex: Example, order: str, e: Example) -> dict:
    """The fields every prediction row starts with (dporec.analysis.metrics): `ex` the pair as in the file,
    `e` the same pair in `order`."""
    return {
        "model": model_name,
        "pair_id": ex.pair_id,
        # Without a user id every pair is its own cluster for the bootstrap.
        "user_id": str(ex.user_id) if ex.user_id is not None else ex.pair_id,
        "order": order,
        "label": e.label,
        "option_a_id": option_id(e, "A"),
        "option_b_id": option_id(e, "B"),
        # titles too, so qualitative examples need no join with the data files
        "option_a_title": option_title(e, "A"),
        "option_b_title": option_title(e, "B"),
    }


def score_pairs(model, tokenizer, examples, fmt: str = "alpaca", batch_size: int = 8, desc: str | None = None,
                model_name: str = "model", info: ScoringInfo | None = None,
                share_prefix: bool | None = None, full_answer: bool = True) -> list[dict]:
    """Prediction rows (dporec.analysis.metrics) for every example in both option orders.

    The model is used as it is (set the adapter before calling). share_prefix: None (default)
    shares the prefix unless the model runs under Unsloth (can_share_prefix); False runs every
    answer as its own full sequence, the slower reference path. A batch holds `batch_size`
    example-orders when sharing (one forward of batch_size shared parts, one of 2 x batch_size
    short continuations), `batch_size` answers otherwise: the same number of forwards, and
    memory of the same order (a full-sequence batch's activations, twice its answer logits).
    `info`, when given, receives counts worth reporting (sequences scored, fallback decision
    spans, forward passes and tokens).
    """
    examples = list(examples)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = _build_pairs(examples, tokenizer, fmt)
    if not full_answer and _exact_decisions(pairs):  # the decision only: one context per pair-order
        check_lengths([_common_prefix(a.ids, b.ids) for a, b in pairs], length_limit(model))
        scores = run_batches(model, pairs, batch_size, lambda p: len(p[0].ids),
                             lambda b: decision_logps(model, tokenizer, b, info), desc)
        if info is not None:
            info.n_sequences += len(pairs)
        items = ((ex, order, e) for ex in examples for order, e in orders(ex))
        rows = []
        for (ex, order, e), (la, lb) in zip(items, scores):
            choice = _choice(la, lb)
            rows.append({**row_identity(model_name, ex, order, e), "logp_a": la, "logp_b": lb,
                         "choice": choice, "correct": choice == e.label})
        return rows
    check_lengths([len(s.ids) for p in pairs for s in p], length_limit(model))
    if share_prefix is None:
        share_prefix = can_share_prefix(model)
    if share_prefix:
        logps = run_batches(model, pairs, batch_size, lambda p: max(len(p[0].ids), len(p[1].ids)),
                            lambda b: pair_logps(model, tokenizer, b, info), desc)
    else:
        seqs = [s for p in pairs for s in p]
        flat = run_batches(model, seqs, batch_size, lambda s: len(s.ids),
                           lambda b: token_logps(model, tokenizer, b, info), desc)
        logps = list(zip(flat[0::2], flat[1::2]))
    if info is not None:
        info.n_sequences += 2 * len(pairs)
        info.fallback_decision_spans += sum(not s.exact_span for p in pairs for s in p)

    rows = []
    items = ((ex, order, e) for ex in examples for order, e in orders(ex))
    for (ex, order, e), (sa, sb), (lpa, lpb) in zip(items, pairs, logps):
        # The words before the letter are identical: score them once (from A's sequence) so
        # that the decision difference is exactly the letter tokens, free of batch noise.
        shared = min(_common_prefix(sa.comp_ids[:sa.n_decision], sb.comp_ids[:sb.n_decision]),
                     sa.n_decision - 1, sb.n_decision - 1)
        shared = max(shared, 0)
        prefix = float(lpa[:shared].sum())
        la = prefix + float(lpa[shared:sa.n_decision].sum())
        lb = prefix + float(lpb[shared:sb.n_decision].sum())
        la_full, lb_full = float(lpa.sum()), float(lpb.sum())
        row = row_identity(model_name, ex, order, e)
        choice, choice_full = _choice(la, lb), _choice(la_full, lb_full)
        row.update({
            "logp_a": la, "logp_b": lb, "logp_a_full": la_full, "logp_b_full": lb_full,
            "choice": choice, "correct": choice == e.label,
            "choice_full": choice_full, "correct_full": choice_full == e.label,
        })
        rows.append(row)
    return rows
