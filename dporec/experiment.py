"""The whole experiment: data -> SFT -> DPO -> each switched-on arm's stages (dporec.arms) -> evaluation,
skipping finished stages, rerunning stale ones and continuing interrupted ones, once or over several seeds
(what run_experiment.py runs).

One process setup (modeling.runtime) decides every stage's backend. Where each stage starts, it is decided
whether it may run in this process: only when its backend is the one this process loaded and, on hf, when
nothing has patched the model classes by then (Runtime.runs_here). Otherwise (DPO's shared-prompt forward
on hf after Unsloth loaded for SFT, any hf stage after something patched Llama) and, with
experiment.launcher, for every training stage, it runs as a fresh child process of its script with the
same config and its StageSpec handed over in files.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from dporec import UserError, arms
from dporec.analysis.seeds import aggregate_seeds
from dporec.config import updated
from dporec.data import built, candidates, sources
from dporec.evaluation.stage import evaluate, read_results
from dporec.files import read_json
from dporec.modeling import runtime
from dporec.modeling.backends import release_memory
from dporec.onpolicy.stage import run_sampling
from dporec.report import markdown, outputs, tables
from dporec.report.predictions import FILE as PREDICTIONS_FILE
from dporec.report.predictions import GENERATIONS_FILE, read_generations, read_predictions
from dporec.report.predictions import PERSONAL_FILE as PERSONAL_PREDICTIONS
from dporec.report.sentences import verdict_sentence
from dporec.runs import lifecycle, provenance
from dporec.runs.adapters import FinishedRun, eval_adapters, run_stages, sft_adapter, sft_adapter_given
from dporec.training.stages import run_dpo, run_sft

log = logging.getLogger(__name__)
RUNNERS = {"sft": run_sft, "dpo": run_dpo, "sampling": run_sampling}  # by arms.Stage.kind


def ensure_data(cfg: dict) -> str:
    """'skipped' when the three data files (and, for eval.ranking, the candidate sets beside them) exist and
    agree with the config; otherwise build them from data.source (the same seed rebuilds the same splits)."""
    d = cfg["data"]
    files_ = [Path(d[k]) for k in ("train_file", "val_file", "test_file")]
    ranking = [] if not cfg["eval"]["ranking"] or d["ranking_file"] else [candidates.default_path(files_[2])]
    if all(f.is_file() for f in files_ + ranking):
        built.check_agrees(d)
        return "skipped"
    if not d["source"]:
        missing = ", ".join(str(f) for f in files_ if not f.is_file())
        raise UserError(f"data files missing ({missing}) and data.source is not set; build them with "
                        f"python data/prepare_movielens.py --source SOURCE --out {files_[0].parent}, or set "
                        f"data.source (SOURCE: {sources.forms()})")
    folder = files_[0].parent
    expected = [folder / f"{s}.jsonl" for s in built.SPLITS]
    if [f.resolve() for f in files_] != [f.resolve() for f in expected]:
        raise UserError(f"data.source builds train.jsonl, val.jsonl and test.jsonl in one folder; point "
                        f"data.train_file/val_file/test_file at {expected[0]}, {expected[1]}, {expected[2]}")
    log.info(f"[data] building {folder} from {d['source']} (seed {cfg['seed']})")
    summary = sources.build(**sources.config_build(cfg))
    built.check_not_empty(summary, d["source"])
    log.info(f"[data] {json.dumps(summary['splits'])}")
    for note in summary.get("notes", []):  # a thesis:FILE source says how its split relates to users
        log.info(f"[data] {note}")
    return "built"


def run_stage(cfg: dict, spec: arms.StageSpec, run, rerun: bool = False) -> str:
    """run(cfg, spec) for one stage unless its marker says it already finished from the inputs it has now.

    The stage gets overwrite=true when the user asked for it, when `rerun` or when it is stale (an adapter
    it was built from has changed since), else resume=auto: an unfinished folder is continued, a missing
    one started. The user's config itself is handed over unchanged.
    """
    stage = spec.stage
    folder, marker = stage.folder(cfg["output_dir"]), stage.marker_file(cfg["output_dir"])
    overwrite = cfg["overwrite"] or rerun
    recipe = provenance.recipe(cfg, spec)  # what the stage would be built from now
    if not overwrite and lifecycle.marker_broken(folder, stage.marker):
        log.info(f"[{stage.name}] {marker} is half-written or unreadable: running the stage again")
        overwrite = True
    changed = None if overwrite else lifecycle.stale_inputs(folder, stage.marker, recipe)
    if changed is not None:
        if not changed:
            log.info(f"[{stage.name}] skipped: {marker} exists")
            return "skipped"
        log.info(f"[{stage.name}] stale: built from other inputs or settings ({'; '.join(changed)}); "
                 "running it again")
        overwrite = True
    if not overwrite and lifecycle.unfinished(folder, stage.marker):
        other = provenance.recipe_changes(folder, recipe, provenance.MAY_CHANGE_ON_RESUME)
        if other:
            log.info(f"[{stage.name}] {folder} holds an unfinished run started with other settings or data "
                     f"({'; '.join(other)}): starting it over")
            overwrite = True
        else:
            log.info(f"[{stage.name}] {folder} holds an unfinished run: resuming it")
    log.info(f"[{stage.name}] running: {folder}")
    t0 = time.perf_counter()
    code = run(cfg, replace(spec, resume=False if overwrite else "auto", overwrite=overwrite))
    release_memory()
    log.info(f"[{stage.name}] finished in {time.perf_counter() - t0:.1f} s")
    if code:
        raise UserError(f"stage {stage.name} failed (exit status {code}); "
                        "fix the error above and rerun this command")
    if not marker.is_file():
        raise UserError(f"stage {stage.name} ended without writing {marker}")
    return "done"


def runner(stage: arms.Stage, rt: runtime.Runtime, launcher: str | None, config_path: str):
    """How a stage runs: its function in this process, or its script as a child process, under
    experiment.launcher for a training stage (e.g. `accelerate launch` for several GPUs) or with this
    Python when this process cannot run it unpatched (decided now, when the stage starts)."""
    if stage.kind == "eval":
        def here(cfg: dict, spec: arms.StageSpec) -> int:
            evaluate(cfg, rt, config_path=config_path, spec=spec)
            return 0
    else:
        def here(cfg: dict, spec: arms.StageSpec) -> int:
            return RUNNERS[stage.kind](cfg, spec, rt)
    return runtime.placed(stage, rt, here, launcher)


def run_once(cfg: dict, rt: runtime.Runtime, config_path: str = "<your config>") -> tuple[dict, dict]:
    """Every stage of one run folder, in arms.stages() order, then the evaluation.
    Returns (results, {stage: status})."""
    launcher = cfg["experiment"]["launcher"]
    done = FinishedRun(cfg, "run_experiment.py")
    status = {}
    if sft_adapter_given(cfg):
        log.info(f"[sft] the run's SFT adapter is dpo.sft_adapter={sft_adapter(cfg)}: not trained here")
        status[arms.SFT.name] = "given"
    for stage in run_stages(cfg):
        spec = arms.spec_for(stage, cfg, done)  # derived once the stages before it have finished
        status[stage.name] = run_stage(cfg, spec, runner(stage, rt, launcher, config_path))
    results_file = arms.EVAL.marker_file(cfg["output_dir"])
    # An evaluation that lacks a model asked for now (e.g. an arm was switched on later) is redone.
    stale = (results_file.is_file() and not lifecycle.marker_broken(results_file.parent, arms.EVAL.marker)
             and not set(eval_adapters(cfg)) <= set(read_json(results_file)["models"]))
    status[arms.EVAL.name] = run_stage(cfg, arms.StageSpec(arms.EVAL),
                                       runner(arms.EVAL, rt, launcher, config_path), rerun=stale)
    results, reanalysed = read_results(cfg, results_file)
    if reanalysed:
        status[arms.EVAL.name] = "re-analysed"
    return results, status


def run(cfg: dict, config_path: str = "<your config>") -> int:
    """The process setup, the data, then every stage of every seed, then the tables and verdicts."""
    # before building data or loading anything: a GPU-sized model on a CPU stops here
    rt = runtime.setup(cfg, "dpo" if sft_adapter_given(cfg) else "sft")
    t0 = time.perf_counter()
    status = {"data": ensure_data(cfg)}
    out_dir = Path(cfg["output_dir"])
    seeds = cfg["seeds"]

    if not seeds:
        results, st = run_once(cfg, rt, config_path)
        status.update(st)
        if st[arms.EVAL.name] == "skipped":  # an evaluation that ran has reported its tables already
            log.info(tables.format_table(results))
            log.info(tables.format_verdict(results))
        _report_status(status, time.perf_counter() - t0)
        log.info(f"results: {arms.EVAL.marker_file(cfg['output_dir'])}")
        return 0

    results_by_seed = {}
    for s in seeds:
        seed_cfg = updated(cfg, {"seed": s, "output_dir": str(out_dir / f"seed-{s}"), "seeds": None})
        log.info(f"\n===== seed {s}: {seed_cfg['output_dir']} =====")
        results_by_seed[s], st = run_once(seed_cfg, rt, config_path)
        status.update({f"{k} (seed {s})": v for k, v in st.items()})
    eval_dirs = {s: arms.EVAL.folder(out_dir / f"seed-{s}") for s in seeds}
    rows = {s: read_predictions(eval_dirs[s] / PREDICTIONS_FILE) for s in seeds}
    personal_csv = {s: eval_dirs[s] / PERSONAL_PREDICTIONS for s in seeds}  # the second verdict's scores
    personal_rows = ({s: read_predictions(p) for s, p in personal_csv.items()}
                     if all(p.is_file() for p in personal_csv.values()) else None)
    generations_csv = {s: eval_dirs[s] / GENERATIONS_FILE for s in seeds}  # the reasoning's answers
    generation_rows = ({s: read_generations(p) for s, p in generations_csv.items()}
                       if all(p.is_file() for p in generations_csv.values()) else None)
    ec = cfg["eval"]
    agg = aggregate_seeds(results_by_seed, rows, arms.comparisons(), margin=ec["margin_points"] / 100,
                          alpha=ec["alpha"], personal_rows_by_seed=personal_rows,
                          generation_rows_by_seed=generation_rows)
    for s in seeds:
        agg["per_seed"][str(s)]["output_dir"] = str(out_dir / f"seed-{s}")
    for c in arms.comparisons():
        for where in (agg, agg["personal"] or {}, agg["reasoning"] or {}):
            if where.get(c.pooled_key):
                where[c.pooled_key]["sentence"] = verdict_sentence(where[c.pooled_key])
    agg = outputs.write_aggregate(out_dir, agg)

    for s, results in results_by_seed.items():
        log.info(f"\nseed {s}:")
        log.info(tables.format_table(results))
    log.info("")
    log.info(markdown.aggregate_markdown(agg))
    if agg[arms.MAIN.pooled_key]:
        personal = (agg["personal"] or {}).get(arms.MAIN.pooled_key)
        log.info(tables.format_verdict({arms.MAIN.key: agg[arms.MAIN.pooled_key],
                                        "personal": {arms.MAIN.key: personal} if personal else None}))
    _report_status(status, time.perf_counter() - t0)
    for s in seeds:
        log.info(f"results (seed {s}): {eval_dirs[s] / arms.EVAL.marker}")
    log.info(f"aggregate: {out_dir / 'aggregate.json'} and {out_dir / 'aggregate.md'}")
    return 0


def _report_status(status: dict, seconds: float) -> None:
    done = [k for k, v in status.items() if v not in ("skipped", "given")]
    skipped = [k for k, v in status.items() if v == "skipped"]
    log.info(f"stages run: {', '.join(done) or 'none'}; skipped (already finished): "
             f"{', '.join(skipped) or 'none'}; {seconds:.0f} s")
