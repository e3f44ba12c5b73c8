"""The files an evaluation and a run over seeds leave: results.json, ranking.csv, the plots and report.md
of an evaluation folder (in one call), and aggregate.json/.md over seeds.

results.json's layout: {"models": {name: analysis.metrics.model_metrics}, one key per comparison of
dporec.arms (analysis.comparison.compare, or None), "<arm>_arm" for an arm matched to another stage
(runs.provenance.matching), "baselines" (evaluation.baselines), "ranking" (evaluation.candidate_ranking),
"personal" (the same models and comparisons on the personal task's pairs), "reasoning" (every model's
generated answers judged: analysis.reasoning), "stability", "meta"}. JSON
files go through a temporary name, so a half-written one never looks finished.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from dporec import arms
from dporec.analysis.rank_metrics import METRICS as RANKING_METRICS
from dporec.files import jsonable, write_json
from dporec.report import plots
from dporec.report.markdown import aggregate_markdown, write_report_md
from dporec.report.predictions import PERSONAL_FILE, write_generations, write_predictions

RESULTS = arms.EVAL.marker  # results.json, written last


def write_results(eval_dir, results: dict) -> Path:
    """Write results.json into eval_dir and return its path."""
    return write_json(Path(eval_dir) / RESULTS, results)


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


def write_evaluation(eval_dir, results: dict, rows_by_model: dict, predictions: bool = True,
                     personal_rows: dict | None = None, generations: dict | None = None) -> Path:
    """Every evaluation file; results.json last (its presence marks a finished evaluation). personal_rows:
    the personal task's prediction rows, written to predictions_personal.csv; generations: the judged
    generation rows by model (analysis.reasoning), written to generations.csv."""
    if predictions:
        write_predictions(eval_dir, [r for rows in rows_by_model.values() for r in rows])
        if personal_rows:
            write_predictions(eval_dir, [r for rows in personal_rows.values() for r in rows], PERSONAL_FILE)
    if generations:
        write_generations(eval_dir, [r for rows in generations.values() for r in rows])
    plots.plot_accuracy(eval_dir, results)
    plots.plot_confidence(eval_dir, rows_by_model)
    if results.get("ranking"):
        plots.plot_ranking(eval_dir, results["ranking"])
    write_report_md(eval_dir, results)
    for c in arms.comparisons()[1:]:  # every arm's comparison also in a file of its own
        if results.get(c.key):
            write_json(Path(eval_dir) / f"{c.key}.json", results[c.key])
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
