"""The evaluation stage: score base, SFT and DPO on the held-out test pairs in both option orders, add
the baselines and the ranking, compare, and write <output_dir>/eval/ (what evaluate_dpo.py runs).

The 4-bit base is loaded once and the adapters are switched on it. --from-predictions re-analyses a
saved predictions.csv without loading any model: the ML stack is imported inside the functions that
score, so re-analysis needs numpy, scipy and matplotlib only.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

from dporec import UserError, runs
from dporec.analysis.comparison import compare
from dporec.analysis.metrics import model_metrics, per_pair_scores
from dporec.data import candidates, pairs, records, splits
from dporec.evaluation import baselines
from dporec.modeling import adapters as adapters_mod
from dporec.report import files, tables
from dporec.report.sentences import verdict_sentence

# ---------------------------------------------------------------------------------------------
# Scoring every model

def score_all(model, tok, examples, adapters: dict, cfg: dict, tag: str = "", info=None) -> tuple[dict, dict]:
    """({name: prediction rows}, {name: seconds}) for every model, likelihood (+ generation) scoring."""
    from dporec.evaluation import generation, scoring
    ec, fmt = cfg["eval"], cfg["data"]["prompt_format"]
    rows, seconds = {}, {}
    for name in adapters:
        t0 = time.perf_counter()
        with adapters_mod.active(model, name, adapters):
            r = scoring.score_pairs(model, tok, examples, fmt, ec["batch_size"], desc=f"scoring {name}{tag}",
                                    model_name=name, info=info, full_answer=ec["full_answer"])
            if ec["generate"] and not tag:
                gen = generation.generate_choices(model, tok, examples, fmt, ec["batch_size"],
                                                  ec["max_new_tokens"], model_name=name,
                                                  desc=f"generating {name}")
                r = generation.attach_generations(r, gen)
                valid = sum(g["parsed"] is not None for g in gen)
                print(f"[eval] {name}: {valid}/{len(gen)} generated answers name exactly one option")
        rows[name], seconds[name] = r, time.perf_counter() - t0
        print(f"[eval] {name}{tag}: scored {len(examples)} pairs x 2 orders in {seconds[name]:.1f}s")
    return rows, seconds


def load_models(cfg: dict, backend: str, adapters: dict):
    """The base once, with every adapter of `adapters` attached (None = the base itself)."""
    from dporec.modeling import backends
    base, tok = backends.load_base(cfg, backend)
    with_adapters = {n: p for n, p in adapters.items() if p is not None}
    model = adapters_mod.attach_adapters(base, with_adapters, cfg["model"]["name"]) if with_adapters else base
    model.eval()
    return model, tok


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
        out["reason"] = reason
        print(f"[eval] stability check skipped: {reason}")
        return out
    avail = hardware.free_memory()[0]
    if needed * 1.25 > avail:
        out["reason"] = (f"the unquantized weights need about {needed / 2**30:.1f} GiB, "
                         f"{avail / 2**30:.1f} GiB is free")
        print(f"[eval] stability check skipped: {out['reason']}")
        return out
    model, tok = load_models(cfg16, backend, adapters)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model.config, "quantization_config", None):
        out["reason"] = f"{cfg['model']['name']} is a pre-quantized checkpoint; it has no 16-bit weights"
        print(f"[eval] stability check skipped: {out['reason']}")
        del model
        backends.release_memory()
        return out
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
        print(f"[eval] stability {name}: {100 * same / len(rq):.1f}% of decisions unchanged, "
              f"accuracy {100 * acc_q:.1f}% (4-bit) -> {100 * acc_16:.1f}% ({out['precision']})")
    return out


# ---------------------------------------------------------------------------------------------
# From prediction rows to results.json

ONPOLICY_KEYS = ("comparison_onpolicy", "comparison_onpolicy_vs_dpo")


def build_results(rows_by_model: dict[str, list[dict]], cfg: dict, meta: dict | None = None) -> dict:
    """{"models", "comparison", "comparison_control", "control_arm", "comparison_onpolicy",
    "comparison_onpolicy_vs_dpo", "meta"} from prediction rows.

    comparison: SFT vs DPO when both were scored; comparison_control: the compute-matched SFT control
    vs DPO; control_arm: what the control matches, when both stage folders are there;
    comparison_onpolicy(_vs_dpo): the on-policy DPO arm vs SFT and vs off-policy DPO."""
    ec = cfg["eval"]
    rows = rows_by_model
    results = {"models": {name: model_metrics(r, n_boot=ec["bootstrap_samples"], seed=cfg["seed"],
                                              alpha=ec["alpha"]) for name, r in rows.items()}}
    kw = dict(margin=ec["margin_points"] / 100, alpha=ec["alpha"])
    has_main, has_control = "sft" in rows and "dpo" in rows, runs.CONTROL in rows and "dpo" in rows
    results["comparison"] = compare(rows["sft"], rows["dpo"], **kw) if has_main else None
    results["comparison_control"] = (compare(rows[runs.CONTROL], rows["dpo"], names=("SFT control", "DPO"),
                                             **kw) if has_control else None)
    # the on-policy arm against SFT (the question's comparison) and against off-policy DPO (which pairs)
    on = runs.ONPOLICY in rows
    results["comparison_onpolicy"] = (compare(rows["sft"], rows[runs.ONPOLICY],
                                              names=("SFT", "on-policy DPO"), **kw)
                                      if on and "sft" in rows else None)
    results["comparison_onpolicy_vs_dpo"] = (compare(rows["dpo"], rows[runs.ONPOLICY],
                                                     names=("off-policy DPO", "on-policy DPO"), **kw)
                                             if on and "dpo" in rows else None)
    for key in ONPOLICY_KEYS + ("comparison", "comparison_control"):
        if results[key]:
            results[key]["sentence"] = verdict_sentence(results[key])
    results["control_arm"] = None
    if has_control:
        control_dir = ec["adapters"].get(runs.CONTROL) or runs.stage_dir(cfg, runs.CONTROL)
        results["control_arm"] = runs.control_matching(runs.stage_dir(cfg, runs.DPO), Path(control_dir))
    results["meta"] = dict(meta or {})
    return results


def task_of(test_file, examples=None) -> str | None:
    """Which task the test pairs pose: summary.json's word for it when the builder wrote one beside
    them, else read from the records' negative kinds."""
    summary = Path(test_file).parent / "summary.json"
    if summary.is_file():
        built = runs.read_json(summary)
        if built.get("task"):
            return built["task"]
    kinds = {e.extra.get("negative_kind") for e in examples or []}
    if kinds == {"matched"}:
        return pairs.TASKS["matched"]
    if kinds and kinds <= {"disliked", "unseen_popular"}:
        return pairs.TASKS["disliked"]
    return None


def _analyse(rows: dict, cfg: dict, meta: dict, where: str) -> dict:
    try:
        return build_results(rows, cfg, meta)
    except ValueError as e:  # the prediction-row contract (dporec.analysis.metrics)
        raise UserError(f"{where}: {e}") from None


def _add_baselines(results: dict, cfg: dict, rows: dict, examples=None) -> None:
    """Baselines on the scored pairs: the given test examples, or (re-analysis) those of data.test_file
    that predictions.csv holds, when the file is there and holds them all. The strongest rule is chosen
    on data.val_file's pairs."""
    if examples is None:
        test_file = Path(cfg["data"]["test_file"])
        wanted = {r["pair_id"] for r in next(iter(rows.values()))}
        examples = [e for e in (records.load_examples(test_file) if test_file.is_file() else [])
                    if e.pair_id in wanted]
        if len(examples) != len(wanted):
            print(f"[eval] baselines skipped: {test_file} does not hold "
                  f"the {len(wanted)} pairs of these predictions")
            return
    ec, val_file = cfg["eval"], Path(cfg["data"]["val_file"])
    val = records.load_examples(val_file) if val_file.is_file() else None
    baselines.add_to_results(results, examples, cfg["data"]["train_file"], rows, val_examples=val,
                             n_boot=ec["bootstrap_samples"], seed=cfg["seed"], alpha=ec["alpha"])


# ---------------------------------------------------------------------------------------------
# The stage

def reanalyse(cfg: dict, source: Path) -> tuple[dict, Path]:
    """--from-predictions: every statistic, results.json, report.md and plots from a predictions.csv."""
    eval_dir = runs.stage_dir(cfg, runs.EVAL)
    target = eval_dir / "predictions.csv"
    in_place = target.is_file() and source.resolve() == target.resolve()
    rows = files.read_predictions(source)
    previous = {}
    if in_place and (eval_dir / "results.json").is_file():
        previous = runs.read_json(eval_dir / "results.json")
    elif not in_place:
        data = source.read_bytes()  # before prepare_run_dir may clear a folder that holds the source
        eval_dir = runs.prepare_run_dir(eval_dir, cfg, done_marker=runs.MARKERS[runs.EVAL])
        target.write_bytes(data)
        runs.write_run_info(eval_dir, cfg, stage="eval", reanalysed_from=str(source))
    settings = {"bootstrap_samples": cfg["eval"]["bootstrap_samples"], "alpha": cfg["eval"]["alpha"],
                "seed": cfg["seed"]}
    meta = {**previous.get("meta", {}), "reanalysed_from": str(source), "reanalysis_settings": settings}
    meta.setdefault("task", task_of(cfg["data"]["test_file"]))
    results = _analyse(rows, cfg, meta, str(source))
    results["meta"]["n_pairs"] = next(iter(results["models"].values()))["n_pairs"]
    _add_baselines(results, cfg, rows)
    for kept in ("stability", "ranking"):  # not in predictions.csv (ranking: ranking.csv)
        if kept in previous:
            results[kept] = previous[kept]
    if previous:  # kept: the numbers it held were derived, but a user may want to compare
        (eval_dir / "results.json").replace(eval_dir / "results.previous.json")
    print(f"[eval] re-analysed {source}: models {', '.join(rows)}; no model loaded")
    return results, files.write_evaluation(eval_dir, results, rows, predictions=False)


def evaluate(cfg: dict, from_predictions: str | Path | None = None,
             config_path: str = "<your config>") -> int:
    """Score every model on the test pairs (or re-analyse a predictions.csv) and write <output_dir>/eval/.

    config_path only names the config in the advice printed when an adapter is missing.
    """
    if from_predictions:
        results, path = reanalyse(cfg, Path(from_predictions))
        return _print_results(results, path)

    from dporec.modeling import backends
    # refuses GPU-only configs on a CPU; imports unsloth first when chosen
    backend = backends.backend_for(cfg)
    ec = cfg["eval"]
    test_file = cfg["data"]["test_file"]
    examples = records.load_examples(test_file, limit=cfg["data"]["max_test_examples"])
    warning = splits.balance_warning(examples, test_file)
    if warning:  # harmless for the two-order metrics, but worth knowing
        print(warning)
    ranking_file = sets = None
    if ec["ranking"]:  # read and checked before any model loads
        ranking_file = cfg["data"]["ranking_file"] or candidates.default_path(test_file)
        sets = candidates.load(ranking_file, limit=ec["ranking_max_users"])
    backends.check_model_name(cfg["model"]["name"])
    adapters = runs.find_adapters(cfg, config_path)
    if runs.finished_already(runs.stage_dir(cfg, runs.EVAL), cfg, runs.MARKERS[runs.EVAL]):
        results_file = runs.marker(cfg, runs.EVAL)
        return _print_results(runs.read_json(results_file), results_file)
    eval_dir = runs.prepare_run_dir(runs.stage_dir(cfg, runs.EVAL), cfg, done_marker=runs.MARKERS[runs.EVAL])
    print(f"[eval] {len(examples)} test pairs from {test_file}; models: {', '.join(adapters)}")
    with runs.stage_guard(eval_dir, resumable=False):
        results, path = _score_and_write(cfg, backend, examples, adapters, eval_dir, ranking_file, sets)
    return _print_results(results, path)


def _score_and_write(cfg: dict, backend: str, examples, adapters: dict, eval_dir: Path, ranking_file,
                     sets) -> tuple[dict, Path]:
    """Load the base once, score every model in both orders (and rank), analyse, write eval_dir."""
    from dporec.modeling import backends
    ec, test_file = cfg["eval"], cfg["data"]["test_file"]
    t0 = time.perf_counter()
    model, tok = load_models(cfg, backend, adapters)
    from dporec.evaluation import ranking, scoring
    info = scoring.ScoringInfo()
    rows, seconds = score_all(model, tok, examples, adapters, cfg, info=info)
    if ranking_file:
        rank_rows, rank_seconds = ranking.score_models(model, tok, sets, adapters, cfg)
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
        "seconds_per_model": seconds, "test_balance": splits.balance(examples),
        "task": task_of(test_file, examples),
        # each trained model's curves, relative to eval/ so report.md's links survive moving the run folder
        "training_curves": {n: os.path.relpath(Path(p) / "training_curves.png", eval_dir)
                            for n, p in adapters.items()
                            if p and (Path(p) / "training_curves.png").is_file()},
    }
    results = _analyse(rows, cfg, meta, str(test_file))
    # simple rules on the same pairs (side files beside data.train_file), the strongest chosen on validation
    _add_baselines(results, cfg, rows, examples)
    if ranking_file:
        rank_base = ranking.baseline_rows(sets, cfg["data"]["train_file"])
        results["ranking"] = ranking.results(sets, rank_rows, rank_base, rank_seconds, cfg, ranking_file)
        files.write_ranking_csv(eval_dir / "ranking.csv", rank_rows, rank_base)
    if ec["stability"]:
        if cfg["model"]["load_in_4bit"]:
            results["stability"] = stability(cfg, backend, examples, adapters, rows, needed)
        else:
            results["stability"] = {"status": "skipped", "reason": "model.load_in_4bit=false: "
                                                                   "nothing to compare"}
    results["meta"]["wall_seconds"] = round(time.perf_counter() - t0, 1)

    runs.write_run_info(eval_dir, cfg, stage="eval", backend=backend, adapters=meta["adapters"],
                        inputs=runs.input_record(adapters))
    return results, files.write_evaluation(eval_dir, results, rows)  # results.json last: the marker


def _print_results(results: dict, path: Path) -> int:
    print(tables.format_table(results))
    print(tables.format_verdict(results))
    print(f"[eval] results: {path}")
    return 0
