"""The thesis record format and everything done with it: load, validate, swap, convert (balance: splits.py).

A record is one JSON object per line with the thesis fields. Two layouts of `input` are accepted:

    inline (the thesis's own contrastive_rec_train.jsonl: history titles only, everything on one line)
      "History: Night River, The (1990), Hello, Stranger (1943). Option A: Garden Letter (1930)
       (Fantasy|Musical). Option B: Winter Machine, The (1951) (Drama|Adventure)."
    own-line (what data/prepare_movielens.py writes: history with genres, each option on its line)
      "History: Heat (1995) (Action|Crime|Thriller), ...\nOption A: Casino (1995) (Drama).\nOption B: ..."

and `output` is "The better recommendation is Option A. Reasoning: ...". An option runs from its
"Option X:" marker to the next marker or the end of its line, without the final period; the history is
never split (its titles contain commas, colons, periods and parentheses). Hand-made variants are
accepted: a missing final period, extra spaces, CRLF line endings, a UTF-8 BOM, blank lines.

Builders (data/prepare_movielens.py) add structured fields the scripts may use: `id`, `user_id`,
`label`, `history`, `option_a`, `option_b` (dicts with item_id/title/year/genres),
`negative_kind` ("disliked" | "unseen_popular") and `reasons` ({"A": ..., "B": ...}: the reasoning
text arguing for each option, so a rejected answer can argue for the other option). A record without
them (the thesis's file) works everywhere; its pair id is "<file name>:<line>".

The letter is the label; everything else about an example is position-free. `swap()` exchanges the
two option texts in place and flips every letter reference of the output in one pass (the
precursor's two sequential string replaces undid each other and made rejected == chosen).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import UserError

INSTRUCTION = ("Analyze the user's history to identify their preference. Compare two potential movies "
               "and explain which one is the better recommendation.")
ANSWER_PREFIX = "The better recommendation is Option "
LETTERS = ("A", "B")
ORDERS = ("original", "swapped")  # a pair in its file order, and with its options exchanged (swap)

_MARKER_RE = re.compile(r"\bOption[ \t]+([AB])[ \t]*:")
_DECISION_RE = re.compile(r"Option\s+([AB])\b")
_ANSWER_RE = re.compile(r"^\s*The\s+better\s+recommendation\s+is\s+Option\s+([AB])\b\.?\s*(.*)$", re.DOTALL)
_LETTER_REF_RE = re.compile(r"\b(Option|option)(\s+)([AB])\b")
# The thesis's reasoning: "<x>" is the chosen option's genres (or title), "<y>" the other option's.
_THESIS_REASONING_RE = re.compile(
    r"^Reasoning:\s*The user has shown a strong preference for themes found in (?P<x>.+?)\.\s*"
    r"Option (?P<letter>[AB]) \((?P<y>.+)\) does not align with their recent viewing patterns\.?$", re.DOTALL)
# A next-movie record (the thesis's movielens_train.jsonl): refused as a whole file, not line by line.
_NEXT_MOVIE_RE = re.compile(r"should (they )?watch|watch next", re.IGNORECASE)


@dataclass
class Example:
    instruction: str
    input: str
    output: str
    label: str                 # "A" or "B": which option the user liked
    option_a: str              # option texts after "Option A:" / "Option B:" (final period not included)
    option_b: str
    reasoning: str             # output text after the decision sentence (may be "")
    pair_id: str               # stable id: the record's "id", else "<file name>:<line>"
    user_id: str | None = None
    source: str = ""           # "FILE:LINE" for messages
    reasons: dict | None = None  # {"A": text for option A, "B": text for option B} when known
    extra: dict = field(default_factory=dict)  # any other structured fields, kept verbatim

    def option(self, letter: str) -> str:
        return self.option_a if letter == "A" else self.option_b

    @property
    def other(self) -> str:
        return "B" if self.label == "A" else "A"


def other_letter(letter: str) -> str:
    return "B" if letter == "A" else "A"


def answer_text(letter: str, reasoning: str = "") -> str:
    """The full answer naming `letter`, in the thesis wording."""
    return f"{ANSWER_PREFIX}{letter}." + (f" {reasoning}" if reasoning else "")


def _swap_letter_refs(text: str) -> str:
    return _LETTER_REF_RE.sub(lambda m: f"{m[1]}{m[2]}{other_letter(m[3])}", text)


def option_spans(text: str) -> dict[str, tuple[int, int]] | str:
    """{letter: (start, end)} of each option's text in `input`, or what is wrong with `input`.

    An option's text starts after its 'Option X:' marker and stops at the other marker or at the
    end of its line, without surrounding spaces and without one final period. Both layouts and
    their hand-made variants give the same texts.
    """
    markers = list(_MARKER_RE.finditer(text))
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
    m = _MARKER_RE.search(text)
    head = re.sub(r"^\s*History\s*:", "", text[:m.start() if m else len(text)])
    return head.strip().rstrip(".").strip()


def layout(ex: Example) -> str:
    """'inline' (both options on one line, as in the thesis's file) or 'own-line'."""
    spans = option_spans(ex.input)
    lo, hi = sorted(spans.values())
    return "own-line" if "\n" in ex.input[lo[0]:hi[0]] else "inline"


def option_mentions(option_text: str) -> dict[str, str]:
    """'Heat (1995) (Action|Crime)' -> the forms a reasoning may quote it by: genres, title, display."""
    t = option_text.strip().rstrip(".").strip()
    m = re.match(r"^(.*?)\s*\(([^()]*)\)$", t)
    if not m or re.fullmatch(r"\d{4}", m.group(2)):  # '(1995)' is the year, not genres
        return {"title": t, "display": t}
    return {"genres": m.group(2), "title": m.group(1), "display": t}


def _mirror_thesis_reasoning(ex: Example) -> str | None:
    """The thesis reasoning rewritten to argue for the other option, or None when it is not that template.

    "...themes found in <chosen's genres>. Option <other> (<other's genres>) does not align..." becomes
    "...themes found in <other's genres>. Option <chosen> (<chosen's genres>) does not align...": every
    other character stays. A title or 'title (genres)' in place of the genres is mirrored the same way.
    """
    m = _THESIS_REASONING_RE.match(ex.reasoning)
    if not m or m["letter"] != ex.other:
        return None
    chosen, other = option_mentions(ex.option(ex.label)), option_mentions(ex.option(ex.other))
    kx = next((k for k in ("genres", "display", "title") if chosen.get(k) == m["x"] and k in other), None)
    ky = next((k for k in ("genres", "display", "title") if other.get(k) == m["y"] and k in chosen), None)
    if kx is None or ky is None:
        return None
    r = ex.reasoning
    return (r[:m.start("x")] + other[kx] + r[m.end("x"):m.start("letter")] + ex.label
            + r[m.end("letter"):m.start("y")] + chosen[ky] + r[m.end("y"):])


def reasoning_for(ex: Example, letter: str) -> str:
    """Reasoning text arguing for option `letter` ("" for both letters when it cannot be derived).

    From the record's `reasons` when the builder supplied them; for the thesis's reasoning template,
    its mirror image; any other free text cannot be rewritten to argue for the other option safely,
    so both answers are the decision sentence alone (DPO then contrasts the letters only; SFT still
    trains on the record's own answer, see sft_output).
    """
    if ex.reasons and ex.reasons.get(letter):
        return ex.reasons[letter]
    mirrored = _mirror_thesis_reasoning(ex)
    if mirrored is None:
        return ""
    return ex.reasoning if letter == ex.label else mirrored


def reasoning_is_mirrored(ex: Example) -> bool:
    """Whether the rejected answer carries reasoning (reasons or the thesis template) or is decision-only."""
    return bool(reasoning_for(ex, ex.other))


def sft_output(ex: Example) -> str:
    """What SFT trains on: the record's own answer (the chosen reasoning when `reasons` gives it)."""
    return answer_text(ex.label, (ex.reasons or {}).get(ex.label) or ex.reasoning)


def chosen_output(ex: Example) -> str:
    return answer_text(ex.label, reasoning_for(ex, ex.label))


def rejected_output(ex: Example) -> str:
    """The answer naming the wrong option, with reasoning that argues for that option."""
    return answer_text(ex.other, reasoning_for(ex, ex.other))


def swap(ex: Example) -> Example:
    """The same example with the two option texts exchanged in place and the label flipped.

    Every other character of `input` stays; the output's letters (the decision and every 'Option X'
    in the reasoning) flip in one pass, so the reasoning keeps arguing for the same movie.
    """
    spans = option_spans(ex.input)
    (s1, e1), (s2, e2) = sorted(spans.values())
    t = ex.input
    new_input = t[:s1] + t[s2:e2] + t[e1:s2] + t[s1:e1] + t[e2:]
    reasons = {"A": ex.reasons["B"], "B": ex.reasons["A"]} if ex.reasons else None
    extra = dict(ex.extra)
    if "option_a" in extra and "option_b" in extra:
        extra["option_a"], extra["option_b"] = ex.extra["option_b"], ex.extra["option_a"]
    return replace(ex, input=new_input, output=_swap_letter_refs(ex.output), label=ex.other,
                   option_a=ex.option_b, option_b=ex.option_a, reasoning=_swap_letter_refs(ex.reasoning),
                   reasons=reasons, extra=extra)


# ---------------------------------------------------------------------------------------------
# Loading and validation

def parse_record(obj, where: str, default_id: str) -> Example:
    """Validate one decoded JSON line; raise UserError('FILE:LINE: ...') naming the problem."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("instruction", "input", "output"):
        if key not in obj:
            raise UserError(f"{where}: missing field '{key}'")
        if not isinstance(obj[key], str):
            raise UserError(f"{where}: field '{key}' must be a string")
    spans = option_spans(obj["input"])
    if isinstance(spans, str):
        raise UserError(f"{where}: {spans}")
    opts = {L: obj["input"][a:b] for L, (a, b) in spans.items()}
    if opts["A"] == opts["B"]:
        raise UserError(f"{where}: field 'input': Option A and Option B are the same movie ({opts['A']!r})")
    m = _ANSWER_RE.match(obj["output"])
    named = set(_DECISION_RE.findall(m.group(0) if m else obj["output"]))
    if m is None:
        if not named:
            raise UserError(f"{where}: field 'output' names no option "
                            f"(expected '{ANSWER_PREFIX}A.' or '...B.')")
        if len(named) > 1:
            raise UserError(f"{where}: field 'output' names both options and does not start with "
                            f"'{ANSWER_PREFIX}X.'")
        raise UserError(f"{where}: field 'output' must start with '{ANSWER_PREFIX}X.'")
    label, reasoning = m.group(1), m.group(2).strip()
    if "label" in obj and obj["label"] != label:
        raise UserError(f"{where}: field 'label' is {obj['label']!r} but 'output' names Option {label}")
    reasons = obj.get("reasons")
    if reasons is not None and not (isinstance(reasons, dict) and set(reasons) == {"A", "B"}
                                    and all(isinstance(v, str) for v in reasons.values())):
        raise UserError(f"{where}: field 'reasons' must map both 'A' and 'B' to a text")
    known = {"instruction", "input", "output", "id", "user_id", "label", "reasons"}
    return Example(
        instruction=obj["instruction"], input=obj["input"], output=obj["output"], label=label,
        option_a=opts["A"], option_b=opts["B"], reasoning=reasoning,
        pair_id=str(obj.get("id", default_id)),
        user_id=None if obj.get("user_id") is None else str(obj["user_id"]),
        source=where, reasons=reasons, extra={k: v for k, v in obj.items() if k not in known},
    )


def _not_pairwise(path: Path, line: int, first: dict, n_lines: int) -> UserError:
    """One message for a file none of whose lines offers two options (e.g. a next-movie file)."""
    kind = ("a next-movie file (like the thesis's movielens_train.jsonl: 'what should they watch next?' -> "
            "'The user should watch ...')" if _NEXT_MOVIE_RE.search(first["input"] + " " + first["output"])
            else "not a pairwise file")
    return UserError(
        f"{path}: this is {kind}, not pairwise preference data: none of its {n_lines} lines has "
        f"'Option A: ...' and 'Option B: ...' in 'input' (line {line} 'output' starts {first['output'][:60]!r}). "
        f"This project compares two options per line: use the thesis's contrastive_rec_train.jsonl "
        f"(python data/prepare_movielens.py --source thesis:FILE ...) or build pairs from ratings with "
        f"data/prepare_movielens.py --source ml-1m.zip")


def load_examples(path: str | Path, limit: int | None = None, max_errors: int = 20) -> list[Example]:
    """Load and validate every line of a JSONL file (UTF-8, with or without BOM; LF or CRLF).

    All invalid lines (up to `max_errors`) are reported together as 'FILE:LINE: problem'. A file in
    which no line has two options (a next-movie file) gets one message saying so instead.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    examples, errors, no_options, first, n_lines = [], [], 0, None, 0
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            n_lines += 1
            where = f"{path}:{n}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                if (isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in ("input", "output"))
                        and not _MARKER_RE.search(obj["input"])):
                    no_options += 1
                    first = first or (n, obj)
                examples.append(parse_record(obj, where, f"{path.name}:{n}"))
            except UserError as e:
                errors.append(str(e))
    if no_options and not examples:
        raise _not_pairwise(path, *first, n_lines)
    if errors:
        shown = errors[:max_errors] + ([f"{path}: {len(errors) - max_errors} more invalid lines not shown"]
                                       if len(errors) > max_errors else [])
        raise UserError(f"invalid data file ({len(errors)} bad of {n_lines} lines):\n  " + "\n  ".join(shown))
    if not examples:
        raise UserError(f"{path}: no examples (the file is empty)")
    ids = [e.pair_id for e in examples]
    if len(set(ids)) != len(ids):
        seen = {}
        dup = next(e for e in examples if seen.setdefault(e.pair_id, e) is not e)
        raise UserError(f"{dup.source}: duplicate example id {dup.pair_id!r} (first at {seen[dup.pair_id].source})")
    return examples[:limit] if limit else examples


def to_record(ex: Example) -> dict:
    rec = {"instruction": ex.instruction, "input": ex.input, "output": ex.output, "id": ex.pair_id}
    if ex.user_id is not None:
        rec["user_id"] = ex.user_id
    rec["label"] = ex.label
    if ex.reasons:
        rec["reasons"] = ex.reasons
    rec.update(ex.extra)
    return rec


def write_jsonl(path: str | Path, records) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Prompts and trainer rows

def strip_template_bos(text: str, tokenizer) -> str:
    """Drop the BOS a chat template writes as text when the tokenizer adds one itself on encoding.

    The one place this happens, for every stage: TRL's SFT and DPO and our scoring all tokenize the
    prompt with special tokens, so a template's '<|begin_of_text|>' would give two BOS tokens
    (Unsloth's SFT data preparation drops one, TRL's DPO and scoring would not).
    """
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not text.startswith(bos):
        return text
    adds_bos = tokenizer("")["input_ids"][:1] == [tokenizer.bos_token_id]
    return text[len(bos):] if adds_bos else text


def format_prompt(ex: Example, fmt: str = "alpaca", tokenizer=None) -> str:
    """The text the model sees before its answer.

    alpaca: the thesis's '### Instruction / ### Input / ### Response' layout.
    chat:   the tokenizer's chat template with one user turn and the generation prompt, without
            a BOS the tokenizer adds anyway (strip_template_bos).
    """
    if fmt == "alpaca":
        return f"### Instruction:\n{ex.instruction}\n\n### Input:\n{ex.input}\n\n### Response:\n"
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError("data.prompt_format=chat needs a tokenizer with a chat template; "
                            "use data.prompt_format=alpaca for this model")
        messages = [{"role": "user", "content": f"{ex.instruction}\n\n{ex.input}"}]
        return strip_template_bos(tokenizer.apply_chat_template(messages, tokenize=False,
                                                                add_generation_prompt=True), tokenizer)
    raise UserError(f"unknown prompt format {fmt!r} (expected 'alpaca' or 'chat')")


def to_sft_rows(examples, fmt: str = "alpaca", tokenizer=None) -> list[dict]:
    """prompt/completion rows: TRL trains on the completion only (prompt tokens masked)."""
    return [{"prompt": format_prompt(e, fmt, tokenizer), "completion": sft_output(e)} for e in examples]


def to_dpo_rows(examples, fmt: str = "alpaca", tokenizer=None) -> list[dict]:
    """prompt/chosen/rejected rows. A rejected equal to its chosen is an error, not a warning.

    The rejected answer names the other option with reasoning for it (reasoning_for); where a record's
    free-text reasoning cannot be mirrored, both answers are the decision sentence alone.
    """
    rows = []
    for e in examples:
        chosen, rejected = chosen_output(e), rejected_output(e)
        if chosen == rejected:
            raise UserError(f"{e.source}: rejected answer equals chosen answer; DPO would learn nothing")
        rows.append({"prompt": format_prompt(e, fmt, tokenizer), "chosen": chosen, "rejected": rejected})
    return rows
