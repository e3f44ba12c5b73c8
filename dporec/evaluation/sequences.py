"""The scored sequences of a test pair, tokenized as TRL 1.14 tokenizes prompt/completion rows: for each
option order, the A answer and the B answer (prompt ids + completion ids, EOS appended as text), and where
each answer's decision sentence ends. Where the two answers part (the letter) decides how cheaply the
decision can be read: from one context's last logit when the decision ends at that token.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from dporec.data import records, task
from dporec.data.records import orders
from dporec.data.task import LETTERS
from dporec.evaluation.batches import encode


def common_prefix(a: list[int], b: list[int]) -> int:
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
class Seq:
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
    n = common_prefix(dec, comp)
    if n == len(dec) and n > 0:
        return n, True
    # The letter shares a token with what follows it ('A.'): include that token, which is the
    # first one where the A and B answers differ.
    return min(n + 1, len(comp)), False


def build_pairs(examples, tokenizer, fmt: str) -> list[tuple[Seq, Seq]]:
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
                pair.append(Seq(prompt_ids, comp, *span))
            pairs.append(tuple(pair))
    if mismatched_prompts:
        warnings.warn(f"{mismatched_prompts} sequences: the tokenized prompt is not a prefix of the "
                      "tokenized prompt+answer (TRL shows the same mismatch during training)", stacklevel=2)
    return pairs


def decision_split(a: Seq, b: Seq) -> int | None:
    """Where the A and B answers of one order part (the letter's position), when each answer's decision
    ends exactly there, so one context's last logit gives both decision scores; None otherwise (a
    tokenizer merging 'A.' into one token)."""
    split = common_prefix(a.ids, b.ids)
    ends = (len(a.prompt_ids) + a.n_decision, len(b.prompt_ids) + b.n_decision)
    return split if ends == (split + 1, split + 1) else None


def decision_items(examples, tokenizer, fmt: str):
    """(context ids, A's letter token, B's letter token) per example and order, or None when some pair's
    decision does not end where its answers part (decision_split): then the full answers decide."""
    items = []
    for a, b in build_pairs(examples, tokenizer, fmt):
        split = decision_split(a, b)
        if split is None:
            return None
        items.append((a.ids[:split], a.ids[split], b.ids[split]))
    return items
