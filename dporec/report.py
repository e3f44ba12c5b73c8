"""Reporting: results.json, predictions.csv, accuracy/confidence plots, report.md and console text.

The results dict (built by the evaluation script) is laid out as

    {"models": {name: stats.model_metrics(rows)},
     "comparison": stats.compare(rows_sft, rows_dpo) or None (when "sft" or "dpo" is missing),
     "meta": {...}}   # free-form: test file, n_pairs, config path, timings

Plots use matplotlib's Agg canvas directly (no pyplot), so they work headless and never touch the
caller's pyplot state.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from . import baselines, stats

# predictions.csv columns, in this order; any other keys the scorer adds follow, sorted by name.
PREDICTION_COLUMNS = (
    "model", "pair_id", "user_id", "order", "label", "option_a_id", "option_b_id",
    "logp_a", "logp_b", "choice", "correct",
    "logp_a_full", "logp_b_full", "choice_full", "correct_full",
    "parsed", "generated",
)
_MODEL_COLORS = {"sft": "#4C72B0", "dpo": "#DD8452"}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def _jsonable(obj):
    """Tuples -> lists, numpy scalars -> Python, NaN/inf -> None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
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
    path.write_text(json.dumps(_jsonable(results), indent=2, allow_nan=False) + "\n", encoding="utf-8")
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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

def read_predictions(path: Path) -> dict[str, list[dict]]:
    """predictions.csv (write_predictions) back into typed prediction rows, by model.

    Empty cells were None or absent fields: they are dropped again, except 'parsed' where the
    file has generations (an invalid generated answer is parsed=None, not a missing field).
    """
    with open(path, newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    has_generation = any(r.get("generated") for r in raw)
    by_model: dict[str, list[dict]] = {}
    for r in raw:
        row = {}
        for k, v in r.items():
            if v == "":
                if k == "parsed" and has_generation:
                    row[k] = None
                continue
            if k.startswith("logp_"):
                row[k] = float(v)
            elif k in ("correct", "correct_full"):
                row[k] = v == "True"
            else:
                row[k] = v
        by_model.setdefault(row["model"], []).append(row)
    return by_model


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy(eval_dir, results: dict) -> Path:
    """accuracy.png: per model, bars for original order, swapped order and two-order average, with
    Wilson 95% intervals."""
    models = results["models"]
    if not models:
        raise ValueError("plot_accuracy: results has no models")
    bars = [("accuracy_original_order", "original order", 0.45),
            ("accuracy_swapped_order", "swapped order", 0.70),
            ("accuracy", "two-order average", 1.0)]
    fig = _figure(1.8 + 1.6 * len(models), 4.0)
    ax = fig.subplots()
    width = 0.26
    x = np.arange(len(models))
    for i, (key, label, alpha) in enumerate(bars):
        vals = np.array([m[key] for m in models.values()])
        cis = np.array([m[key + "_ci95"] for m in models.values()], dtype=float)
        yerr = np.vstack([vals - cis[:, 0], cis[:, 1] - vals])
        ax.bar(x + (i - 1) * width, vals, width, yerr=yerr, capsize=3, label=label,
               color="#4C72B0", alpha=alpha, edgecolor="black", linewidth=0.5)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xticks(x, [f"{name}\n(n={m['n_pairs']})" for name, m in models.items()])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (Wilson 95% CI)")
    ax.set_title("Pairwise ranking accuracy by option order")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    path = Path(eval_dir) / "accuracy.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_confidence(eval_dir, rows_by_model: dict) -> Path:
    """confidence.png: histogram per model of decision margins logp[correct] - logp[wrong]
    (right of 0 = correct decision)."""
    if not rows_by_model:
        raise ValueError("plot_confidence: no models")
    m_by_model = {name: stats.margins(rows) for name, rows in rows_by_model.items()}
    everything = np.concatenate(list(m_by_model.values()))
    finite = everything[np.isfinite(everything)]
    # Central 99% sets the range so one extreme margin cannot squash the histogram; the clipped
    # tails land in the end bins.
    lo, hi = (float(np.quantile(finite, 0.005)), float(np.quantile(finite, 0.995))) if finite.size else (-1.0, 1.0)
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    bins = np.linspace(lo, hi, 41)
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    for i, (name, m) in enumerate(m_by_model.items()):
        color = _MODEL_COLORS.get(name, f"C{i}")
        ax.hist(np.clip(m[np.isfinite(m)], lo, hi), bins=bins, alpha=0.5, color=color,
                label=f"{name} (median {np.median(m):+.2f})", edgecolor="black", linewidth=0.3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("margin: log p(correct) \u2212 log p(wrong)  [decision score, nats]")
    ax.set_ylabel("decisions (both orders)")
    ax.set_title("Decision confidence")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(eval_dir) / "confidence.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


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


def _sentence(comparison: dict) -> str:
    return comparison.get("sentence") or stats.verdict_sentence(comparison)


def _comparison_lines(c: dict) -> list[str]:
    lo, hi = c["ci95"]
    need = c["min_pairs_for_power80"]
    return [
        f"- Test pairs: {c['n_pairs']:,} from {c['n_users']:,} users, each scored in both option orders",
        f"- Two-order accuracy: SFT {_pct(c['sft_accuracy'])}, DPO {_pct(c['dpo_accuracy'])}; "
        f"difference (DPO \u2212 SFT) {stats._signed(100 * c['difference'])} points",
        f"- 95% CI of the difference: {stats._signed(100 * lo)} to {stats._signed(100 * hi)} points "
        f"(paired bootstrap resampling users, {c['n_boot']:,} resamples, percentile)",
        f"- Exact McNemar (sign) test on pairs whose two-order scores differ: DPO better on "
        f"{c['n_discordant']['dpo_better']}, SFT better on {c['n_discordant']['sft_better']}; "
        f"{stats.format_p(c['mcnemar_p'])}",
        "- Test pairs for 80% power at this difference and discordance: "
        + ("n/a (no difference)" if need is None else f"{need:,}"),
    ]


def write_report_md(eval_dir, results: dict) -> Path:
    """report.md: model table, SFT-vs-DPO comparison and verdict sentence."""
    models = results["models"]
    lines = ["# Evaluation: DPO vs SFT ranking adherence", ""]
    lines += _md_table(models, None)
    lines += ["", "Accuracy averages both option orders of every test pair (2 decisions per pair); the Wilson "
              "interval treats those decisions as independent, so it is slightly too narrow. "
              "Consistency: the same movie is chosen in both orders. Margin: log p(correct answer) "
              "\u2212 log p(wrong answer) of the decision sentence, in nats. Exact ties count as wrong."]
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
    lines += ["", "## SFT vs DPO", ""]
    c = results.get("comparison")
    if c:
        lines += _comparison_lines(c)
        lines += ["", f"**{_sentence(c)}**", "",
                  "The verdict label compares the point estimates with the 2-point threshold; read it "
                  "together with the confidence interval and the p-value."]
    else:
        lines.append("No comparison: it needs predictions from both an `sft` and a `dpo` model.")
    meta = {k: v for k, v in (results.get("meta") or {}).items() if isinstance(v, (str, int, float, bool))}
    if meta:
        lines += ["", "## Run", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    path = Path(eval_dir) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def format_table(results: dict) -> str:
    """Fixed-width plain-text table of the per-model metrics, for the console."""
    header = ("model", "pairs", "acc", "95% CI", "orig", "swap", "both", "consist", "first-A", "margin")
    rows = []
    for name, m in results["models"].items():
        rows.append((name, str(m["n_pairs"]), _pct(m["accuracy"]), _ci(m["accuracy_ci95"]),
                     _pct(m["accuracy_original_order"]), _pct(m["accuracy_swapped_order"]),
                     _pct(m["accuracy_both_orders"]), _pct(m["consistency"]),
                     _pct(m["first_option_rate"]), f"{m['confidence']['mean_margin']:+.2f}"))
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
                     + baselines.table_lines(results))


def format_verdict(results: dict) -> str:
    """Console block with the SFT-vs-DPO comparison and the verdict sentence."""
    c = results.get("comparison")
    rule = "=" * 72
    if not c:
        return "\n".join([rule, "No SFT-vs-DPO comparison (needs both 'sft' and 'dpo' predictions).", rule])
    clause = [baselines.verdict_clause(results)] if results.get("baselines") else []
    return "\n".join([rule, "SFT vs DPO"] + _comparison_lines(c) + ["", _sentence(c)] + clause + [rule])
