"""The task contract: how a pair and its answer read as text, and every parser of those texts.

Builders, trainers, scorers, the generation parser and the tiny models' training texts all write and
read pairs through this module, so a change of wording happens in one place.
"""
from __future__ import annotations

import re

from dporec import UserError

INSTRUCTION = ("Analyze the user's history to identify their preference. Compare two potential movies "
               "and explain which one is the better recommendation.")
ANSWER_PREFIX = "The better recommendation is Option "
LETTERS = ("A", "B")
ORDERS = ("original", "swapped")  # a pair in its file order, and with its options exchanged
PROMPT_FORMATS = ("alpaca", "chat")

# An option's place in `input`: "Option A:".
MARKER_RE = re.compile(r"\bOption[ \t]+([AB])[ \t]*:")
# Any mention of a letter ("Option B", "option A"): decisions, references in reasonings, generated text.
OPTION_RE = re.compile(r"\b([Oo]ption)(\s+)([AB])\b")
# The decision: "The better recommendation is Option X", X any word (anything but A or B is refused).
_ANSWER_RE = re.compile(r"^\s*The\s+better\s+recommendation\s+is\s+Option\s+(\w+)")
# The thesis's reasoning: "<x>" is the chosen option's genres (or title), "<y>" the other option's.
_THESIS_REASONING = ("Reasoning: The user has shown a strong preference for themes found in {x}. "
                     "Option {letter} ({y}) does not align with their recent viewing patterns.")
_THESIS_REASONING_RE = re.compile(
    r"^Reasoning:\s*The user has shown a strong preference for themes found in (?P<x>.+?)\.\s*"
    r"Option (?P<letter>[AB]) \((?P<y>.+)\) does not align with their recent viewing patterns\.?$", re.DOTALL)
# How a prompt shows a movie's genres: in parentheses right after its year, "Heat (1995) (Action|Crime)".
YEAR_GENRES_RE = re.compile(r"\((\d{4})\)\s*\(([^()]*)\)")
# A next-movie record (the thesis's movielens_train.jsonl) asks what to watch, not which of two.
NEXT_MOVIE_RE = re.compile(r"should (they )?watch|watch next", re.IGNORECASE)
# A decision sentence ends at '.', '!' or '?' followed by space, or at a line break.
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def other_letter(letter: str) -> str:
    return "B" if letter == "A" else "A"


# ---------------------------------------------------------------------------------------------
# The input: a history and two options

def movie_text(title: str, genres) -> str:
    """How a prompt shows a movie: 'Heat (1995) (Action|Crime|Thriller)'."""
    return f"{title} ({'|'.join(genres)})"


def own_line_input(history: list[str], a: str, b: str) -> str:
    """The builder's layout: the history on one line, then each option on its own line."""
    return f"History: {', '.join(history)}\nOption A: {a}.\nOption B: {b}."


def inline_input(history: list[str], a: str, b: str) -> str:
    """The thesis's layout (contrastive_rec_train.jsonl): everything on one line, history titles only."""
    return f"History: {', '.join(history)}. Option A: {a}. Option B: {b}."


def option_spans(text: str) -> dict[str, tuple[int, int]] | str:
    """{letter: (start, end)} of each option's text in `input`, or what is wrong with `input`.

    An option's text starts after its 'Option X:' marker and stops at the other marker or at the end
    of its line, without surrounding spaces and one final period, so both layouts and their hand-made
    variants (no final period, extra spaces, CRLF) give the same texts. The history is never split: its
    titles contain commas, colons, periods and parentheses.
    """
    markers = list(MARKER_RE.finditer(text))
    for L in LETTERS:
        n = sum(m[1] == L for m in markers)
        if n != 1:
            return f"field 'input' has {'no' if not n else 'more than one'} parseable 'Option {L}: ...' line"
    spans = {}
    for i, m in enumerate(markers):
        stop = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        newline = text.find("\n", m.end(), stop)
        start, end = m.end(), stop if newline < 0 else newline
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start and text[end - 1] == ".":
            end -= 1
            while end > start and text[end - 1].isspace():
                end -= 1
        if end == start:
            return f"field 'input': 'Option {m[1]}:' is followed by no movie"
        spans[m[1]] = (start, end)
    if not history_text(text):
        return f"field 'input' has no history before 'Option {markers[0][1]}:'"
    return spans


def history_text(text: str) -> str:
    """The history part of `input`: before the first option marker, without 'History:' and final period."""
    m = MARKER_RE.search(text)
    head = re.sub(r"^\s*History\s*:", "", text[:m.start() if m else len(text)])
    return head.strip().rstrip(".").strip()


def shown_genres(text: str) -> list[list[str]]:
    """The genres of each movie a text shows, in order ('Heat (1995) (Action|Crime), ...' ->
    [['Action', 'Crime'], ...]); movies shown without genres (titles only) are not listed."""
    return [[g.strip() for g in grp.split("|") if g.strip()] for _, grp in YEAR_GENRES_RE.findall(text)]


def option_genres(option_text: str) -> list[str]:
    """The genres a prompt shows for one option ('Heat (1995) (Action|Crime)' -> ['Action', 'Crime'];
    a title shown without genres -> [])."""
    shown = shown_genres(option_text)
    if shown:
        return shown[0]
    return [g.strip() for g in option_mentions(option_text).get("genres", "").split("|") if g.strip()]


def option_year(option_text: str) -> int | None:
    """The release year a prompt shows for one option: the year before its genres, else its last (YYYY)."""
    m = YEAR_GENRES_RE.search(option_text)
    years = re.findall(r"\((\d{4})\)", option_text)
    return int(m.group(1)) if m else int(years[-1]) if years else None


def layout(text: str) -> str:
    """'inline' (both options on one line, as in the thesis's file) or 'own-line'."""
    lo, hi = sorted(option_spans(text).values())
    return "own-line" if "\n" in text[lo[0]:hi[0]] else "inline"


def swap_options(text: str) -> str:
    """`input` with the two option texts exchanged in place; every other character stays."""
    (s1, e1), (s2, e2) = sorted(option_spans(text).values())
    return text[:s1] + text[s2:e2] + text[e1:s2] + text[s1:e1] + text[e2:]


def option_mentions(option_text: str) -> dict[str, str]:
    """'Heat (1995) (Action|Crime)' -> the forms a reasoning may quote it by: genres, title, display."""
    t = option_text.strip().rstrip(".").strip()
    m = re.match(r"^(.*?)\s*\(([^()]*)\)$", t)
    if not m or re.fullmatch(r"\d{4}", m.group(2)):  # '(1995)' is the year, not genres
        return {"title": t, "display": t}
    return {"genres": m.group(2), "title": m.group(1), "display": t}


# ---------------------------------------------------------------------------------------------
# The answer: a decision sentence and a reasoning

def answer_text(letter: str, reasoning: str = "") -> str:
    """The full answer naming `letter`, in the thesis wording."""
    return f"{ANSWER_PREFIX}{letter}." + (f" {reasoning}" if reasoning else "")


def parse_answer(output: str) -> tuple[str, str] | str:
    """(letter, reasoning) of a record's answer, or what is wrong with it.

    The decision sentence must name exactly one of Option A and Option B: "Option A or Option B",
    "Option B, or maybe Option A" and "Option C" are refused rather than read as a guess. The
    reasoning after it may mention either option.
    """
    m = _ANSWER_RE.match(output)
    if m is not None:
        letter, rest = m.group(1), output[m.end():]
        if letter not in LETTERS:
            return f"field 'output' decides for 'Option {letter}'; only Option A or B can be the answer"
        decision_end = _SENTENCE_SPLIT_RE.search(rest)
        decision = rest[:decision_end.start()] if decision_end else rest
        if named_letters(decision) or re.search(r"\b[Oo]ption\s+\w", decision):
            return (f"field 'output': the decision sentence names more than one option "
                    f"({(m.group(0) + decision).strip()!r}); it must name exactly one")
        return letter, re.sub(r"^\.?\s*", "", rest).strip()
    named = named_letters(output)
    if not named:
        if m_any := re.search(r"\boption\s+[ab]\b", output, re.IGNORECASE):
            return (f"field 'output' writes {m_any.group(0)!r}; the decision must be written "
                    f"'{ANSWER_PREFIX}A.' or '...B.' (capital O, capital letter)")
        return f"field 'output' names no option (expected '{ANSWER_PREFIX}A.' or '...B.')"
    if len(named) > 1:
        return f"field 'output' names both options and does not start with '{ANSWER_PREFIX}X.'"
    return f"field 'output' must start with '{ANSWER_PREFIX}X.'"


def named_letters(text: str) -> set[str]:
    return {m[3] for m in OPTION_RE.finditer(text)}


def parse_choice(text: str) -> str | None:
    """The option a generated answer picks, or None when it is not a valid single choice.

    The decision sentence is the first sentence that names an option. It is valid only when it names
    exactly one of them: naming both ("Option A or Option B") or neither is invalid, so no letter is
    ever preferred by the parser.
    """
    for sentence in _SENTENCE_SPLIT_RE.split(text or ""):
        named = named_letters(sentence)
        if named:
            return named.pop() if len(named) == 1 else None
    return None


def swap_letter_refs(text: str) -> str:
    """Every 'Option A' <-> 'Option B' in one pass (two sequential replaces would undo each other)."""
    return OPTION_RE.sub(lambda m: f"{m[1]}{m[2]}{other_letter(m[3])}", text)


def _phrase(genres: list[str]) -> str:
    if not genres:
        return "none of them"
    return genres[0] if len(genres) == 1 else ", ".join(genres[:-1]) + " and " + genres[-1]


def genre_reasoning(x: str, x_shared: list[str], y: str, y_shared: list[str]) -> str:
    """The builder's reasoning for choosing movie x over y: which of the history's genres each has.

    One template for both options and only facts the prompt shows, so it is true whichever option it
    argues for and tells nothing the options do not.
    """
    return (f"Reasoning: Of the genres in the history, {x} has {_phrase(x_shared)}; "
            f"{y} has {_phrase(y_shared)}.")


def thesis_reasoning(x: str, other: str, y: str) -> str:
    """The thesis's reasoning template: x the chosen option's genres, y the other option's (letter other)."""
    return _THESIS_REASONING.format(x=x, letter=other, y=y)


def mirror_thesis_reasoning(reasoning: str, chosen: str, other: str, label: str) -> str | None:
    """The thesis reasoning rewritten to argue for the other option, or None when it is not that template.

    "...themes found in <chosen's genres>. Option <other> (<other's genres>) does not align..." becomes
    "...themes found in <other's genres>. Option <chosen> (<chosen's genres>) does not align...": every
    other character stays. A title or 'title (genres)' in place of the genres is mirrored the same way.
    `chosen`/`other` are the two option texts, `label` the chosen letter.
    """
    m = _THESIS_REASONING_RE.match(reasoning)
    if not m or m["letter"] != other_letter(label):
        return None
    c, o = option_mentions(chosen), option_mentions(other)
    kx = next((k for k in ("genres", "display", "title") if c.get(k) == m["x"] and k in o), None)
    ky = next((k for k in ("genres", "display", "title") if o.get(k) == m["y"] and k in c), None)
    if kx is None or ky is None:
        return None
    r = reasoning
    return (r[:m.start("x")] + o[kx] + r[m.end("x"):m.start("letter")] + label
            + r[m.end("letter"):m.start("y")] + c[ky] + r[m.end("y"):])


# ---------------------------------------------------------------------------------------------
# The prompt

def alpaca_prompt(input_text: str, instruction: str | None = INSTRUCTION) -> str:
    """The thesis's '### Instruction / ### Input / ### Response' layout (no instruction section for None)."""
    head = "" if instruction is None else f"### Instruction:\n{instruction}\n\n"
    return f"{head}### Input:\n{input_text}\n\n### Response:\n"


def strip_template_bos(text: str, tokenizer) -> str:
    """Drop the BOS a chat template writes as text when the tokenizer adds one itself on encoding.

    TRL's SFT and DPO and our scoring all tokenize the prompt with special tokens, so a template's
    '<|begin_of_text|>' would give two BOS tokens (Unsloth's SFT data preparation drops one, TRL's DPO
    and scoring would not).
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not text.startswith(bos):
        return text
    adds_bos = tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos else text


def format_prompt(instruction: str, input_text: str, fmt: str = "alpaca", tokenizer=None) -> str:
    """The text the model sees before its answer: alpaca, or the tokenizer's chat template with one
    user turn and the generation prompt (without a BOS the tokenizer adds anyway)."""
    if fmt == "alpaca":
        return alpaca_prompt(input_text, instruction)
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError("data.prompt_format=chat needs a tokenizer with a chat template; "
                            "use data.prompt_format=alpaca for this model")
        messages = [{"role": "user", "content": f"{instruction}\n\n{input_text}"}]
        return strip_template_bos(tokenizer.apply_chat_template(messages, tokenize=False,
                                                                add_generation_prompt=True), tokenizer)
    raise UserError(f"unknown prompt format {fmt!r} (expected 'alpaca' or 'chat')")
