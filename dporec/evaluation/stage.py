"""The evaluation stage: score every model (base, the run's SFT adapter, DPO, each switched-on arm's model and
eval.adapters) on the held-out test pairs in both option orders, add the baselines and the ranking, compare,
and write <output_dir>/eval/ (what evaluate_dpo.py runs).

The 4-bit base is loaded once and the adapters are switched on it. --from-predictions re-analyses a
saved predictions.csv without loading any model: the ML stack is imported inside the functions that
score, so re-analysis needs numpy, scipy and matplotlib only.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

from dporec import UserError, arms
from dporec.analysis.metrics import per_pair_scores
from dporec.analysis.reasoning import subset_record
from dporec.config import updated
from dporec.data import balance, built, candidates, inspect, records
from dporec.evaluation.results import (
    add_baselines,
    analyse,
    analysis_settings,
    personal_results,
    reasoning_results,
    task_of,
)
from dporec.files import read_json
from dporec.modeling import adapters as adapters_mod
from dporec.report import outputs, tables
from dporec.report.predictions import FILE as PREDICTIONS_FILE
from dporec.report.predictions import GENERATIONS_FILE, read_generations, read_predictions
from dporec.report.predictions import PERSONAL_FILE as PERSONAL_PREDICTIONS
from dporec.runs import lifecycle, provenance
from dporec.runs.adapters import find_adapters

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Scoring every model

def score_all(model, tok, examples, adapters: dict, cfg: dict, tag: str = "", info=None) -> tuple[dict, dict]:
    """({name: prediction rows}, {name: seconds}) for every model: decision rows, or with eval.full_answer
    decision and full-answer rows."""
    from dporec.evaluation import scoring
    ec, fmt = cfg["eval"], cfg["data"]["prompt_format"]
    score = scoring.score_answers if ec["full_answer"] else scoring.score_decisions
    rows, seconds = {}, {}
    for name in adapters:
        t0 = time.perf_counter()
        with adapters_mod.active(model, name, adapters):
            rows[name] = score(model, tok, examples, fmt, ec["batch_size"], desc=f"scoring {name}{tag}",
                               model_name=name, info=info)
        seconds[name] = time.perf_counter() - t0
        log.info(f"[eval] {name}{tag}: scored {len(examples)} pairs x 2 orders in {seconds[name]:.1f}s")
    return rows, seconds


def generate_all(model, tok, examples, adapters: dict, cfg: dict) -> tuple[dict, dict]:
    """({name: generation rows}, {name: seconds}): every model's greedy answers in both orders for the
    eval.reasoning_pairs subset of the test pairs (generation.reasoning_subset, the same for all)."""
    from dporec.evaluation import generation
    ec, fmt = cfg["eval"], cfg["data"]["prompt_format"]
    subset = generation.reasoning_subset(examples, ec["reasoning_pairs"])
    rows, seconds = {}, {}
    for name in adapters:
        t0 = time.perf_counter()
        with adapters_mod.active(model, name, adapters):
            rows[name] = generation.generate_answers(model, tok, subset, fmt, ec["batch_size"],
                                                     ec["max_new_tokens"], model_name=name,
                                                     desc=f"generating {name}")
        seconds[name] = time.perf_counter() - t0
        log.info(f"[eval] {name}: generated {len(subset)} pairs x 2 orders in {seconds[name]:.1f}s")
    return rows, seconds


# ---------------------------------------------------------------------------------------------
# The 4-bit vs 16-bit stability check

def _unquantized_bytes(model, dtype) -> int:
    import torch
    n = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)  # bitsandbytes packs two 4-bit values per byte
        n += int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()
    return n * torch.empty((), dtype=dtype).element_size()


def _accuracy(rows) -> float:
    scores = per_pair_scores(rows)[0]
    return sum(scores.values()) / len(scores)


def _skipped(out: dict, reason: str) -> dict:
    out["reason"] = reason
    log.info(f"[eval] stability check skipped: {reason}")
    return out


def stability(cfg, backend, examples, adapters, rows_q, needed: int) -> dict:
    """Score again with the base unquantized; agreement of choices and accuracy change per model."""
    from dporec.modeling import backends, hardware
    cfg16 = copy.deepcopy(cfg)
    cfg16["model"]["load_in_4bit"] = False
    dtype = backends.compute_dtype(cfg16)
    out = {"precision": str(dtype).replace("torch.", ""), "status": "skipped"}
    # decided before loading: the same under unsloth and hf, and nothing is downloaded
    reason = hardware.prequantized_reason(cfg)
    if reason:
        return _skipped(out, reason)
    avail = hardware.free_memory()[0]
    if needed * 1.25 > avail:
        return _skipped(out, f"the unquantized weights need about {needed / 2**30:.1f} GiB, "
                             f"{avail / 2**30:.1f} GiB is free")
    model, tok = adapters_mod.load_with_adapters(cfg16, backend, adapters)
    if hardware.quantized_weights(model):
        del model
        backends.release_memory()
        return _skipped(out, f"{cfg['model']['name']} is a pre-quantized checkpoint; it has no 16-bit "
                             "weights")
    rows16, _ = score_all(model, tok, examples, adapters, cfg16, tag=f" ({out['precision']})")
    del model
    backends.release_memory()
    out["status"] = "done"
    out["models"] = {}
    for name, rq in rows_q.items():
        r16 = {(r["pair_id"], r["order"]): r for r in rows16[name]}
        same = sum(r["choice"] == r16[(r["pair_id"], r["order"])]["choice"] for r in rq)
        acc_q, acc_16 = _accuracy(rq), _accuracy(rows16[name])
        out["models"][name] = {"choice_agreement": same / len(rq), "decisions": len(rq),
                               "accuracy_4bit": acc_q, f"accuracy_{out['precision']}": acc_16,
                               "accuracy_change": acc_16 - acc_q}
        log.info(f"[eval] stability {name}: {100 * same / len(rq):.1f}% of decisions unchanged, "
                 f"accuracy {100 * acc_q:.1f}% (4-bit) -> {100 * acc_16:.1f}% ({out['precision']})")
    return out


# ---------------------------------------------------------------------------------------------
# The stage

def _keep_previous(path: Path) -> Path:
    """Rename a file the re-analysis replaces to the first free <name>.previous[-N]<suffix>: an earlier
    re-analysis's copy is never replaced."""
    n, dst = 1, path.with_name(f"{path.stem}.previous{path.suffix}")
    while dst.exists():
        n += 1
        dst = path.with_name(f"{path.stem}.previous-{n}{path.suffix}")
    path.replace(dst)
    return dst


def _readable_json(path: Path) -> dict:
    """A JSON file's content, or {} where it is missing or not readable JSON (optional context only)."""
    try:
        return read_json(path) if path.is_file() else {}
    except (UserError, ValueError, OSError):
        return {}


def reanalyse(cfg: dict, source: Path, spec: arms.StageSpec | None = None) -> tuple[dict, Path]:
    """--from-predictions: every statistic, results.json, report.md and plots from a predictions.csv."""
    spec = spec or arms.StageSpec(arms.EVAL)
    resume, overwrite = spec.mode(cfg)
    eval_dir = arms.EVAL.folder(cfg["output_dir"])
    results_file = eval_dir / arms.EVAL.marker
    target = eval_dir / PREDICTIONS_FILE
    in_place = target.is_file() and source.resolve() == target.resolve()
    rows = read_predictions(source)
    personal_source = source.parent / PERSONAL_PREDICTIONS  # the personal task's scores, beside them
    personal_rows = (read_predictions(personal_source)
                     if cfg["eval"]["personal_task"] and personal_source.is_file() else None)
    generations_source = source.parent / GENERATIONS_FILE  # the generated answers, judged anew
    generations = read_generations(generations_source) if generations_source.is_file() else None
    previous = {}
    # a source inside the evaluation folder (an edited copy beside the scored one) is the user's file: the
    # folder is kept, and what the re-analysis replaces is kept under a .previous name
    inside = source.resolve().parent == eval_dir.resolve()
    if in_place or inside:
        if results_file.is_file() and not lifecycle.marker_broken(eval_dir, arms.EVAL.marker):
            previous = read_json(results_file)
        if inside and not in_place:  # run_info.json stays the scoring's: what the scores were built from
            data = source.read_bytes()
            if target.is_file():
                _keep_previous(target)
            target.write_bytes(data)
    else:
        data = source.read_bytes()  # before prepare_run_dir may clear a folder that holds the source
        personal_data = personal_source.read_bytes() if personal_rows else None
        generations_data = generations_source.read_bytes() if generations else None
        eval_dir = lifecycle.prepare_run_dir(eval_dir, resume, overwrite, arms.EVAL.marker)
        target.write_bytes(data)
        if personal_data:
            (eval_dir / PERSONAL_PREDICTIONS).write_bytes(personal_data)
        if generations_data:
            (eval_dir / GENERATIONS_FILE).write_bytes(generations_data)
        provenance.write_run_info(eval_dir, cfg, stage="eval", reanalysed_from=str(source))
    settings = {"bootstrap_samples": cfg["eval"]["bootstrap_samples"], "alpha": cfg["eval"]["alpha"],
                "seed": cfg["seed"]}
    meta = {**previous.get("meta", {}), "reanalysed_from": str(source), "reanalysis_settings": settings}
    meta.setdefault("task", task_of(cfg["data"]["test_file"]))
    results = analyse(rows, cfg, meta, str(source), (previous.get("meta") or {}).get("adapters"))
    results["meta"]["n_pairs"] = next(iter(results["models"].values()))["n_pairs"]
    if personal_rows:
        personal_file = ((previous.get("personal") or {}).get("test_file")
                         or built.personal_test_file(cfg["data"]["test_file"]) or built.PERSONAL_FILE)
        results["personal"] = personal_results(personal_rows, cfg, personal_file, str(personal_source))
    add_baselines(results, cfg, rows)
    judged = None
    if generations:
        # how the answers were generated: from the scoring's results.json (in place or beside the source)
        scored = previous or _readable_json(source.parent / arms.EVAL.marker)
        bound = ((scored.get("reasoning") or {}).get("subset") or {}).get("max_new_tokens")
        subset = subset_record(generations, results["meta"]["n_pairs"], bound)
        results["reasoning"], judged = reasoning_results(generations, cfg, str(generations_source), subset)
    for kept in ("stability", "ranking"):  # not in predictions.csv (ranking: ranking.csv)
        if kept in previous:
            results[kept] = previous[kept]
    if previous:  # kept: the numbers it held were derived, but a user may want to compare
        _keep_previous(results_file)
    log.info(f"[eval] re-analysed {source}: models {', '.join(rows)}; no model loaded")
    return results, outputs.write_evaluation(eval_dir, results, rows, predictions=False, generations=judged)


def evaluate(cfg: dict, rt=None, from_predictions: str | Path | None = None,
             config_path: str = "<your config>", spec: arms.StageSpec | None = None) -> dict:
    """Score every model on the test pairs (or re-analyse a predictions.csv) into <output_dir>/eval/;
    report the tables and return the results.

    rt: the process's Runtime (modeling.runtime.setup; made here when not given). config_path only
    names the config in the advice given when an adapter is missing.
    """
    if from_predictions:
        results, path = reanalyse(cfg, Path(from_predictions), spec)
        return _report(results, path)

    from dporec.modeling import backends, runtime
    spec = spec or arms.StageSpec(arms.EVAL)
    resume, overwrite = spec.mode(cfg)
    folder = arms.EVAL.folder(cfg["output_dir"])
    recipe = provenance.recipe(cfg, spec)
    if lifecycle.finished_already(folder, resume, arms.EVAL.marker, recipe):  # resume=auto: left as it is
        results_file = arms.EVAL.marker_file(cfg["output_dir"])
        results, reanalysed = read_results(cfg, results_file)
        return results if reanalysed else _report(results, results_file)
    rt = rt or runtime.setup(cfg, "eval")
    backend = rt.check("eval", arms.EVAL.script)
    ec = cfg["eval"]
    test_file = cfg["data"]["test_file"]
    built.check_agrees(cfg["data"])  # scores of other data are not this config's
    examples = records.load_examples(test_file, limit=cfg["data"]["max_test_examples"])
    training = {f"data.{k}": cfg["data"][k] for k in ("train_file", "val_file")}
    inspect.check_held_out(test_file, examples, training)  # a verdict on training users is no verdict
    warning = balance.balance_warning(examples, test_file)
    if warning:  # harmless for the two-order metrics, but worth knowing
        log.warning(warning)
    personal_file = built.personal_test_file(test_file) if ec["personal_task"] else None
    personal = None
    summary = built.read_summary(Path(test_file).parent) or {}
    if ec["personal_task"] and "personal_test" not in summary and summary.get("negatives") == "disliked":
        log.info(f"[eval] no {built.PERSONAL_FILE} beside {test_file} (built by an earlier version): rebuild "
                 "the data (data/prepare_movielens.py --force) for the personal task's second verdict")
    if personal_file:  # the second verdict's pairs: the same test users, general appeal matched away
        personal = records.load_examples(personal_file, limit=cfg["data"]["max_test_examples"])
        inspect.check_held_out(personal_file, personal, training)
    ranking_file = sets = None
    if ec["ranking"]:  # read and checked before any model loads
        ranking_file = cfg["data"]["ranking_file"] or candidates.default_path(test_file)
        sets = candidates.load(ranking_file, limit=ec["ranking_max_users"])
    backends.check_model_name(cfg["model"]["name"])
    adapters = find_adapters(cfg, config_path)
    eval_dir = lifecycle.prepare_run_dir(folder, resume, overwrite, arms.EVAL.marker)
    lifecycle.start_recipe(eval_dir, recipe, continuing=False)
    log.info(f"[eval] {len(examples)} test pairs from {test_file}; models: {', '.join(adapters)}")
    with lifecycle.stage_guard(eval_dir, resumable=False):
        results, path = _score_and_write(cfg, backend, examples, adapters, eval_dir, ranking_file, sets,
                                         personal_file, personal)
    return _report(results, path)


def _score_and_write(cfg: dict, backend: str, examples, adapters: dict, eval_dir: Path, ranking_file,
                     sets, personal_file=None, personal=None) -> tuple[dict, Path]:
    """Load the base once, score every model in both orders (and rank), analyse, write eval_dir."""
    from dporec.evaluation import candidate_ranking, logprobs
    from dporec.modeling import backends
    ec, test_file = cfg["eval"], cfg["data"]["test_file"]
    t0 = time.perf_counter()
    model, tok = adapters_mod.load_with_adapters(cfg, backend, adapters)
    info = logprobs.ScoringInfo()
    rows, seconds = score_all(model, tok, examples, adapters, cfg, info=info)
    personal_rows = None
    if personal:  # the second verdict's pairs: decision scores only (the tag also skips generation)
        decision_only = updated(cfg, {"eval.full_answer": False})
        personal_rows = score_all(model, tok, personal, adapters, decision_only, tag=" (personal task)")[0]
    if ranking_file:
        rank_rows, rank_seconds = candidate_ranking.score_models(model, tok, sets, adapters, cfg)
    gen_rows = gen_seconds = None
    if ec["generate"]:  # the reasoning's answers: greedy, both orders, the same pairs for every model
        backends.prepare_generation(model, backend)  # Unsloth's fast generation, after all scoring
        gen_rows, gen_seconds = generate_all(model, tok, examples, adapters, cfg)
    needed = _unquantized_bytes(model, backends.compute_dtype(cfg)) if ec["stability"] else 0
    del model  # the 4-bit model goes before a 16-bit copy may be loaded
    backends.release_memory()

    meta = {
        "test_file": str(test_file), "n_pairs": len(examples), "prompt_format": cfg["data"]["prompt_format"],
        "model": cfg["model"]["name"], "backend": backend, "load_in_4bit": cfg["model"]["load_in_4bit"],
        "scoring": "likelihood, both option orders, " + ("the decision and both full answers"
                                                         if ec["full_answer"] else "the decision"),
        "decision_span_fallbacks": info.fallback_decision_spans,
        "adapters": {n: (str(p) if p else None) for n, p in adapters.items()},
        "seconds_per_model": seconds, "test_balance": balance.balance(examples),
        "task": task_of(test_file, examples),
        # each trained model's curves, relative to eval/ so report.md's links survive moving the run folder
        "training_curves": {n: os.path.relpath(Path(p) / "training_curves.png", eval_dir)
                            for n, p in adapters.items()
                            if p and (Path(p) / "training_curves.png").is_file()},
    }
    results = analyse(rows, cfg, meta, str(test_file), adapters)
    if personal_rows:
        results["personal"] = personal_results(personal_rows, cfg, personal_file, str(personal_file),
                                               examples=personal)
    # simple rules on the same pairs (side files beside data.train_file), the strongest chosen on validation
    add_baselines(results, cfg, rows, examples)
    judged = None
    if gen_rows:
        subset = subset_record(gen_rows, len(examples), ec["max_new_tokens"])
        results["reasoning"], judged = reasoning_results(gen_rows, cfg, "the generated answers", subset)
        results["meta"]["generation_seconds_per_model"] = gen_seconds
    if ranking_file:
        rank_base = candidate_ranking.baseline_rows(sets, cfg["data"]["train_file"])
        results["ranking"] = candidate_ranking.results(sets, rank_rows, rank_base, rank_seconds, cfg,
                                                       ranking_file)
        outputs.write_ranking_csv(eval_dir / "ranking.csv", rank_rows, rank_base)
    if ec["stability"]:
        if cfg["model"]["load_in_4bit"]:
            results["stability"] = stability(cfg, backend, examples, adapters, rows, needed)
        else:
            results["stability"] = {"status": "skipped", "reason": "model.load_in_4bit=false: "
                                                                   "nothing to compare"}
    results["meta"]["wall_seconds"] = round(time.perf_counter() - t0, 1)

    provenance.write_run_info(eval_dir, cfg, stage="eval", backend=backend, adapters=meta["adapters"],
                              inputs=provenance.input_record(adapters, cfg["output_dir"]))
    # results.json last: the marker
    return results, outputs.write_evaluation(eval_dir, results, rows, personal_rows=personal_rows,
                                             generations=judged)


def _report(results: dict, path: Path) -> dict:
    """The stage's boundary: its tables and verdict on the console, and its results to the caller."""
    log.info(tables.format_table(results))
    log.info(tables.format_verdict(results))
    log.info(f"[eval] results: {path}")
    return results


def read_results(cfg: dict, results_file: Path) -> tuple[dict, bool]:
    """(results, re-analysed): a finished evaluation's results.json, or, written by an earlier version or
    analysed with other settings (provenance.ANALYSIS_ONLY: alpha, margin, ...), the same predictions
    analysed again (refresh)."""
    results = read_json(results_file)
    return (results, False) if current(results, cfg) else (refresh(cfg, results_file), True)


def current(results: dict, cfg: dict) -> bool:
    """Whether results.json was written by this version (an earlier one lacks what the reports read now:
    the comparisons' "ci" and the level) and analysed with the config's settings."""
    c = results.get(arms.MAIN.key)
    if "alpha" not in results or (c and "ci" not in c):
        return False
    # before ties counted half and position-free accuracy was reported: the same scores, analysed again
    if any("position_free_accuracy" not in m for m in results.get("models", {}).values()):
        return False
    return results.get("analysis") == analysis_settings(cfg)


def refresh(cfg: dict, results_file: Path) -> dict:
    """A results.json analysed again from its predictions.csv (the same numbers' source): one written by an
    earlier version, so that every report reads the layout it expects, or with other analysis settings."""
    source = results_file.parent / PREDICTIONS_FILE
    if not source.is_file():
        raise UserError(f"{results_file} was analysed by an earlier version or with other settings and has "
                        f"no {source.name} beside it to re-analyse; evaluate again with --overwrite")
    log.info(f"[eval] {results_file} was analysed by an earlier version or with other settings "
             f"(now {analysis_settings(cfg)}): re-analysing its {source.name}")
    return evaluate(cfg, from_predictions=source)
