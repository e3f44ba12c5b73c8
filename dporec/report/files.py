"""The files a run leaves: results.json, predictions.csv (written and read back), ranking.csv, the whole
evaluation folder in one call, and aggregate.json/.md over seeds.

results.json's layout: {"models": {name: analysis.metrics.model_metrics}, "comparison" (SFT vs DPO,
analysis.comparison.compare) or None, "comparison_control" or None, "control_arm" (runs.control_matching)
or None, "baselines" (evaluation.baselines), "ranking" (evaluation.ranking), "stability", "meta"}.
JSON files are written to a temporary name and renamed, so a half-written file never looks finished.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from dporec import UserError
from dporec.analysis.ranking import METRICS as RANKING_METRICS
from dporec.report import plots
from dporec.report.markdown import aggregate_markdown, write_report_md

# predictions.csv columns, in this order; any other keys the scorer adds follow, sorted by name.
PREDICTION_COLUMNS = (
    "model", "pair_id", "user_id", "order", "label", "option_a_id", "option_b_id",
    "option_a_title", "option_b_title", "logp_a", "logp_b", "choice", "correct",
    "logp_a_full", "logp_b_full", "choice_full", "correct_full",
    "parsed", "generated",
)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def jsonable(obj):
    """Tuples -> lists, numpy scalars -> Python, NaN/inf -> None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, content) -> Path:
    """JSON (indent 2, NaN as null, anything else unknown as its str) through a temporary file renamed
    into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(jsonable(content), indent=2, allow_nan=False, default=str)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_results(eval_dir, results: dict) -> Path:
    """Write results.json into eval_dir and return its path."""
    return write_json(Path(eval_dir) / "results.json", results)


def write_predictions(eval_dir, rows) -> Path:
    """Write predictions.csv: one row per (test pair, order, model), columns PREDICTION_COLUMNS then
    any extra keys sorted by name; missing values are empty cells."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(PREDICTION_COLUMNS))
    columns = list(PREDICTION_COLUMNS) + extra
    path = Path(eval_dir) / "predictions.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return path


def read_predictions(path) -> dict[str, list[dict]]:
    """predictions.csv (write_predictions, this or any earlier version) back into typed prediction
    rows, by model, in file order.

    Empty cells were None or absent fields: they are dropped again, except 'parsed' where the file
    has generations (an invalid generated answer is parsed=None, not a missing field). A malformed
    file raises UserError naming FILE:LINE and the column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            raw = [(reader.line_num, r) for r in reader]
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
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


def write_ranking_csv(path: Path, rows: dict, base_rows: dict) -> None:
    """ranking.csv: one row per ranker and user with each metric and the ranker's score per candidate
    (in the candidate file's order; higher ranks first)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ranker", "user_id", *RANKING_METRICS, "scores"])
        for name, rs in [*rows.items(), *((k, v) for k, v in base_rows.items() if isinstance(v, list))]:
            for r in rs:
                w.writerow([name, r["user_id"], *(f"{r[m]:.6f}" for m in RANKING_METRICS),
                            " ".join(f"{x:.6g}" for x in r["scores"])])


def write_evaluation(eval_dir, results: dict, rows_by_model: dict, predictions: bool = True) -> Path:
    """Every evaluation file; results.json last (its presence marks a finished evaluation)."""
    if predictions:
        write_predictions(eval_dir, [r for rows in rows_by_model.values() for r in rows])
    plots.plot_accuracy(eval_dir, results)
    plots.plot_confidence(eval_dir, rows_by_model)
    if results.get("ranking"):
        plots.plot_ranking(eval_dir, results["ranking"])
    write_report_md(eval_dir, results)
    if results.get("comparison_control"):
        write_json(Path(eval_dir) / "comparison_control.json", results["comparison_control"])
    return write_results(eval_dir, results)


def write_aggregate(out_dir, agg: dict) -> dict:
    """aggregate.json + aggregate.md (analysis.seeds.aggregate_seeds) in out_dir; returns the JSON content.

    Identical content is not rewritten: a fully skipped rerun must not look like it produced something.
    """
    agg = jsonable(agg)
    texts = {"aggregate.json": json.dumps(agg, indent=2), "aggregate.md": aggregate_markdown(agg)}
    for name, text in texts.items():
        path = Path(out_dir) / name
        if not (path.is_file() and path.read_text(encoding="utf-8") == text + "\n"):
            path.write_text(text + "\n", encoding="utf-8")
    return agg
