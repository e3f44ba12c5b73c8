"""Likelihood scoring of every test pair in both option orders: the prediction rows (dporec.analysis.metrics).

Every test pair is scored in its file order ("original") and with the two options exchanged ("swapped",
records.swap); nothing is generated. Two row schemas, one function each:
  score_decisions  logp_a / logp_b: the summed log-prob of "The better recommendation is Option X"; the words
      before the letter are shared, so logp_a - logp_b is exactly the letter token(s). One context per order,
      prompt + "...Option", whose last logit reads both letters (logprobs.decision_logps) - the measure.
  score_answers    the decision as above plus logp_a_full / logp_b_full: both complete answers "The better
      recommendation is Option A. <reasoning for A>" + EOS, every token, the quantity TRL's DPO loss uses
      (checked against DPOTrainer in the tests); secondary, as answers differ in length (eval.full_answer).
decision_margins reads only the decision for many questions that share a prompt prefix (the ranking).
"""
from __future__ import annotations

from dporec.data.records import Example, orders
from dporec.evaluation import logprobs
from dporec.evaluation.batches import inference, run_batches
from dporec.evaluation.logprobs import ScoringInfo
from dporec.evaluation.model_limits import can_share_prefix, check_lengths, length_limit
from dporec.evaluation.sequences import build_pairs, common_prefix, decision_items, decision_split

FULL_ANSWER_FIELDS = ("logp_a_full", "logp_b_full", "choice_full", "correct_full")  # score_answers' own

def option_id(ex: Example, letter: str) -> str:
    """Identity of the movie in position `letter`: its item_id when the builder recorded one."""
    item = ex.option_record(letter).get("item_id")
    return str(item) if item is not None else ex.option(letter)


def option_title(ex: Example, letter: str) -> str:
    """The movie in position `letter` as people read it: the builder's title, else the option's text."""
    title = ex.option_record(letter).get("title")
    return str(title) if title else ex.option(letter).rstrip(".")


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


def _items(examples):
    """(pair as in the file, order, pair in that order) for every example, in the order rows are written."""
    return ((ex, order, e) for ex in examples for order, e in orders(ex))


def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def score_decisions(model, tokenizer, examples, fmt: str, batch_size: int, desc: str | None = None,
                    model_name: str = "model", info: ScoringInfo | None = None) -> list[dict]:
    """Decision rows (identity, logp_a, logp_b, choice, correct) for every example in both orders.

    The model is used as it is (set the adapter before calling). One context per example-order reads both
    letters; for a tokenizer whose decision does not end where the answers part (decision_split), the
    decision comes from the full answers' log-probs instead (the same numbers, more compute).
    """
    examples = list(examples)
    _check_batch(batch_size)
    pairs = build_pairs(examples, tokenizer, fmt)
    if not all(decision_split(a, b) is not None for a, b in pairs):
        full = score_answers(model, tokenizer, examples, fmt, batch_size, desc, model_name, info, pairs=pairs)
        return [{k: v for k, v in r.items() if k not in FULL_ANSWER_FIELDS} for r in full]
    check_lengths([common_prefix(a.ids, b.ids) for a, b in pairs], length_limit(model))
    scores = run_batches(model, pairs, batch_size, lambda p: len(p[0].ids),
                         lambda b: logprobs.decision_logps(model, tokenizer, b, info), desc)
    if info is not None:
        info.n_sequences += len(pairs)
    rows = []
    for (ex, order, e), (la, lb) in zip(_items(examples), scores):
        choice = _choice(la, lb)
        rows.append({**row_identity(model_name, ex, order, e), "logp_a": la, "logp_b": lb,
                     "choice": choice, "correct": choice == e.label})
    return rows


def score_answers(model, tokenizer, examples, fmt: str, batch_size: int, desc: str | None = None,
                  model_name: str = "model", info: ScoringInfo | None = None,
                  share_prefix: bool | None = None, pairs=None) -> list[dict]:
    """Decision and full-answer rows (score_decisions' fields plus logp_a_full, logp_b_full, choice_full,
    correct_full) for every example in both orders.

    share_prefix: None (default) shares the two answers' prefix unless the model runs under Unsloth
    (can_share_prefix); False runs every answer as its own full sequence, the slower reference path. A
    batch holds `batch_size` example-orders when sharing (one forward of batch_size shared parts, one of
    2 x batch_size short continuations), `batch_size` answers otherwise: the same number of forwards, and
    memory of the same order. `info`, when given, receives counts worth reporting (sequences scored,
    fallback decision spans, forward passes and tokens).
    """
    examples = list(examples)
    _check_batch(batch_size)
    pairs = build_pairs(examples, tokenizer, fmt) if pairs is None else pairs
    check_lengths([len(s.ids) for p in pairs for s in p], length_limit(model))
    if share_prefix is None:
        share_prefix = can_share_prefix(model)
    if share_prefix:
        logps = run_batches(model, pairs, batch_size, lambda p: max(len(p[0].ids), len(p[1].ids)),
                            lambda b: logprobs.pair_logps(model, tokenizer, b, info), desc)
    else:
        seqs = [s for p in pairs for s in p]
        flat = run_batches(model, seqs, batch_size, lambda s: len(s.ids),
                           lambda b: logprobs.token_logps(model, tokenizer, b, info), desc)
        logps = list(zip(flat[0::2], flat[1::2]))
    if info is not None:
        info.n_sequences += 2 * len(pairs)
        info.fallback_decision_spans += sum(not s.exact_span for p in pairs for s in p)

    rows = []
    for (ex, order, e), (sa, sb), (lpa, lpb) in zip(_items(examples), pairs, logps):
        # The words before the letter are identical: score them once (from A's sequence) so
        # that the decision difference is exactly the letter tokens, free of batch noise.
        shared = min(common_prefix(sa.comp_ids[:sa.n_decision], sb.comp_ids[:sb.n_decision]),
                     sa.n_decision - 1, sb.n_decision - 1)
        shared = max(shared, 0)
        prefix = float(lpa[:shared].sum())
        la = prefix + float(lpa[shared:sa.n_decision].sum())
        lb = prefix + float(lpb[shared:sb.n_decision].sum())
        la_full, lb_full = float(lpa.sum()), float(lpb.sum())
        choice, choice_full = _choice(la, lb), _choice(la_full, lb_full)
        rows.append({**row_identity(model_name, ex, order, e),
                     "logp_a": la, "logp_b": lb, "logp_a_full": la_full, "logp_b_full": lb_full,
                     "choice": choice, "correct": choice == e.label,
                     "choice_full": choice_full, "correct_full": choice_full == e.label})
    return rows


def decision_margins(model, tokenizer, groups, fmt: str, batch_size: int, desc: str | None = None,
                     info: ScoringInfo | None = None) -> list[list[tuple[float, float]]]:
    """For each group of examples (e.g. every pair of one user's candidates: one history), per example
    (margin in the original order, margin swapped), margin = logp_a - logp_b of the decision, exactly
    score_decisions' numbers.

    Within a group every prompt starts with the same instruction and history: that common prefix runs once
    per batch and each example-order adds only its options and the answer up to the letter, whose two
    candidates are read off one logit. Under Unsloth (no prefix sharing), or for a tokenizer that merges
    the letter with what follows it, score_decisions does it.
    """
    from tqdm.auto import tqdm

    out, share = [], can_share_prefix(model)
    for group in tqdm(groups, desc=desc or "ranking", unit="set", leave=False):
        items = decision_items(group, tokenizer, fmt) if share else None
        if items is None:
            rows = score_decisions(model, tokenizer, group, fmt, batch_size, info=info)
            flat = [r["logp_a"] - r["logp_b"] for r in rows]
        else:
            with inference(model):
                flat = logprobs.margins_sharing_context(model, tokenizer, items, 4 * batch_size, info)
        out.append(list(zip(flat[0::2], flat[1::2])))
    return out
