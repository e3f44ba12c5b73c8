"""Pair records: one JSON object per line in the thesis format, loaded and checked, swapped, and turned
into the prompt/answer rows the trainers read.

A record has `instruction`, `input` (a history and two options, dporec.data.task) and `output` ("The
better recommendation is Option A. Reasoning: ..."). Builders add structured fields the scripts may
use: `id`, `user_id`, `label`, `history`, `option_a`, `option_b` (dicts with item_id/title/year/
genres), `negative_kind` and `reasons` ({"A": ..., "B": ...}: the reasoning arguing for each
option); on-policy pairs add `rejected`, the model's own losing answer (`output` is its winning one).
A record without them (the thesis's file) works everywhere; its pair id is "<file>:<line>".
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path

from dporec import UserError, files, not_found
from dporec.data import task

REJECTED = "rejected"  # an optional field: the record's own rejected answer (on-policy pairs)


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

    def option_record(self, letter: str) -> dict:
        """The builder's structured field of the option in position `letter` ({"item_id", "title", "year",
        "genres"}), or {} for a record without one (the thesis's file): the one way every reader of an
        option (scoring's row identity, the baselines) finds it."""
        info = self.extra.get("option_a" if letter == "A" else "option_b")
        return info if isinstance(info, dict) else {}

    @property
    def other(self) -> str:
        return task.other_letter(self.label)


def layout(ex: Example) -> str:
    return task.layout(ex.input)


def reasoning_for(ex: Example, letter: str) -> str:
    """Reasoning text arguing for option `letter` ("" for both letters when it cannot be derived).

    From the record's `reasons` when the builder supplied them; for the thesis's reasoning template,
    its mirror image; any other free text cannot be rewritten to argue for the other option safely,
    so both answers are the decision sentence alone (DPO then contrasts the letters only; SFT still
    trains on the record's own answer, see sft_output).
    """
    if ex.reasons and ex.reasons.get(letter):
        return ex.reasons[letter]
    mirrored = task.mirror_thesis_reasoning(ex.reasoning, ex.option(ex.label), ex.option(ex.other), ex.label)
    if mirrored is None:
        return ""
    return ex.reasoning if letter == ex.label else mirrored


def reasoning_is_mirrored(ex: Example) -> bool:
    """Whether the rejected answer carries reasoning (reasons or the thesis template) or is decision-only."""
    return bool(reasoning_for(ex, ex.other))


def sft_output(ex: Example) -> str:
    """What SFT trains on: the record's own answer (the chosen reasoning when `reasons` gives it)."""
    return task.answer_text(ex.label, (ex.reasons or {}).get(ex.label) or ex.reasoning)


def chosen_output(ex: Example) -> str:
    """The answer DPO prefers: the record's own when it carries its rejected answer (on-policy pairs,
    both sampled from the model), else the builder's answer for the right option."""
    if REJECTED in ex.extra:
        return ex.output
    return task.answer_text(ex.label, reasoning_for(ex, ex.label))


def rejected_output(ex: Example) -> str:
    """The answer naming the wrong option, with reasoning that argues for that option; or the record's
    own `rejected` answer when it has one."""
    if REJECTED in ex.extra:
        return ex.extra[REJECTED]
    return task.answer_text(ex.other, reasoning_for(ex, ex.other))


def swap(ex: Example) -> Example:
    """The same example with the two option texts exchanged in place and the label flipped.

    The output's letters (the decision and every 'Option X' in the reasoning) flip in one pass, so the
    reasoning keeps arguing for the same movie.
    """
    reasons = {"A": ex.reasons["B"], "B": ex.reasons["A"]} if ex.reasons else None
    extra = dict(ex.extra)
    if "option_a" in extra and "option_b" in extra:
        extra["option_a"], extra["option_b"] = ex.extra["option_b"], ex.extra["option_a"]
    if REJECTED in extra:
        extra[REJECTED] = task.swap_letter_refs(extra[REJECTED])
    return replace(ex, input=task.swap_options(ex.input), output=task.swap_letter_refs(ex.output),
                   label=ex.other, option_a=ex.option_b, option_b=ex.option_a,
                   reasoning=task.swap_letter_refs(ex.reasoning), reasons=reasons, extra=extra)


def orders(ex: Example):
    """(("original", ex), ("swapped", swap(ex))): the two option orders every test pair is scored in."""
    return ((task.ORDERS[0], ex), (task.ORDERS[1], swap(ex)))


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
        try:  # a lone surrogate (\udXXX in the JSON) is valid JSON but no text a tokenizer can take
            obj[key].encode("utf-8")
        except UnicodeEncodeError as e:
            raise UserError(f"{where}: field '{key}' holds a character that is not text "
                            f"({obj[key][e.start:e.end]!r} at position {e.start}): fix the file") from None
    spans = task.option_spans(obj["input"])
    if isinstance(spans, str):
        raise UserError(f"{where}: {spans}")
    opts = {L: obj["input"][a:b] for L, (a, b) in spans.items()}
    if " ".join(opts["A"].split()) == " ".join(opts["B"].split()):  # the same movie, up to whitespace
        raise UserError(f"{where}: field 'input': Option A and Option B are the same movie ({opts['A']!r})")
    answer = task.parse_answer(obj["output"])
    if isinstance(answer, str):
        raise UserError(f"{where}: {answer}")
    label, reasoning = answer
    if "label" in obj and obj["label"] != label:
        raise UserError(f"{where}: field 'label' is {obj['label']!r} but 'output' names Option {label}")
    reasons = obj.get("reasons")
    if reasons is not None and not (isinstance(reasons, dict) and set(reasons) == {"A", "B"}
                                    and all(isinstance(v, str) for v in reasons.values())):
        raise UserError(f"{where}: field 'reasons' must map both 'A' and 'B' to a text")
    rejected = obj.get(REJECTED)
    if rejected is not None:
        if not isinstance(rejected, str):
            raise UserError(f"{where}: field '{REJECTED}' must be a string")
        wrong = task.parse_answer(rejected)
        if isinstance(wrong, str):
            raise UserError(f"{where}: {wrong.replace(repr('output'), repr(REJECTED))}")
        if rejected.strip() == obj["output"].strip():
            raise UserError(f"{where}: field '{REJECTED}' equals 'output'; DPO would learn nothing")
    known = {"instruction", "input", "output", "id", "user_id", "label", "reasons"}
    for key in obj:  # an optional field's typo would be kept as an unknown extra and silently do nothing
        near = difflib.get_close_matches(key, [*known, REJECTED], n=1, cutoff=0.8)
        if key not in known and key != REJECTED and near:
            raise UserError(f"{where}: unknown field {key!r} (did you mean {near[0]!r}?)")
    return Example(
        instruction=obj["instruction"], input=obj["input"], output=obj["output"], label=label,
        option_a=opts["A"], option_b=opts["B"], reasoning=reasoning,
        pair_id=str(obj.get("id", default_id)),
        user_id=None if obj.get("user_id") is None else str(obj["user_id"]),
        source=where, reasons=reasons, extra={k: v for k, v in obj.items() if k not in known},
    )


def _not_pairwise(path: Path, line: int, first: dict, n_lines: int) -> UserError:
    """One message for a file none of whose lines offers two options (e.g. a next-movie file)."""
    next_movie = task.NEXT_MOVIE_RE.search(first["input"] + " " + first["output"])
    kind = ("a next-movie file (like the thesis's movielens_train.jsonl: 'what should they watch next?' -> "
            "'The user should watch ...')" if next_movie else "not a pairwise file")
    return UserError(
        f"{path}: this is {kind}, not pairwise preference data: none of its {n_lines} lines has "
        f"'Option A: ...' and 'Option B: ...' in 'input' (line {line} 'output' starts "
        f"{first['output'][:60]!r}). This project compares two options per line: use the thesis's "
        f"contrastive_rec_train.jsonl (python data/prepare_movielens.py --source thesis:FILE ...) or build "
        f"pairs from ratings with data/prepare_movielens.py --source ml-1m.zip")


def load_examples(path: str | Path, limit: int | None = None, max_errors: int = 20) -> list[Example]:
    """Load and validate every line of a JSONL file (UTF-8, with or without BOM; LF or CRLF).

    All invalid lines (up to `max_errors`) are reported together as 'FILE:LINE: problem'. A file in
    which no line has two options (a next-movie file) gets one message saying so instead.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(not_found(path, "data file"))
    examples, errors, no_options, first, n_lines = [], [], 0, None, 0
    for n, where, obj in files.jsonl_lines(path):
        n_lines += 1
        try:
            if isinstance(obj, UserError):
                raise obj
            if (isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in ("input", "output"))
                    and not task.MARKER_RE.search(obj["input"])):
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
        raise UserError(f"{dup.source}: duplicate example id {dup.pair_id!r} (first at "
                        f"{seen[dup.pair_id].source})")
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


# ---------------------------------------------------------------------------------------------
# Prompts and trainer rows

def format_prompt(ex: Example, fmt: str = "alpaca", tokenizer=None) -> str:
    return task.format_prompt(ex.instruction, ex.input, fmt, tokenizer)


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


def token_lengths(rows: list[dict], tokenizer) -> list[int]:
    """Each row's longest sequence in tokens, as the trainers build it: the prompt with its special
    tokens, the longest answer (completion, chosen or rejected) without them, and the EOS TRL appends."""
    prompts = tokenizer([r["prompt"] for r in rows])["input_ids"]
    longest = [0] * len(rows)
    for key in ("completion", "chosen", "rejected"):
        if rows and key in rows[0]:
            ids = tokenizer([r[key] for r in rows], add_special_tokens=False)["input_ids"]
            longest = [max(m, len(a)) for m, a in zip(longest, ids)]
    return [len(p) + m + 1 for p, m in zip(prompts, longest)]


def check_lengths(examples, rows: list[dict], tokenizer, max_length: int, max_shown: int = 20) -> None:
    """Refuse examples longer than model.max_seq_length, naming their lines.

    TRL would drop or cut them silently: a cut answer trains on half a decision, a dropped one still
    counts in n_train, and a file of only long examples ends in an empty-sampler traceback.
    """
    lengths = token_lengths(rows, tokenizer)
    long = [(e.source, n) for e, n in zip(examples, lengths) if n > max_length]
    if not long:
        return
    shown = [f"{where}: {n} tokens" for where, n in long[:max_shown]]
    if len(long) > max_shown:
        shown.append(f"... {len(long) - max_shown} more")
    raise UserError(f"{len(long)} of {len(rows)} examples are longer than model.max_seq_length={max_length} "
                    f"tokens (the longest: {max(lengths)}); raise model.max_seq_length (more memory per "
                    "step) or shorten their histories:\n  " + "\n  ".join(shown))
