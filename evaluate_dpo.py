"""Compare base, SFT and DPO on the held-out test pairs: position-debiased likelihood scoring and an
honest statistical verdict.

Commands:
    # CPU smoke run on the tiny random Llama (after train_sft.py and train_dpo.py with the same config)
    python evaluate_dpo.py --config configs/tiny.yaml
    # a real run; add free-text generation; add the 4-bit vs 16-bit stability check; evaluate again
    python evaluate_dpo.py --config configs/llama3_8b.yaml
    python evaluate_dpo.py --config configs/llama3_8b.yaml eval.generate=true
    python evaluate_dpo.py --config configs/llama3_8b.yaml eval.stability=true --overwrite
    # ranking adherence over N candidates per test user as well (data/prepare_movielens.py writes them)
    python evaluate_dpo.py --config configs/llama3_8b.yaml eval.ranking=true --overwrite
    # more adapters next to base/sft/dpo (e.g. the compute-matched SFT control)
    python evaluate_dpo.py --config configs/llama3_8b.yaml "eval.adapters={sft_control: runs/x/sft_control}"
    # re-analyse a finished evaluation from its predictions.csv: no model is loaded (seconds, no GPU)
    python evaluate_dpo.py --config configs/tiny.yaml --from-predictions runs/tiny/eval/predictions.csv
    python evaluate_dpo.py --config configs/tiny.yaml --from-predictions old/predictions.csv output_dir=runs/re

Writes <output_dir>/eval/: predictions.csv (one row per test pair, option order and model),
accuracy.png, confidence.png, report.md, config.yaml, run_info.json, with eval.ranking also
ranking.csv and ranking.png, and, last (marking the evaluation finished), results.json.

--from-predictions PATH recomputes every statistic, results.json, report.md and the plots into
<output_dir>/eval/ from a predictions.csv (this version's or an earlier one's), with this config's
eval.bootstrap_samples, eval.alpha and seed. PATH = <output_dir>/eval/predictions.csv re-analyses in
place: predictions.csv, config.yaml and run_info.json stay as scored, the old results.json is kept
as results.previous.json, and what a CSV cannot give back (timings, the stability check, the scoring
setup) is carried over from it. Any other PATH is copied into <output_dir>/eval/, which must not
hold a finished evaluation unless --overwrite is given.

How it measures:
  - Every test pair is scored in its original option order and with the options swapped, so a
    model that always answers "A" scores 50%, not 100% (the precursor's always-A labels).
  - Likelihood scoring, no sampling: for both orders the model scores both complete answers;
    the decision is the option whose "The better recommendation is Option X" has the higher
    log-prob (dporec/scoring.py). Full-answer log-probs (the quantity DPO trains) are reported too.
  - The 4-bit base is loaded once; adapters are switched with set_adapter; the base is scored with
    its adapters disabled. A DPO run started from SFT also saved a ref/ sub-folder (the frozen
    reference); the top-level adapter, the policy, is what is evaluated.
  - Verdict: two-order accuracy DPO vs SFT; a paired sign-flip permutation test over users of that
    same difference and the CI that inverts it; an exact McNemar test on right-in-both-orders as a
    secondary line; the test size a difference of this size would need (dporec/stats.py). With an
    sft_control adapter, DPO vs that control too, and what the control matches (dporec/analysis.py).
  - eval.ranking=true also ranks N rated candidates per test user (ranking_test.jsonl beside the test
    file) from all their pairs in both orders: Kendall tau-b, NDCG@3 and hit@1 against the user's
    ratings, per model and baseline rule, DPO vs SFT paired over users (dporec/ranking.py); adds
    ranking.csv and ranking.png.
  - eval.generate=true adds greedy generation, parsed strictly (an answer naming both options or
    neither is invalid). eval.stability=true loads the base again unquantized and reports how many
    decisions change between 4-bit and 16-bit (fp32 on CPU).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from dporec import UserError, analysis, baselines, report, runs, splits, stats
from dporec import data as D
from dporec.config import parse_args, run_main

# The ML stack (torch, transformers, peft via dporec.models/scoring) is imported inside the functions
# that score, so --from-predictions runs without it.

def _active(model, name: str, adapters: dict):
    """Context in which `model` behaves as model `name`."""
    if adapters[name] is None:
        return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    model.set_adapter(name)
    return nullcontext()


def score_all(model, tok, examples, adapters: dict, cfg: dict, tag: str = "", info=None) -> tuple[dict, dict]:
    """({name: prediction rows}, {name: seconds}) for every model, likelihood (+ generation) scoring."""
    from dporec import generation, scoring
    ec, fmt = cfg["eval"], cfg["data"]["prompt_format"]
    rows, seconds = {}, {}
    for name in adapters:
        t0 = time.perf_counter()
        with _active(model, name, adapters):
            r = scoring.score_pairs(model, tok, examples, fmt, ec["batch_size"], desc=f"scoring {name}{tag}",
                                    model_name=name, info=info)
            if ec["generate"] and not tag:
                gen = generation.generate_choices(model, tok, examples, fmt, ec["batch_size"], ec["max_new_tokens"],
                                               model_name=name, desc=f"generating {name}")
                r = generation.attach_generations(r, gen)
                valid = sum(g["parsed"] is not None for g in gen)
                print(f"[eval] {name}: {valid}/{len(gen)} generated answers name exactly one option")
        rows[name], seconds[name] = r, time.perf_counter() - t0
        print(f"[eval] {name}{tag}: scored {len(examples)} pairs x 2 orders in {seconds[name]:.1f}s")
    return rows, seconds


def load_models(cfg: dict, backend: str, adapters: dict):
    from dporec import models
    base, tok = models.load_base(cfg, backend)
    with_adapters = {n: p for n, p in adapters.items() if p is not None}
    model = models.attach_adapters(base, with_adapters, cfg["model"]["name"]) if with_adapters else base
    model.eval()
    return model, tok


def _unquantized_bytes(model, dtype) -> int:
    import torch
    n = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)  # bitsandbytes packs two 4-bit values per byte
        n += int(torch.Size(qs.shape).numel()) if qs is not None else p.numel()
    return n * torch.empty((), dtype=dtype).element_size()


def _accuracy(rows) -> float:
    scores = stats.per_pair_scores(rows)[0]
    return sum(scores.values()) / len(scores)


def stability(cfg, backend, examples, adapters, rows_q, needed: int) -> dict:
    """Score again with the base unquantized; agreement of choices and accuracy change per model."""
    import copy

    from dporec import models
    cfg16 = copy.deepcopy(cfg)
    cfg16["model"]["load_in_4bit"] = False
    dtype = models.compute_dtype(cfg16)
    out = {"precision": str(dtype).replace("torch.", ""), "status": "skipped"}
    reason = models.prequantized_reason(cfg)  # decided before loading: same under unsloth and hf, no download
    if reason:
        out["reason"] = reason
        print(f"[eval] stability check skipped: {reason}")
        return out
    from dporec.hardware import free_memory
    avail = free_memory()[0]
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
        models.release_memory()
        return out
    rows16, _ = score_all(model, tok, examples, adapters, cfg16, tag=f" ({out['precision']})")
    del model
    models.release_memory()
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


def _analyse(rows: dict, cfg: dict, meta: dict, where: str) -> dict:
    try:
        return analysis.build_results(rows, cfg, meta, control_dir=cfg["eval"]["adapters"].get(analysis.CONTROL))
    except ValueError as e:  # the prediction-row contract (dporec/metrics.py)
        raise UserError(f"{where}: {e}") from None


def _add_baselines(results: dict, cfg: dict, rows: dict, examples=None) -> None:
    """Baselines on the scored pairs: the given test examples, or (re-analysis) those of data.test_file
    that predictions.csv holds, when the file is there and holds them all."""
    if examples is None:
        test_file = Path(cfg["data"]["test_file"])
        wanted = {r["pair_id"] for r in next(iter(rows.values()))}
        examples = [e for e in (D.load_examples(test_file) if test_file.is_file() else []) if e.pair_id in wanted]
        if len(examples) != len(wanted):
            print(f"[eval] baselines skipped: {test_file} does not hold the {len(wanted)} pairs of these predictions")
            return
    ec = cfg["eval"]
    baselines.add_to_results(results, examples, cfg["data"]["train_file"], rows,
                             n_boot=ec["bootstrap_samples"], seed=cfg["seed"], alpha=ec["alpha"])


def reanalyse(cfg: dict, source: Path) -> tuple[dict, Path]:
    """--from-predictions: every statistic, results.json, report.md and plots from a predictions.csv."""
    eval_dir = runs.stage_dir(cfg, runs.EVAL)
    target = eval_dir / "predictions.csv"
    in_place = target.is_file() and source.resolve() == target.resolve()
    rows = report.read_predictions(source)
    previous = {}
    if in_place and (eval_dir / "results.json").is_file():
        previous = analysis.read_json(eval_dir / "results.json")
    elif not in_place:
        data = source.read_bytes()  # before prepare_run_dir may clear a folder that holds the source
        eval_dir = runs.prepare_run_dir(eval_dir, cfg, done_marker=runs.MARKERS[runs.EVAL])
        target.write_bytes(data)
        runs.write_run_info(eval_dir, cfg, stage="eval", reanalysed_from=str(source))
    meta = {**previous.get("meta", {}), "reanalysed_from": str(source), "reanalysis_settings": {
        "bootstrap_samples": cfg["eval"]["bootstrap_samples"], "alpha": cfg["eval"]["alpha"], "seed": cfg["seed"]}}
    results = _analyse(rows, cfg, meta, str(source))
    results["meta"]["n_pairs"] = next(iter(results["models"].values()))["n_pairs"]
    _add_baselines(results, cfg, rows)
    for kept in ("stability", "ranking"):  # not in predictions.csv (ranking: ranking.csv)
        if kept in previous:
            results[kept] = previous[kept]
    if previous:  # kept: the numbers it held were derived, but a user may want to compare
        (eval_dir / "results.json").replace(eval_dir / "results.previous.json")
    print(f"[eval] re-analysed {source}: models {', '.join(rows)}; no model loaded")
    return results, report.write_evaluation(eval_dir, results, rows, predictions=False)


def run(cfg: dict, from_predictions: str | Path | None = None, config_path: str = "<your config>") -> int:
    """Score every model on the test pairs (or re-analyse a predictions.csv) and write <output_dir>/eval/.

    config_path only names the config in the advice printed when an adapter is missing.
    """
    if from_predictions:
        results, path = reanalyse(cfg, Path(from_predictions))
        return _print_results(results, path)

    from dporec import models
    backend = models.backend_for(cfg)  # refuses GPU-only configs on a CPU; imports unsloth first when chosen
    ec = cfg["eval"]
    test_file = cfg["data"]["test_file"]
    examples = D.load_examples(test_file, limit=cfg["data"]["max_test_examples"])
    warning = splits.balance_warning(examples, test_file)
    if warning:  # harmless for the two-order metrics, but worth knowing
        print(warning)
    ranking_file = None
    if ec["ranking"]:  # read and checked before any model loads
        from dporec import candidates
        ranking_file = cfg["data"]["ranking_file"] or candidates.default_path(test_file)
        sets = candidates.load(ranking_file, limit=ec["ranking_max_users"])
    adapters = runs.find_adapters(cfg, config_path)
    eval_dir = runs.prepare_run_dir(runs.stage_dir(cfg, runs.EVAL), cfg, done_marker=runs.MARKERS[runs.EVAL])
    print(f"[eval] {len(examples)} test pairs from {test_file}; models: {', '.join(adapters)}")

    t0 = time.perf_counter()
    model, tok = load_models(cfg, backend, adapters)
    from dporec import scoring
    info = scoring.ScoringInfo()
    rows, seconds = score_all(model, tok, examples, adapters, cfg, info=info)
    if ranking_file:
        from dporec import ranking
        rank_rows, rank_seconds = ranking.score_models(model, tok, sets, adapters, cfg, _active)
    needed = _unquantized_bytes(model, models.compute_dtype(cfg)) if ec["stability"] else 0
    del model  # the 4-bit model goes before a 16-bit copy may be loaded
    models.release_memory()

    meta = {
        "test_file": str(test_file), "n_pairs": len(examples), "prompt_format": cfg["data"]["prompt_format"],
        "model": cfg["model"]["name"], "backend": backend, "load_in_4bit": cfg["model"]["load_in_4bit"],
        "scoring": "likelihood, both option orders", "decision_span_fallbacks": info.fallback_decision_spans,
        "adapters": {n: (str(p) if p else None) for n, p in adapters.items()},
        "seconds_per_model": seconds, "test_balance": splits.balance(examples),
    }
    results = _analyse(rows, cfg, meta, str(test_file))
    # simple rules on the same pairs (side files beside data.train_file) + each model's personalised subset
    _add_baselines(results, cfg, rows, examples)
    if ranking_file:
        rank_base = ranking.baseline_rows(sets, cfg["data"]["train_file"])
        results["ranking"] = ranking.results(sets, rank_rows, rank_base, rank_seconds, cfg, ranking_file)
        ranking.write_csv(eval_dir / "ranking.csv", rank_rows, rank_base)
    if ec["stability"]:
        if cfg["model"]["load_in_4bit"]:
            results["stability"] = stability(cfg, backend, examples, adapters, rows, needed)
        else:
            results["stability"] = {"status": "skipped", "reason": "model.load_in_4bit=false: nothing to compare"}
    results["meta"]["wall_seconds"] = round(time.perf_counter() - t0, 1)

    runs.write_run_info(eval_dir, cfg, stage="eval", backend=backend, adapters=meta["adapters"])
    path = report.write_evaluation(eval_dir, results, rows)  # results.json last: marks a finished evaluation
    return _print_results(results, path)


def _print_results(results: dict, path: Path) -> int:
    print(report.format_table(results))
    print(report.format_verdict(results))
    print(f"[eval] results: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(__doc__, argv, extra=lambda p: p.add_argument(
        "--from-predictions", metavar="PATH", help="recompute every statistic from this predictions.csv; no model"))
    return run(cfg, args.from_predictions, args.config)


if __name__ == "__main__":
    run_main(main)
