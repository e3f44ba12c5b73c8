"""The thesis record format and everything done with it: load, validate, balance, swap, convert.

A record is one JSON object per line with the thesis fields

    {"instruction": "...",
     "input": "History: Toy Story (1995) (Animation|Children's|Comedy), ...\\n"
              "Option A: Heat (1995) (Action|Crime|Thriller).\\nOption B: Casper (1995) (Children's).",
     "output": "The better recommendation is Option A. Reasoning: ..."}

Builders (data/prepare_movielens.py) add structured fields the scripts may use: `id`, `user_id`,
`label`, `history`, `option_a`, `option_b` (dicts with item_id/title/year/genres),
`negative_kind` ("disliked" | "unseen_popular") and `reasons` ({"A": ..., "B": ...}: the reasoning
text arguing for each option, so a rejected answer can argue for the other option).

The letter is the label; everything else about an example is position-free. `swap()` exchanges the
two options and flips every letter reference in one pass (the precursor's two sequential string
replaces undid each other and made rejected == chosen).
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
IMBALANCE_WARN = 0.60  # warn when one letter holds more than this share of the answers

_OPTION_RE = {L: re.compile(rf"^\s*Option {L}\s*:\s*(.+?)\s*$", re.MULTILINE) for L in LETTERS}
_DECISION_RE = re.compile(r"Option\s+([AB])\b")
_ANSWER_RE = re.compile(r"^\s*The better recommendation is Option ([AB])\b\.?\s*(.*)$", re.DOTALL)
_LETTER_REF_RE = re.compile(r"\b(Option|option)(\s+)([AB])\b")


@dataclass
class Example:
    instruction: str
    input: str
    output: str
    label: str                 # "A" or "B": which option the user liked
    option_a: str              # option texts as they appear after "Option A:" / "Option B:"
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


def _exchange(text: str, pairs: list[tuple[str, str]]) -> str:
    """Exchange each (x, y) pair of substrings in one pass, so x->y is never undone by y->x."""
    mapping = {}
    for x, y in pairs:
        if x and y and x != y and x not in mapping and y not in mapping:
            mapping[x], mapping[y] = y, x
    if not mapping:
        return text
    pat = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)))
    return pat.sub(lambda m: mapping[m[0]], text)


def _mentions(option_text: str) -> tuple[str, str]:
    """'Heat (1995) (Action|Crime).' -> ('Heat (1995)', '(Action|Crime)'): what a reasoning quotes."""
    t = option_text.rstrip(".").strip()
    m = re.match(r"^(.*?)\s*(\([^()]*\))?$", t)
    title, genres = m.group(1), m.group(2) or ""
    if genres and re.fullmatch(r"\(\d{4}\)", genres):  # '(1995)' is the year, not genres
        title, genres = t, ""
    return title, genres


def reasoning_for(ex: Example, letter: str) -> str:
    """Reasoning text arguing for option `letter`.

    Uses the record's `reasons` when the builder supplied them; otherwise derives it from the
    record's own reasoning by exchanging the two options' titles, genre lists and letters.
    """
    if ex.reasons and ex.reasons.get(letter):
        return ex.reasons[letter]
    if letter == ex.label:
        return ex.reasoning
    (ta, ga), (tb, gb) = _mentions(ex.option_a), _mentions(ex.option_b)
    return _swap_letter_refs(_exchange(ex.reasoning, [(ta, tb), (ga, gb)]))


def chosen_output(ex: Example) -> str:
    return answer_text(ex.label, reasoning_for(ex, ex.label))


def rejected_output(ex: Example) -> str:
    """The answer naming the wrong option, with reasoning that argues for that option."""
    return answer_text(ex.other, reasoning_for(ex, ex.other))


def swap(ex: Example) -> Example:
    """The same example with the two options exchanged and the label flipped."""
    a_line = _OPTION_RE["A"].search(ex.input)
    b_line = _OPTION_RE["B"].search(ex.input)
    spans = sorted([(a_line.start(1), a_line.end(1), ex.option_b), (b_line.start(1), b_line.end(1), ex.option_a)])
    new_input = ex.input
    for start, end, text in reversed(spans):
        new_input = new_input[:start] + text + new_input[end:]
    label = ex.other
    reasoning = _swap_letter_refs(ex.reasoning)
    reasons = {"A": ex.reasons["B"], "B": ex.reasons["A"]} if ex.reasons else None
    extra = dict(ex.extra)
    if "option_a" in extra and "option_b" in extra:
        extra["option_a"], extra["option_b"] = ex.extra["option_b"], ex.extra["option_a"]
    return replace(ex, input=new_input, output=answer_text(label, reasoning), label=label,
                   option_a=ex.option_b, option_b=ex.option_a, reasoning=reasoning,
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
    opts = {}
    for L in LETTERS:
        found = _OPTION_RE[L].findall(obj["input"])
        if len(found) != 1:
            what = "no" if not found else "more than one"
            raise UserError(f"{where}: field 'input' has {what} parseable 'Option {L}: ...' line")
        opts[L] = found[0]
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
    if reasons is not None and not (isinstance(reasons, dict) and set(reasons) == {"A", "B"}):
        raise UserError(f"{where}: field 'reasons' must map both 'A' and 'B' to a text")
    known = {"instruction", "input", "output", "id", "user_id", "label", "reasons"}
    return Example(
        instruction=obj["instruction"], input=obj["input"], output=obj["output"], label=label,
        option_a=opts["A"], option_b=opts["B"], reasoning=reasoning,
        pair_id=str(obj.get("id", default_id)),
        user_id=None if obj.get("user_id") is None else str(obj["user_id"]),
        source=where, reasons=reasons, extra={k: v for k, v in obj.items() if k not in known},
    )


def load_examples(path: str | Path, limit: int | None = None, max_errors: int = 20) -> list[Example]:
    """Load and validate every line of a JSONL file.

    All invalid lines (up to `max_errors`) are reported together as 'FILE:LINE: problem'.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    examples, errors = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                examples.append(parse_record(obj, where, f"{path.name}:{n}"))
            except UserError as e:
                errors.append(str(e))
                if len(errors) >= max_errors:
                    errors.append(f"{path}: stopped after {max_errors} errors")
                    break
    if errors:
        raise UserError("invalid data file:\n  " + "\n  ".join(errors))
    if not examples:
        raise UserError(f"{path}: no examples (the file is empty)")
    ids = [e.pair_id for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"{path}: duplicate example id {dup!r}")
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
# Position balance

def balance(examples) -> dict:
    n_a = sum(e.label == "A" for e in examples)
    n = len(examples)
    return {"n": n, "A": n_a, "B": n - n_a, "a_fraction": n_a / n if n else 0.0}


def balance_warning(examples, name: str) -> str | None:
    """A loud message when one position holds more than IMBALANCE_WARN of the answers."""
    b = balance(examples)
    top = max(b["A"], b["B"])
    if b["n"] and top / b["n"] > IMBALANCE_WARN:
        letter = "A" if b["A"] >= b["B"] else "B"
        return (f"WARNING: {name}: Option {letter} is the answer in {top}/{b['n']} examples "
                f"({100 * top / b['n']:.1f}%). A model can score well by always answering {letter}; "
                f"rebalance with: python data/check_dataset.py {name} --rebalance OUT.jsonl")
    return None


def rebalance(examples: list[Example]) -> list[Example]:
    """Swap options in the fewest examples needed so that A holds exactly half (±1) of the answers.

    Deterministic: among the over-represented letter, every other example (by position in the
    file) is swapped until the counts meet.
    """
    b = balance(examples)
    major = "A" if b["A"] > b["B"] else "B"
    excess = (abs(b["A"] - b["B"])) // 2
    idx = [i for i, e in enumerate(examples) if e.label == major]
    # spread the swaps over the file instead of swapping one contiguous block
    step = len(idx) / excess if excess else 0
    chosen = {idx[int(k * step)] for k in range(excess)}
    return [swap(e) if i in chosen else e for i, e in enumerate(examples)]


def random_balanced_positions(examples: list[Example], rng) -> list[Example]:
    """The examples in a random order, with the correct answer in position A for exactly half (±1)
    of every prefix of the result.

    Scripts take the first N rows of a file (data.max_*_examples): a file balanced only as a whole
    can be 65% one letter in its first 64 rows, enough for a short run to learn the position.
    Alternating letters over a shuffled order keeps every prefix balanced; the alternation itself
    is invisible to the model, which sees one example at a time (and the trainer reshuffles).
    """
    order = list(examples)
    rng.shuffle(order)
    first = rng.choice(LETTERS)
    letters = [first if i % 2 == 0 else other_letter(first) for i in range(len(order))]
    return [e if e.label == L else swap(e) for e, L in zip(order, letters)]


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
    return [{"prompt": format_prompt(e, fmt, tokenizer), "completion": chosen_output(e)} for e in examples]


def to_dpo_rows(examples, fmt: str = "alpaca", tokenizer=None) -> list[dict]:
    """prompt/chosen/rejected rows. A rejected equal to its chosen is an error, not a warning."""
    rows = []
    for e in examples:
        chosen, rejected = chosen_output(e), rejected_output(e)
        if chosen == rejected:
            raise UserError(f"{e.source}: rejected answer equals chosen answer; DPO would learn nothing")
        rows.append({"prompt": format_prompt(e, fmt, tokenizer), "chosen": chosen, "rejected": rejected})
    return rows
