"""From prediction rows to results.json: every model's metrics, every comparison of dporec.arms whose two
models were scored, what each matched arm shares with its reference stage, the baselines on the same pairs,
and the task the test pairs pose. No model is needed: --from-predictions re-analyses with this alone.
"""
from __future__ import annotations

import logging
from pathlib import Path

from dporec import UserError, arms
from dporec.analysis import reasoning
from dporec.analysis.comparison import compare
from dporec.analysis.metrics import model_metrics
from dporec.data import built, pairs, records
from dporec.evaluation import baselines
from dporec.report.sentences import verdict_sentence
from dporec.runs import provenance
from dporec.runs.provenance import ANALYSIS_ONLY

log = logging.getLogger(__name__)



def analysis_settings(cfg: dict) -> dict:
    """The evaluation settings an analysis was made with (provenance.ANALYSIS_ONLY): results.json records
    them, and a results.json analysed with others is re-analysed from its predictions."""
    return {k: cfg["eval"][k.split(".")[1]] for k in ANALYSIS_ONLY}

def build_results(rows_by_model: dict[str, list[dict]], cfg: dict, meta: dict | None = None,
                  adapters: dict | None = None) -> dict:
    """{"models", "alpha", one key per comparison (None when one of its models was not scored),
    "<arm>_arm" per matched arm, "meta"} from prediction rows. `adapters` ({name: folder}) locates the
    scored arms' folders for their matching (default: each arm's folder under output_dir)."""
    ec = cfg["eval"]
    rows = rows_by_model
    results = {"models": {name: model_metrics(r, n_boot=ec["bootstrap_samples"], seed=cfg["seed"],
                                              alpha=ec["alpha"]) for name, r in rows.items()},
               "alpha": ec["alpha"],
               # what the analysis was made with: another value re-analyses (evaluation.stage.read_results)
               "analysis": analysis_settings(cfg)}
    results.update(comparisons(rows, cfg))
    out = cfg["output_dir"]
    for arm in arms.ARMS:
        if arm.matched_to is None:
            continue
        model, ref = arm.model.name, arm.matched_to
        folder = (adapters or {}).get(model) or arm.model.folder(out)
        results[f"{arm.name}_arm"] = (provenance.matching(ref.folder(out), Path(folder), (ref.name, arm.name),
                                                          arm.unmatched(cfg))
                                      if model in rows and ref.name in rows else None)
    results["meta"] = dict(meta or {})
    return results


def comparisons(rows: dict, cfg: dict) -> dict:
    """{comparison key: compare(...) with its sentence, or None when one of its models was not scored} for
    every comparison of dporec.arms."""
    ec, out = cfg["eval"], {}
    for c in arms.comparisons():
        if c.a in rows and c.b in rows:
            out[c.key] = compare(rows[c.a], rows[c.b], names=c.names, margin=ec["margin_points"] / 100,
                                 alpha=ec["alpha"])
            out[c.key]["sentence"] = verdict_sentence(out[c.key])
        else:
            out[c.key] = None
    return out


def personal_results(rows: dict, cfg: dict, test_file, where: str, examples=None) -> dict:
    """results.json's "personal": every model and comparison on the personal task's test pairs (the same
    test users, general appeal matched away; data.built.PERSONAL_FILE), the second verdict, and the rules
    on those pairs (reported, not chosen: the personal task has no validation pairs of its own).
    examples: the scored pairs; re-analysis reads them from test_file."""
    ec = cfg["eval"]
    try:
        out = {"test_file": str(test_file), "task": pairs.TASKS["matched"],
               "models": {name: model_metrics(r, n_boot=ec["bootstrap_samples"], seed=cfg["seed"],
                                              alpha=ec["alpha"]) for name, r in rows.items()},
               **comparisons(rows, cfg)}
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    out["n_pairs"] = next(iter(out["models"].values()))["n_pairs"]
    add_baselines(out, cfg, rows, examples, test_file=test_file, choose_on_val=False)
    return out


def reasoning_results(gen_rows: dict, cfg: dict, where: str, subset: dict | None = None) -> tuple[dict, dict]:
    """(results.json's "reasoning", the judged generation rows by model): every model's answers judged from
    the data (analysis.reasoning), every comparison of dporec.arms on the headline rate with the main
    verdict's interval, margin and label."""
    ec = cfg["eval"]
    try:
        judged = {name: reasoning.judge_rows(r) for name, r in gen_rows.items()}
        out = reasoning.reasoning_results(judged, arms.comparisons(), margin=ec["margin_points"] / 100,
                                          alpha=ec["alpha"], n_boot=ec["bootstrap_samples"], seed=cfg["seed"],
                                          subset=subset)
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None
    for c in arms.comparisons():
        if out.get(c.key):
            out[c.key]["sentence"] = verdict_sentence(out[c.key])
    return out, judged


def analyse(rows: dict, cfg: dict, meta: dict, where: str, adapters: dict | None = None) -> dict:
    """build_results, with a broken prediction-row contract named by where the rows came from."""
    try:
        return build_results(rows, cfg, meta, adapters)
    except ValueError as e:  # the prediction-row contract (dporec.analysis.metrics)
        raise UserError(f"{where}: {e}") from None


def task_of(test_file, examples=None) -> str | None:
    """Which task the test pairs pose: the build summary's word for it when the builder wrote one beside
    them, else read from the records' negative kinds."""
    summary = built.read_summary(Path(test_file).parent)
    if summary and summary.get("task"):
        return summary["task"]
    kinds = {e.extra.get("negative_kind") for e in examples or []}
    if kinds == {"matched"}:
        return pairs.TASKS["matched"]
    if kinds and kinds <= {"disliked", "unseen_popular"}:
        return pairs.TASKS["disliked"]
    return None


def add_baselines(results: dict, cfg: dict, rows: dict, examples=None, test_file=None,
                  choose_on_val: bool = True) -> None:
    """Baselines on the scored pairs: the given test examples, or (re-analysis) those of `test_file`
    (data.test_file) that the prediction rows hold, when the file is there and holds them all. The
    strongest rule is chosen on data.val_file's pairs (choose_on_val: the personal task's pairs have no
    validation pairs of their own, so there its rules are only reported)."""
    if examples is None:
        test_file = Path(test_file or cfg["data"]["test_file"])
        wanted = {r["pair_id"] for r in next(iter(rows.values()))}
        examples = [e for e in (records.load_examples(test_file) if test_file.is_file() else [])
                    if e.pair_id in wanted]
        if len(examples) != len(wanted):
            log.info(f"[eval] baselines skipped: {test_file} does not hold "
                     f"the {len(wanted)} pairs of these predictions")
            return
    ec, val_file = cfg["eval"], Path(cfg["data"]["val_file"])
    val = records.load_examples(val_file) if choose_on_val and val_file.is_file() else None
    baselines.add_to_results(results, examples, cfg["data"]["train_file"], rows, val_examples=val,
                             n_boot=ec["bootstrap_samples"], seed=cfg["seed"], alpha=ec["alpha"])
