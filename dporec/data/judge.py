"""The judge of a model's own answers: labels from the data, not from another model.

A sample is an answer the model generated for one pair in one option order. Its decision is read by
the task's one parser (task.parse_answer) and checked against the pair's label, which the user's own
ratings set. Each claim its reasoning makes about genres ("<movie> has Drama and Crime", "<movie> has
none of them", the builder's wording) is checked against the prompt: a genre claimed for an option
must be one of that option's genres and appear in the history; "none of them" must mean no shared
genre. A prompt whose history shows no genres (the thesis's file) leaves claims unchecked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from dporec.data import task

UNPARSEABLE, RIGHT, RIGHT_FALSE_CLAIMS, WRONG = "unparseable", "right", "right, false claims", "wrong"
KINDS = (RIGHT, RIGHT_FALSE_CLAIMS, WRONG, UNPARSEABLE)
REJECT_RULES = ("wrong_decision", "wrong_decision_or_false_claims")

# One claim: "<subject> has <genres or 'none of them'>", up to the clause's end.
_CLAIM_RE = re.compile(r"(?P<subject>[^;:]+?)\s+has\s+(?P<what>[^;]+?)\s*$", re.IGNORECASE)
_NONE_RE = re.compile(r"^(none|no genres?)\b", re.IGNORECASE)
# Clauses end at ';', a line break, or a sentence's period (not the one of "Mr. Holland's Opus").
_CLAUSE_SPLIT_RE = re.compile(r";|\n+|(?<!\bMr)(?<!\bMrs)(?<!\bDr)(?<!\bSt)(?<!\bJr)(?<!\bvs)\.\s+(?=[A-Z])")


@dataclass
class Judgement:
    kind: str                        # one of KINDS
    decision: str | None = None      # "A" / "B" as parsed, None when unparseable
    claims: int = 0                  # genre claims found and checked
    false_claims: list[str] = field(default_factory=list)
    checked: bool = True             # False when the prompt shows no genres to check claims against
    problem: str = ""                # why it is unparseable


def history_genres(input_text: str) -> set[str]:
    """Every genre the prompt's history shows (empty when it shows titles only)."""
    return {g for genres in task.shown_genres(task.history_text(input_text)) for g in genres}


def _split_genres(what: str) -> list[str]:
    parts = re.split(r",\s*|\s+and\s+", what.strip().rstrip("."))
    return [p.strip() for p in parts if p.strip()]


def _which_option(subject: str, options: dict[str, str]) -> str | None:
    """The letter a claim's subject names: 'Option B', or a title (with or without year and genres)."""
    letters = task.named_letters(subject)
    if len(letters) == 1:
        return letters.pop()
    hits = [L for L, text in options.items()
            if task.option_mentions(text)["title"].lower() in subject.lower()]
    return hits[0] if len(hits) == 1 else None


def check_claims(reasoning: str, input_text: str, options: dict[str, str]) -> tuple[int, list[str], bool]:
    """(claims checked, the false ones, whether claims could be checked) for a reasoning text."""
    shown = history_genres(input_text)
    if not shown:
        return 0, [], False
    n, false = 0, []
    text = re.sub(r"^\s*Reasoning:\s*", "", reasoning)
    text = re.sub(r"^Of the genres in the history,\s*", "", text, flags=re.IGNORECASE)
    for clause in _CLAUSE_SPLIT_RE.split(text):
        m = _CLAIM_RE.search(clause.strip().rstrip("."))
        if m is None:
            continue
        letter = _which_option(m.group("subject"), options)
        if letter is None:
            continue  # not about one of the two options
        own = set(task.option_genres(options[letter]))
        shared = own & shown
        n += 1
        what = m.group("what")
        if _NONE_RE.match(what):
            if shared:
                false.append(f"Option {letter} has {', '.join(sorted(shared))} from the history, not none")
            continue
        wrong = [g for g in _split_genres(what) if g not in shared]
        if wrong:
            false.append(f"Option {letter} does not have {', '.join(wrong)} among the history's genres")
    return n, false, True


def judge(sample: str, example) -> Judgement:
    """The label of one generated answer for `example` (a records.Example, in the order it was asked)."""
    parsed = task.parse_answer(sample or "")
    if isinstance(parsed, str):
        return Judgement(UNPARSEABLE, problem=parsed.replace("field 'output'", "the answer"))
    letter, reasoning = parsed
    options = {"A": example.option_a, "B": example.option_b}
    n, false, checked = check_claims(reasoning, example.input, options)
    if letter != example.label:
        kind = WRONG
    else:
        kind = RIGHT_FALSE_CLAIMS if false else RIGHT
    return Judgement(kind, decision=letter, claims=n, false_claims=false, checked=checked)


def is_chosen(j: Judgement) -> bool:
    """A chosen answer: the right decision and only true claims."""
    return j.kind == RIGHT


def is_rejected(j: Judgement, rule: str) -> bool:
    """A rejected answer: the wrong decision, or (rule wrong_decision_or_false_claims) false claims too."""
    if rule not in REJECT_RULES:
        raise ValueError(f"unknown rejection rule {rule!r}; use one of {REJECT_RULES}")
    return j.kind == WRONG or (rule == REJECT_RULES[1] and j.kind == RIGHT_FALSE_CLAIMS)
