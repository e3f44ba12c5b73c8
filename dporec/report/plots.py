"""The run's plots: each training stage's curves, and the evaluation's accuracy per model (both orders,
with intervals), confidence margins and ranking.

matplotlib's Agg canvas is used directly (no pyplot), so they work headless and never touch the
caller's pyplot state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dporec.analysis.metrics import BY_USERS, bootstrap_label, margins
from dporec.analysis.rank_metrics import METRICS as RANKING_METRICS
from dporec.report.numbers import level

_MODEL_COLORS = {"sft": "#4C72B0", "dpo": "#DD8452"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _yerr(vals: np.ndarray, cis) -> np.ndarray:
    """Error-bar lengths below and above each value from its (lo, hi) interval."""
    cis = np.asarray(cis, dtype=float)
    return np.maximum(0, np.vstack([vals - cis[:, 0], cis[:, 1] - vals]))


def _save(fig, eval_dir, name: str) -> Path:
    fig.tight_layout()
    path = Path(eval_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_accuracy(eval_dir, results: dict) -> Path:
    """accuracy.png: per model, bars for original order, swapped order and two-order average, with
    intervals (at the results' level) from the user-clustered bootstrap (metrics.model_metrics)."""
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
        yerr = _yerr(vals, [m[key + "_ci"] for m in models.values()])
        ax.bar(x + (i - 1) * width, vals, width, yerr=yerr, capsize=3, label=label,
               color="#4C72B0", alpha=alpha, edgecolor="black", linewidth=0.5)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xticks(x, [f"{name}\n(n={m['n_pairs']})" for name, m in models.items()])
    ax.set_ylim(0, 1.05)
    how = next(iter(models.values())).get("clustering")
    ax.set_ylabel(f"accuracy ({level(results.get('alpha'))} CI, " + bootstrap_label(how or BY_USERS) + ")")
    ax.set_title("Pairwise ranking accuracy by option order")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    return _save(fig, eval_dir, "accuracy.png")


def plot_confidence(eval_dir, rows_by_model: dict) -> Path:
    """confidence.png: histogram per model of decision margins logp[correct] - logp[wrong]
    (right of 0 = correct decision)."""
    if not rows_by_model:
        raise ValueError("plot_confidence: no models")
    m_by_model = {name: margins(rows) for name, rows in rows_by_model.items()}
    everything = np.concatenate(list(m_by_model.values()))
    finite = everything[np.isfinite(everything)]
    # Central 99% sets the range so one extreme margin cannot squash the histogram; the clipped
    # tails land in the end bins.
    lo, hi = ((float(np.quantile(finite, 0.005)), float(np.quantile(finite, 0.995))) if finite.size
              else (-1.0, 1.0))
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
    return _save(fig, eval_dir, "confidence.png")


def plot_ranking(eval_dir, ranking: dict) -> Path:
    """ranking.png: Kendall tau-b, NDCG@3 and hit@1 per model and available baseline rule, with the
    user-bootstrap intervals and each metric's chance level (dporec.analysis.rank_metrics)."""
    rankers = {**ranking["models"], **{f"rule:\n{k}": v for k, v in ranking["baselines"].items()
                                       if v.get("available", True)}}
    fig = _figure(3.2 * len(RANKING_METRICS), 3.6)
    for ax, m in zip(fig.subplots(1, len(RANKING_METRICS)), RANKING_METRICS):
        vals = np.array([r[m]["mean"] for r in rankers.values()])
        yerr = _yerr(vals, [r[m]["ci"] for r in rankers.values()])
        colors = [_MODEL_COLORS.get(n, "#8C8C8C" if n.startswith("rule") else "#55A868") for n in rankers]
        ax.bar(np.arange(len(rankers)), vals, 0.7, yerr=yerr, capsize=3, color=colors, edgecolor="black",
               linewidth=0.5)
        ax.axhline(ranking["chance"][m], color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xticks(np.arange(len(rankers)), list(rankers), fontsize=7, rotation=45, ha="right")
        ax.set_title(m)
        ax.set_ylim(-1.05 if m == "kendall_tau_b" else 0, 1.05)
    fig.suptitle(f"Ranking adherence: {ranking['n_users']} users ({level(ranking.get('alpha'))} CI, users "
                 "resampled; dashed: chance)", fontsize=9)
    return _save(fig, eval_dir, "ranking.png")


# Panels of training_curves.png: (title, log key, what it shows); a panel appears when its key was logged.
TRAINING_PANELS = (
    ("loss", "loss", "training loss per logged step, validation loss per evaluation"),
    ("rewards/margins", "rewards/margins", "beta x (log-ratio chosen - log-ratio rejected)"),
    ("rewards/accuracies", "rewards/accuracies", "share of pairs whose chosen answer gains more"),
    ("logps/chosen", "logps/chosen", "log p(chosen answer): falling means likelihood displacement"),
)


def plot_training(folder, stage: str, train_hist: list[dict], eval_hist: list[dict]) -> Path | None:
    """training_curves.png in a stage folder: training (line) and validation (dots) values per optimizer
    step for the loss and, for DPO, reward margin, reward accuracy and log p(chosen); None with no history."""
    panels = [(t, k) for t, k, _ in TRAINING_PANELS
              if any(k in h for h in train_hist) or any(f"eval_{k}" in h for h in eval_hist)]
    if not panels:
        return None
    fig = _figure(3.4 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, key) in zip(axes, panels):
        train = [(h["step"], h[key]) for h in train_hist if h.get(key) is not None and "step" in h]
        val = [(h["step"], h[f"eval_{key}"]) for h in eval_hist if h.get(f"eval_{key}") is not None]
        if train:
            ax.plot(*zip(*train), color="#4C72B0", linewidth=1.0, label="train")
        if val:
            ax.plot(*zip(*val), "o-", color="#DD8452", markersize=3, linewidth=0.8, label="validation")
        if key == "rewards/accuracies":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{stage.upper()} training", fontsize=9)
    return _save(fig, folder, "training_curves.png")

