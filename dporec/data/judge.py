"""The judge of a model's own answers: labels from the data, not from another model.

An answer is what a model generated for one pair in one option order. Its decision is read by the task's
one parser (task.parse_answer) and checked against the pair's label, which the user's own ratings set.
Its reasoning is read in either wording the project knows:

- the builder's: "Of the genres in the history, <movie> has Drama and Crime; <movie> has none of them"
  (task.genre_reasoning), or any clause "<movie or Option X> has <genres>";
- the thesis's: "...a strong preference for themes found in <genres>. Option B (<genres>) does not align
  with their recent viewing patterns" (task.thesis_reasoning).

Each claim is true, false or unchecked. A claim names an option by its letter or title; under another
title with exactly one option's genres ("Film 36 (1960) (Drama)" for "Film 206 (1922) (Drama)") it is
about that option and counted as a misquoted title, apart from its truth; a claim about a movie that is
neither option is false. A genre claimed for an option must be one of that option's genres and appear in
the history; "none of them" must mean no shared genre; "themes found in <genres>"
must name genres the history has; "Option X (<genres>) does not align" must name Option X's own genres,
none of which the history has (the sentence asserts absence, not "less than the other"). The history's
genres are those the prompt shows, else those of the record's structured `history` field (the thesis's
file with its users recovered from MovieLens-1M); where neither shows any, a claim that needs them is
unchecked, never true.

Coherence: the option the reasoning argues for is the one it claims shares more of the history's genres
(its own claims, true or not; on equal counts the one it names first, as the builder's template puts the
chosen option first), or, in the thesis's wording, the option whose genres it praises. A reasoning is
coherent when that option is the one its decision names; one that argues nothing is not coherent.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from dporec.data import task

UNPARSEABLE, RIGHT, RIGHT_FALSE_CLAIMS, WRONG = "unparseable", "right", "right, false claims", "wrong"
KINDS = (RIGHT, RIGHT_FALSE_CLAIMS, WRONG, UNPARSEABLE)
REJECT_RULES = ("wrong_decision", "wrong_decision_or_false_claims")
TRUE, FALSE, UNCHECKED = "true", "false", "unchecked"
WORDINGS = ("builder", "thesis", "other", "none")  # how the reasoning was read; none: no reasoning

# One claim: "<subject> has <genres or 'none of them'>", up to the clause's end (a subject may hold a colon:
# "Wallace & Gromit: The Best of Aardman Animation (1996)")
_CLAIM_RE = re.compile(r"(?P<subject>[^;]+?)\s+has\s+(?P<what>[^;]+?)\s*$", re.IGNORECASE)
_NONE_RE = re.compile(r"^(none|no genres?)\b", re.IGNORECASE)
_YEAR_RE = re.compile(r"\(\d{4}\)")
# Clauses end at ';', a line break, or a sentence's period (not the one of "Mr. Holland's Opus").
_CLAUSE_SPLIT_RE = re.compile(r";|\n+|(?<!\bMr)(?<!\bMrs)(?<!\bDr)(?<!\bSt)(?<!\bJr)(?<!\bvs)\.\s+(?=[A-Z])")
# The thesis's two sentences, each on its own (a model may write one, or change the rest of the text)
_THEMES_RE = re.compile(r"strong preference for themes found in (?P<x>.+?)\.(?:\s|$)",
                        re.IGNORECASE | re.DOTALL)
_NOT_ALIGN_RE = re.compile(
    r"Option (?P<letter>[AB])\s*\((?P<y>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*does not align", re.DOTALL)


@dataclass
class Claim:
    text: str               # the clause as written
    option: str | None      # the letter it is about (None: genres named without an option)
    status: str             # TRUE, FALSE or UNCHECKED
    why: str = ""           # what is wrong (FALSE) or why it cannot be checked (UNCHECKED)
    misquoted: bool = False  # the option was named by its genres under another title (counted apart)


@dataclass
class Judgement:
    kind: str                        # one of KINDS
    decision: str | None = None      # "A" / "B" as parsed, None when unparseable
    claim_list: list[Claim] = field(default_factory=list)
    argues_for: str | None = None    # the option the reasoning argues for (None: it argues nothing)
    wording: str = "none"            # one of WORDINGS
    problem: str = ""                # why it is unparseable

    @property
    def claims(self) -> int:
        """Claims found (true, false and unchecked)."""
        return len(self.claim_list)

    @property
    def false_claims(self) -> list[str]:
        return [c.why for c in self.claim_list if c.status == FALSE]

    @property
    def unchecked(self) -> int:
        return sum(c.status == UNCHECKED for c in self.claim_list)

    @property
    def checked(self) -> bool:
        """Whether every claim could be checked (an answer without claims: trivially)."""
        return not self.unchecked

    @property
    def misquoted(self) -> int:
        """Claims whose option is named under a title it does not have (its genres identify it)."""
        return sum(c.misquoted for c in self.claim_list)

    @property
    def coherent(self) -> bool:
        return self.decision is not None and self.argues_for == self.decision

    @property
    def all_true(self) -> bool:
        """At least one claim, and every claim checked and true."""
        return bool(self.claim_list) and all(c.status == TRUE for c in self.claim_list)

    @property
    def right_and_truthful(self) -> bool:
        """The headline: the right decision, argued coherently, every claim checked and true."""
        return self.kind == RIGHT and self.coherent and self.all_true


def history_genres(input_text: str, history: list | None = None) -> set[str]:
    """Every genre the prompt's history shows; where it shows titles only, those of the record's structured
    `history` field ([{"genres": [...]}, ...]) when it has one; else empty."""
    shown = {g for genres in task.shown_genres(task.history_text(input_text)) for g in genres}
    if shown or not isinstance(history, list):
        return shown
    return {g for m in history if isinstance(m, dict) for g in (m.get("genres") or [])}


def _split_genres(what: str) -> list[str]:
    parts = re.split(r"\||,\s*|\s+and\s+", what.strip().rstrip("."))
    return [p.strip() for p in parts if p.strip()]


def _which_option(subject: str, options: dict[str, str]) -> tuple[str | None, bool]:
    """(the letter a claim's subject names, whether it misquotes that option's title): 'Option B', or a
    title (with or without year and genres); failing both, a '<title> (<genres>)' whose genres are
    exactly one option's, with another title (misquoted)."""
    letters = task.named_letters(subject)
    if len(letters) == 1:
        return letters.pop(), False
    hits = [L for L, text in options.items()
            if task.option_mentions(text)["title"].lower() in subject.lower()]
    if len(hits) == 1:
        return hits[0], False
    shown = task.option_mentions(subject.strip()).get("genres")
    by_genres = [L for L, text in options.items()
                 if shown and task.option_mentions(text).get("genres") == shown]
    return (by_genres[0], True) if len(by_genres) == 1 else (None, False)


def _named_option(text: str, options: dict[str, str]) -> str | None:
    """The option a thesis-wording slot names: its genres, its title or its whole text."""
    t = " ".join(text.split()).lower()
    hits = [L for L, o in options.items()
            if t in {" ".join(v.split()).lower() for v in task.option_mentions(o).values()}]
    return hits[0] if len(hits) == 1 else None


def _builder_claims(text: str, options: dict[str, str], shown: set[str]) -> list[tuple[Claim, int | None]]:
    """(claim, how many of the history's genres it says the option has) per "<subject> has <what>" clause."""
    out = []
    text = re.sub(r"^Of the genres in the history,\s*", "", text, flags=re.IGNORECASE)
    for clause in _CLAUSE_SPLIT_RE.split(text):
        clause = clause.strip().rstrip(".")
        m = _CLAIM_RE.search(clause)
        if m is None:
            continue
        letter, misquoted = _which_option(m.group("subject"), options)
        if letter is None:
            if _YEAR_RE.search(m.group("subject")):  # a movie, but neither option: misquoted or made up
                out.append((Claim(clause, None, FALSE, f"names {m.group('subject').strip()!r}, which is "
                                                       "neither option"), None))
            continue  # otherwise not about a movie
        what = m.group("what")
        named = [] if _NONE_RE.match(what) else _split_genres(what)
        shared = set(task.option_genres(options[letter])) & shown
        if not shown:
            claim = Claim(clause, letter, UNCHECKED, "the prompt shows no genres for the history")
        elif not named and shared:
            claim = Claim(clause, letter, FALSE,
                          f"Option {letter} has {', '.join(sorted(shared))} from the history, not none")
        elif wrong := [g for g in named if g not in shared]:
            claim = Claim(clause, letter, FALSE,
                          f"Option {letter} does not have {', '.join(wrong)} among the history's genres")
        else:
            claim = Claim(clause, letter, TRUE)
        claim.misquoted = misquoted
        out.append((claim, len(named)))
    return out


def _thesis_claims(text: str, options: dict[str, str], shown: set[str]) -> tuple[list[Claim], str | None]:
    """(claims, the option argued for) of the thesis's wording; ([], None) when it is not that wording."""
    themes, against = _THEMES_RE.search(text), _NOT_ALIGN_RE.search(text)
    if not themes and not against:
        return [], None
    claims, praised, rejected = [], None, None
    if themes:
        x = themes["x"].strip()
        praised = _named_option(x, options)
        genres = task.option_genres(options[praised]) if praised else _split_genres(x)
        sentence = themes.group(0).strip()
        if not shown:
            claims.append(Claim(sentence, praised, UNCHECKED, "the prompt shows no genres for the history"))
        elif set(genres) & shown:
            claims.append(Claim(sentence, praised, TRUE))
        else:
            claims.append(Claim(sentence, praised, FALSE, f"the history has none of {', '.join(genres)}"))
    if against:
        rejected, y = against["letter"], against["y"].strip()
        sentence = against.group(0).strip()
        own = task.option_genres(options[rejected])
        shared = set(own) & shown
        if _named_option(y, options) != rejected:
            claims.append(Claim(sentence, rejected, FALSE, f"Option {rejected} is not {y!r}"))
        elif not shown:
            claims.append(Claim(sentence, rejected, UNCHECKED, "the prompt shows no genres for the history"))
        elif shared:
            claims.append(Claim(sentence, rejected, FALSE,
                                f"Option {rejected} has {', '.join(sorted(shared))}, which the history has"))
        else:
            claims.append(Claim(sentence, rejected, TRUE))
    if praised is not None and rejected is not None:
        argues = praised if praised != rejected else None  # praising and rejecting one option argues nothing
    else:
        argues = praised or (task.other_letter(rejected) if rejected else None)
    return claims, argues


def _argued_for(claims: list[tuple[Claim, int | None]]) -> str | None:
    """The option the builder-wording claims favour: the one said to share more of the history's genres,
    on equal counts the one named first; one option said to share some: it, said to share none: the other."""
    said: dict[str, int] = {}
    for c, n in claims:
        if c.option is not None:
            said.setdefault(c.option, n)
    if len(said) == 2:
        (first, n1), (_, n2) = said.items()
        return first if n1 >= n2 else task.other_letter(first)
    if len(said) == 1:
        (only, n), = said.items()
        return only if n else task.other_letter(only)
    return None


def read_reasoning(reasoning: str, input_text: str, options: dict[str, str], history: list | None = None
                   ) -> tuple[list[Claim], str | None, str]:
    """(claims, the option argued for, wording) of a reasoning text; see the module docstring."""
    text = re.sub(r"^\s*Reasoning:\s*", "", reasoning or "").strip()
    if not text:
        return [], None, "none"
    shown = history_genres(input_text, history)
    claims, argues = _thesis_claims(text, options, shown)
    if claims:
        return claims, argues, "thesis"
    builder = _builder_claims(text, options, shown)
    if builder:
        return [c for c, _ in builder], _argued_for(builder), "builder"
    return [], None, "other"


def judge(sample: str, example) -> Judgement:
    """The label of one generated answer for `example` (a records.Example, in the order it was asked)."""
    return judge_answer(sample, example.input, example.label, example.extra.get("history"))


def judge_answer(sample: str, input_text: str, label: str, history: list | None = None) -> Judgement:
    """judge() from what a generations file keeps: the input as asked, its label, and the structured
    history where the prompt shows no genres."""
    parsed = task.parse_answer(sample or "")
    if isinstance(parsed, str):
        return Judgement(UNPARSEABLE, problem=parsed.replace("field 'output'", "the answer"))
    letter, reasoning = parsed
    spans = task.option_spans(input_text)
    if isinstance(spans, str):
        raise ValueError(spans)
    options = {L: input_text[a:b] for L, (a, b) in spans.items()}
    claims, argues, wording = read_reasoning(reasoning, input_text, options, history)
    if letter != label:
        kind = WRONG
    else:
        kind = RIGHT_FALSE_CLAIMS if any(c.status == FALSE for c in claims) else RIGHT
    return Judgement(kind, decision=letter, claim_list=claims, argues_for=argues, wording=wording)


def is_chosen(j: Judgement) -> bool:
    """A chosen answer: the right decision and no false claims."""
    return j.kind == RIGHT


def is_rejected(j: Judgement, rule: str) -> bool:
    """A rejected answer: the wrong decision, or (rule wrong_decision_or_false_claims) false claims too."""
    if rule not in REJECT_RULES:
        raise ValueError(f"unknown rejection rule {rule!r}; use one of {REJECT_RULES}")
    return j.kind == WRONG or (rule == REJECT_RULES[1] and j.kind == RIGHT_FALSE_CLAIMS)
