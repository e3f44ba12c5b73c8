"""Reporting: results.json, predictions.csv, accuracy/confidence plots, report.md and console text.

The results dict (dporec/analysis.build_results) is laid out as

    {"models": {name: metrics.model_metrics(rows)},
     "comparison": stats.compare(rows_sft, rows_dpo) or None (when "sft" or "dpo" is missing),
     "comparison_control": stats.compare(rows_sft_control, rows_dpo) or None,
     "control_arm": analysis.control_matching(...) or None,
     "baselines": optional, dporec.baselines.add_to_results: {rule: {"label", "available", "accuracy",
                  "n_pairs", "ci", "reason" when not available}},
     "meta": {...}}   # free-form: test file, n_pairs, config path, timings

The plots are drawn by dporec/plots.py.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from . import UserError, baselines, metrics, plots, stats
from .plots import plot_accuracy, plot_confidence

# predictions.csv columns, in this order; any other keys the scorer adds follow, sorted by name.
PREDICTION_COLUMNS = (
    "model", "pair_id", "user_id", "order", "label", "option_a_id", "option_b_id",
    "logp_a", "logp_b", "choice", "correct",
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


def write_results(eval_dir, results: dict) -> Path:
    """Write results.json (indent 2) into eval_dir and return its path."""
    path = Path(eval_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


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


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


_pct, _ci = stats.pct, stats.ci_text


def _md_table(models: dict, block: str | None) -> list[str]:
    lines = ["| Model | Pairs | Two-order accuracy [95% CI] | Original | Swapped | Both orders | "
             "Consistency | First-option rate | Mean margin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        b = m if block is None else m[block]
        lines.append(f"| {name} | {m['n_pairs']} | {_pct(b['accuracy'])} {_ci(b['accuracy_ci95'])} | "
                     f"{_pct(b['accuracy_original_order'])} | {_pct(b['accuracy_swapped_order'])} | "
                     f"{_pct(b['accuracy_both_orders'])} | {_pct(b['consistency'])} | "
                     f"{_pct(b['first_option_rate'])} | {b['confidence']['mean_margin']:+.2f} |")
    return lines


# ---- comparisons

def _sentence(comparison: dict) -> str:
    return comparison.get("sentence") or stats.verdict_sentence(comparison)


def _comparison_lines(c: dict) -> list[str]:
    a, b = c.get("names") or ("SFT", "DPO")
    sg = stats._signed
    lo, hi = c["ci95"]
    runs = c.get("n_runs", 1)
    lines = [
        f"- Test pairs: {c['n_pairs']:,} from {c['n_users']:,} users, each scored in both option orders"
        + (f"; each pair's score averaged over {runs} seeds first" if runs > 1 else "")
        + ("; no user ids, so every pair is its own cluster" if c.get("clustering") == stats.BY_PAIRS else ""),
        f"- Two-order accuracy: {a} {_pct(c['sft_accuracy'])}, {b} {_pct(c['dpo_accuracy'])}; "
        f"difference ({b} \u2212 {a}) {sg(100 * c['difference'])} points; {b} scores higher on "
        f"{c['pairs_dpo_higher']} pairs, {a} on {c['pairs_sft_higher']}",
        f"- Paired test: {c['test']}: {stats.format_p(c['p_value'])}",
        f"- 95% CI of the difference: {sg(100 * lo)} to {sg(100 * hi)} points (excludes 0 exactly when "
        f"p < {c['alpha']:g}); {c['bootstrap']}: {sg(100 * c['bootstrap_ci95'][0])} to "
        f"{sg(100 * c['bootstrap_ci95'][1])} points",
    ]
    mc = c.get("mcnemar_both_orders")
    if mc:
        lines.append(f"- Secondary, a different quantity: exact McNemar test on strict right-in-both-orders "
                     f"correctness: only {b} right in both on {mc['dpo_only']} pairs, only {a} on "
                     f"{mc['sft_only']}; {stats.format_p(mc['p'])}")
    need, need2 = c["min_pairs_for_power80"], c["min_pairs_for_2_points"]
    lines.append(f"- Test size for {100 * c['power']:g}% power, from the per-pair differences (sd "
                 f"{c['sd_pair_difference']:.3f}) and the design effect of clustering ({c['design_effect']:.2f}): "
                 + ("n/a for this difference" if need is None else f"{need:,} pairs for a difference this size")
                 + ("" if need2 is None else f", {need2:,} pairs for 2 points"))
    return lines


def _control_md(results: dict) -> list[str]:
    c = results.get("comparison_control")
    if not c:
        return []
    lines = ["", "## DPO vs the compute-matched SFT control", "",
             "SFT continued from the SFT adapter for as many optimizer steps as DPO took: tells \"DPO beats SFT\" "
             "apart from \"more training beats less\".", ""] + _comparison_lines(c) + ["", f"**{_sentence(c)}**"]
    match = results.get("control_arm")
    if match:
        lines += ["", "| What | DPO | SFT control | Matched |", "|---|---:|---:|---|"]
        lines += [f"| {i['what']} | {i['dpo']} | {i['control']} | {'yes' if i['matched'] else 'NO'} |"
                  for i in match["items"]]
        lines += ["", f"Not matchable: {match['not_matchable']}."]
    else:
        lines += ["", "What the control matches is unknown: its run folder or the DPO run folder (config.yaml, "
                      "metrics.json) is not there."]
    return lines


def write_report_md(eval_dir, results: dict) -> Path:
    """report.md: model table, baselines, SFT-vs-DPO comparison, verdict, control arm, run facts."""
    models = results["models"]
    how = metrics.bootstrap_label(next(iter(models.values())).get("clustering") or metrics.BY_USERS)
    lines = ["# Evaluation: DPO vs SFT ranking adherence", ""]
    lines += _md_table(models, None)
    lines += ["", f"Accuracy averages both option orders of every test pair; intervals: percentile {how} of the "
              "per-pair scores. Consistency: the same movie is chosen in both orders. Margin: log p(correct "
              "answer) \u2212 log p(wrong answer) of the decision sentence, in nats. Exact ties count as wrong."]
    if all(m.get("full_answer") for m in models.values()):
        lines += ["", "## Full-answer scores (decision + reasoning + EOS)", ""]
        lines += _md_table(models, "full_answer")
    gen = {name: m["generation"] for name, m in models.items() if m.get("generation")}
    if gen:
        lines += ["", "## Generation (parsed free text; invalid outputs count as wrong)", "",
                  "| Model | Valid outputs | Accuracy [95% CI] | Consistency | First-option rate |",
                  "|---|---:|---:|---:|---:|"]
        for name, g in gen.items():
            lines.append(f"| {name} | {_pct(g['valid_rate'])} | {_pct(g['accuracy'])} {_ci(g['accuracy_ci95'])} | "
                         f"{_pct(g['consistency'])} | {_pct(g['first_option_rate'])} |")
    lines += ["", *baselines.markdown(results)] if results.get("baselines") else []
    if results.get("ranking"):
        from .ranking import table_lines
        lines += ["", "## Ranking adherence over N candidates per user", "", "```", *table_lines(results["ranking"]),
                  "```", "", "Every pair of a user's candidates asked in both option orders; the pairwise "
                  "preferences ranked by Copeland and compared with the user's ratings (dporec/ranking.py). "
                  "Intervals: percentile bootstrap over users. Plot: ranking.png."]
    lines += ["", "## SFT vs DPO", ""]
    c = results.get("comparison")
    if c:
        lines += _comparison_lines(c)
        lines += ["", f"**{_sentence(c)}**", "",
                  "The verdict label compares the point estimates with the 2-point threshold; read it "
                  "together with the confidence interval and the p-value, which test that same difference."]
    else:
        lines.append("No comparison: it needs predictions from both an `sft` and a `dpo` model.")
    lines += _control_md(results)
    meta = {k: v for k, v in (results.get("meta") or {}).items() if isinstance(v, (str, int, float, bool))}
    if meta:
        lines += ["", "## Run", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    path = Path(eval_dir) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_evaluation(eval_dir, results: dict, rows_by_model: dict, predictions: bool = True) -> Path:
    """Every evaluation file; results.json last (its presence marks a finished evaluation)."""
    if predictions:
        write_predictions(eval_dir, [r for rows in rows_by_model.values() for r in rows])
    plot_accuracy(eval_dir, results)
    plot_confidence(eval_dir, rows_by_model)
    if results.get("ranking"):
        plots.plot_ranking(eval_dir, results["ranking"])
    write_report_md(eval_dir, results)
    if results.get("comparison_control"):
        path = Path(eval_dir) / "comparison_control.json"
        path.write_text(json.dumps(jsonable(results["comparison_control"]), indent=2) + "\n", encoding="utf-8")
    return write_results(eval_dir, results)


def format_table(results: dict) -> str:
    """Fixed-width plain-text table of the per-model metrics (and baselines), for the console."""
    header = ("model", "pairs", "acc", "95% CI", "orig", "swap", "both", "consist", "first-A", "margin")
    rows = []
    for name, m in results["models"].items():
        rows.append((name, str(m["n_pairs"]), _pct(m["accuracy"]), _ci(m["accuracy_ci95"]),
                     _pct(m["accuracy_original_order"]), _pct(m["accuracy_swapped_order"]),
                     _pct(m["accuracy_both_orders"]), _pct(m["consistency"]),
                     _pct(m["first_option_rate"]), f"{m['confidence']['mean_margin']:+.2f}"))
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    ranking = []
    if results.get("ranking"):
        from .ranking import table_lines
        ranking = ["", *table_lines(results["ranking"])]
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
                     + baselines.table_lines(results) + ranking)


def format_verdict(results: dict) -> str:
    """Console block with the SFT-vs-DPO comparison, the verdict sentence, the baseline clause and
    the control arm's sentence."""
    c = results.get("comparison")
    rule = "=" * 72
    if not c:
        return "\n".join([rule, "No SFT-vs-DPO comparison (needs both 'sft' and 'dpo' predictions).", rule])
    lines = [rule, "SFT vs DPO"] + _comparison_lines(c) + ["", _sentence(c)]
    if results.get("baselines"):
        lines += [baselines.verdict_clause(results)]
    cc = results.get("comparison_control")
    if cc:
        lines += ["", "Compute-matched control (SFT continued for as many steps as DPO) vs DPO:", _sentence(cc)]
        match = results.get("control_arm")
        if match:
            lines.append(f"Matched: {', '.join(match['matched'])}"
                         + (f"; NOT matched: {', '.join(match['not_matched'])}" if match["not_matched"] else ""))
    return "\n".join(lines + [rule])


# ---- seeds (analysis.aggregate_seeds)

def _pm(s: dict, pct: bool) -> str:
    if s["mean"] is None:
        return "n/a"
    scale, unit = (100, "%") if pct else (1, "")
    sd = "" if s["sd"] is None else f" ± {scale * s['sd']:.1f}"
    return f"{scale * s['mean']:.1f}{sd}{unit}" if pct else f"{s['mean']:+.2f}{sd}"


def write_aggregate(out_dir, agg: dict) -> dict:
    """aggregate.json + aggregate.md (analysis.aggregate_seeds) in out_dir; returns the JSON content.

    Identical content is not rewritten: a fully skipped rerun must not look like it produced something.
    """
    agg = jsonable(agg)
    for name, text in (("aggregate.json", json.dumps(agg, indent=2)), ("aggregate.md", aggregate_markdown(agg))):
        path = Path(out_dir) / name
        if not (path.is_file() and path.read_text(encoding="utf-8") == text + "\n"):
            path.write_text(text + "\n", encoding="utf-8")
    return agg


def aggregate_markdown(agg: dict) -> str:
    keys = list(next(iter(agg["metrics"].values())))
    lines = [f"# DPO vs SFT over seeds {', '.join(map(str, agg['seeds']))}", "",
             "Mean ± sample sd over seeds (training seed; same test pairs).", "",
             "| Model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for m, ms in agg["metrics"].items():
        lines.append(f"| {m} | " + " | ".join(_pm(ms[k], k != "mean_margin") for k in keys) + " |")
    lines += ["", "## Per seed", "", "| Seed | SFT | DPO | DPO − SFT [95% CI] | Paired test p | Verdict |",
              "|---|---:|---:|---:|---:|---|"]
    for s, r in agg["per_seed"].items():
        c = r["comparison"]
        if c:
            p = "n/a" if c.get("p_value") is None else stats.format_p(c["p_value"])
            lines.append(f"| {s} | {100 * c['sft_accuracy']:.1f}% | {100 * c['dpo_accuracy']:.1f}% | "
                         f"{100 * c['difference']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] | "
                         f"{p} | {c['verdict']} |")
    for key, title in (("pooled", "Pooled over seeds: DPO vs SFT"),
                       ("pooled_control", "Pooled over seeds: DPO vs the compute-matched SFT control")):
        if agg.get(key):
            lines += ["", f"## {title}", ""] + _comparison_lines(agg[key]) + ["", f"**{_sentence(agg[key])}**"]
    lines += ["", f"Note: {agg['note']}."]
    return "\n".join(lines)
