"""predictions.csv, the evaluation's contract with every later analysis: one row per test pair, option
order and model (the prediction rows of dporec.analysis.metrics), written and read back by any version."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from dporec import UserError, broken_link

FILE = "predictions.csv"  # in the evaluation folder
PERSONAL_FILE = "predictions_personal.csv"  # the personal task's pairs (eval.personal_task), beside it

# predictions.csv columns, in this order; any other keys the scorer adds follow, sorted by name.
PREDICTION_COLUMNS = (
    "model", "pair_id", "user_id", "order", "label", "option_a_id", "option_b_id",
    "option_a_title", "option_b_title", "logp_a", "logp_b", "choice", "correct",
    "logp_a_full", "logp_b_full", "choice_full", "correct_full",
    "parsed", "generated",
)


def write_predictions(eval_dir, rows, name: str = FILE) -> Path:
    """Write predictions.csv (or `name`): one row per (test pair, order, model), columns
    PREDICTION_COLUMNS then any extra keys sorted by name; missing values are empty cells."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(PREDICTION_COLUMNS))
    columns = list(PREDICTION_COLUMNS) + extra
    path = Path(eval_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return path


def _read_csv(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """([(line number, row)], columns) of a CSV file the evaluation wrote; what keeps it from being read
    (missing, a broken link, not UTF-8, malformed quoting) as a UserError naming the file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return [(reader.line_num, r) for r in reader], list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(broken_link(path) or f"cannot read {path}: {e}") from None


def read_predictions(path) -> dict[str, list[dict]]:
    """predictions.csv (write_predictions, this or any earlier version) back into typed prediction
    rows, by model, in file order.

    Empty cells were None or absent fields: they are dropped again, except 'parsed' where the file
    has generations (an invalid generated answer is parsed=None, not a missing field). A malformed
    file raises UserError naming FILE:LINE and the column.
    """
    path = Path(path)
    raw, columns = _read_csv(path)
    missing = [c for c in ("model", "pair_id", "order", "label", "logp_a", "logp_b") if c not in columns]
    if missing:
        raise UserError(f"{path}: not a predictions.csv: no column(s) {missing} (has {columns[:8]})")
    if not raw:
        raise UserError(f"{path}: no prediction rows")
    has_generation = any(r.get("generated") for _, r in raw)
    by_model: dict[str, list[dict]] = {}
    for line, r in raw:
        if None in r:
            raise UserError(f"{path}:{line}: more cells than the header has columns")
        row = {}
        for k, v in r.items():
            if v is None or v == "":
                if k == "parsed" and has_generation:
                    row[k] = None
                continue
            if k.startswith("logp_"):
                try:
                    row[k] = float(v)
                except ValueError:
                    raise UserError(f"{path}:{line}: column {k!r} must be a number, got {v!r}") from None
                if not math.isfinite(row[k]):  # would decide every comparison it enters
                    raise UserError(f"{path}:{line}: column {k!r} must be a finite number, got {v!r}")
            elif k in ("correct", "correct_full"):
                if v not in ("True", "False"):
                    raise UserError(f"{path}:{line}: column {k!r} must be True or False, got {v!r}")
                row[k] = v == "True"
            else:
                row[k] = v
        for k in ("model", "pair_id", "order", "label", "logp_a", "logp_b"):
            if k not in row:
                raise UserError(f"{path}:{line}: column {k!r} is empty")
        by_model.setdefault(row["model"], []).append(row)
    return by_model


# ---------------------------------------------------------------------------------------------
# generations.csv: every generated answer and its judgement (analysis.reasoning)

GENERATIONS_FILE = "generations.csv"  # beside predictions.csv
GENERATION_COLUMNS = (
    "model", "pair_id", "user_id", "order", "label", "parsed", "kind", "coherent", "argues_for",
    "right_and_truthful", "all_claims_true", "claims", "false_claims", "unchecked_claims", "misquoted_titles",
    "wording",
    "generated", "claims_detail", "reference", "input", "history",
)
_GENERATION_NEEDS = ("model", "pair_id", "order", "label", "input", "generated")


def write_generations(eval_dir, rows) -> Path:
    """generations.csv: one row per (judged test pair, order, model), the judgement first, then the answer,
    its claims (JSON), the data's own answer and what was asked (so re-judging needs no data files)."""
    path = Path(eval_dir) / GENERATIONS_FILE
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=GENERATION_COLUMNS, restval="", extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else json.dumps(v, ensure_ascii=False)
                                 if k == "claims_detail" else v) for k, v in r.items()})
    return path


def read_generations(path) -> dict[str, list[dict]]:
    """generations.csv back into generation rows by model (text columns only: the judgement is made anew
    by analysis.reasoning.judge_rows). A malformed file raises UserError naming FILE:LINE and the column."""
    path = Path(path)
    raw, columns = _read_csv(path)
    missing = [c for c in _GENERATION_NEEDS if c not in columns]
    if missing:
        raise UserError(f"{path}: not a generations.csv: no column(s) {missing}")
    by_model: dict[str, list[dict]] = {}
    for line, r in raw:
        if None in r:
            raise UserError(f"{path}:{line}: more cells than the header has columns")
        for k in ("model", "pair_id", "order", "label", "input"):
            if not r.get(k):
                raise UserError(f"{path}:{line}: column {k!r} is empty")
        keep = ("model", "pair_id", "user_id", "order", "label", "input", "history", "generated", "reference")
        by_model.setdefault(r["model"], []).append({k: r.get(k) or "" for k in keep})
    return by_model
