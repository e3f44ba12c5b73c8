"""The whole experiment: data -> SFT -> DPO (-> compute-matched control) -> evaluation, skipping finished
stages and resuming interrupted ones, once or over several seeds (what run_experiment.py runs).

Each training stage runs in this process (dporec.training.stages), or, with experiment.launcher, as a
child process of its script under that command (e.g. `accelerate launch` for several GPUs), reading
the resolved config from a temporary YAML file.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dporec import ROOT, UserError, runs
from dporec.analysis.seeds import aggregate_seeds
from dporec.config import save_config, updated
from dporec.data import candidates, sources
from dporec.evaluation.stage import evaluate
from dporec.modeling.backends import release_memory
from dporec.modeling.hardware import refuse_without_gpu
from dporec.onpolicy.stage import run_sampling
from dporec.report import files, markdown, tables
from dporec.report.sentences import verdict_sentence
from dporec.training.stages import run_dpo, run_sft

SFT, DPO, CONTROL, EVAL = runs.SFT, runs.DPO, runs.CONTROL, runs.EVAL
PAIRS, ONPOLICY = runs.ONPOLICY_PAIRS, runs.ONPOLICY
STAGE_SCRIPTS = {SFT: ("train_sft.py", run_sft), DPO: ("train_dpo.py", run_dpo)}


def ensure_data(cfg: dict) -> str:
    """'skipped' when the three data files (and, for eval.ranking, the candidate sets beside them) exist;
    otherwise build them from data.source (the same seed rebuilds the same splits)."""
    d = cfg["data"]
    files_ = [Path(d[k]) for k in ("train_file", "val_file", "test_file")]
    ranking = [] if not cfg["eval"]["ranking"] or d["ranking_file"] else [candidates.default_path(files_[2])]
    if all(f.is_file() for f in files_ + ranking):
        built = files_[0].parent / "summary.json"
        summary = runs.read_json(built) if built.is_file() else {}
        # the task always; the pairs per user when the config builds its data (data.source)
        keys = ("negatives", "train_pairs_per_user", "eval_pairs_per_user") if d["source"] else ("negatives",)
        for key in keys:
            if summary.get(key) is not None and summary[key] != d[key]:
                raise UserError(f"{files_[0].parent} was built with {key}={summary[key]} ({built}), but "
                                f"data.{key}={d[key]}: point data.train_file/val_file/test_file at another "
                                f"folder to build that data there")
        return "skipped"
    if not d["source"]:
        missing = ", ".join(str(f) for f in files_ if not f.is_file())
        raise UserError(f"data files missing ({missing}) and data.source is not set; build them with "
                        f"python data/prepare_movielens.py --source SOURCE --out {files_[0].parent}, or set "
                        f"data.source (SOURCE: {sources.forms()})")
    folder = files_[0].parent
    expected = [folder / f"{s}.jsonl" for s in ("train", "val", "test")]
    if [f.resolve() for f in files_] != [f.resolve() for f in expected]:
        raise UserError(f"data.source builds train.jsonl, val.jsonl and test.jsonl in one folder; point "
                        f"data.train_file/val_file/test_file at {expected[0]}, {expected[1]}, {expected[2]}")
    print(f"[data] building {folder} from {d['source']} (seed {cfg['seed']})")
    summary = sources.build(**sources.config_build(cfg))
    print(f"[data] {json.dumps(summary['splits'])}")
    for note in summary.get("notes", []):  # a thesis:FILE source says how its split relates to users
        print(f"[data] {note}")
    return "built"


def run_stage(name: str, marker: Path, run, cfg: dict, overwrite: bool) -> str:
    """run(cfg) for one stage unless its marker file says it already finished from the inputs it has now.

    The stage gets overwrite as given (or true when it is stale: an adapter it was built from has changed
    since), and resume=true when its folder holds checkpoints of an unfinished run.
    """
    folder = marker.parent
    if marker.is_file() and not overwrite:
        changed = runs.changed_inputs(folder)
        if not changed:
            print(f"[{name}] skipped: {marker} exists")
            return "skipped"
        print(f"[{name}] stale: built from {', '.join(changed)}, which has changed since; running it again")
        overwrite = True
    cfg = updated(cfg, {"overwrite": overwrite, "resume": False})
    if not overwrite and runs.checkpoints_in(folder):
        cfg["resume"] = True
        print(f"[{name}] {folder} holds an unfinished run: resuming it")
    print(f"[{name}] running: {folder}")
    t0 = time.perf_counter()
    code = run(cfg)
    release_memory()
    print(f"[{name}] finished in {time.perf_counter() - t0:.1f} s")
    if code:
        raise UserError(f"stage {name} failed (exit status {code}); "
                        "fix the error above and rerun this command")
    if not marker.is_file():
        raise UserError(f"stage {name} ended without writing {marker}")
    return "done"


def stage_runner(stage: str, launcher: str | None):
    """The training stage's function, in this process; or, with experiment.launcher, its script under
    that command as a child process.

    `accelerate launch --num_processes N` (several GPUs) needs processes of its own; the child reads
    the resolved config from a YAML file written for it, so it trains exactly what the function would.
    """
    script, function = STAGE_SCRIPTS[stage]
    if not launcher:
        return function

    def child(cfg: dict) -> int:
        with tempfile.TemporaryDirectory(prefix="dporec-launch-") as tmp:
            config = save_config(cfg, Path(tmp) / "config.yaml")
            cmd = [*shlex.split(launcher), str(ROOT / script), "--config", str(config)]
            print(f"[launch] {shlex.join(cmd)}", flush=True)
            return subprocess.call(cmd)
    return child


def dpo_steps(dpo_dir: Path, arm: str) -> int:
    """The finished DPO stage's optimizer steps: what the control and on-policy arms are sized to."""
    steps = runs.read_json(dpo_dir / "metrics.json").get("steps")
    if not isinstance(steps, int) or steps <= 0:
        raise UserError(f"{dpo_dir / 'metrics.json'} has no positive 'steps' count; cannot size the {arm}")
    return steps


def control_settings(dpo_dir: Path, sft_dir: Path, run_name: str = CONTROL) -> dict:
    """{config key: value} that make the SFT stage continue the SFT adapter as the compute-matched
    control: the DPO stage's optimizer steps and learning rate; batch size, accumulation, schedule,
    warmup, optimizer, training examples and seed come from the shared train/data sections."""
    steps = dpo_steps(dpo_dir, "control arm")
    lr = runs.read_yaml(dpo_dir / "config.yaml")["dpo"]["learning_rate"]
    return {"sft.init_adapter": str(sft_dir), "sft.run_name": run_name, "sft.max_steps": steps,
            "sft.learning_rate": lr}


def onpolicy_settings(cfg: dict) -> dict:
    """{config key: value} that make the DPO stage the on-policy arm: DPO from the SFT adapter on the
    sampled pairs, for exactly the off-policy DPO's optimizer steps; beta, learning rate, loss,
    reference and every shared setting come from the same config, so only the pairs differ."""
    steps = dpo_steps(runs.stage_dir(cfg, DPO), "on-policy arm")
    return {"dpo.run_name": ONPOLICY, "dpo.max_steps": steps, "data.max_train_examples": None,
            "data.train_file": str(runs.stage_dir(cfg, PAIRS) / "pairs.jsonl")}


def run_once(cfg: dict, config_path: str = "<your config>") -> tuple[dict, dict]:
    """SFT -> DPO (-> control) (-> on-policy pairs -> on-policy DPO) -> eval for one run folder.
    Returns (results, {stage: status})."""
    overwrite, launcher = cfg["overwrite"], cfg["experiment"]["launcher"]
    train_sft = stage_runner(SFT, launcher)
    # `import unsloth` (SFT under Unsloth, in this process) patches transformers' Llama for the whole
    # process; the shared-prompt DPO runs on hf and needs the unpatched one: a child process of its own
    clean = cfg["dpo"]["prefix_sharing"] and "unsloth" in sys.modules
    train_dpo = stage_runner(DPO, launcher or (shlex.quote(sys.executable) if clean else None))
    status = {SFT: run_stage(SFT, runs.marker(cfg, SFT), train_sft, cfg, overwrite)}
    status[DPO] = run_stage(DPO, runs.marker(cfg, DPO), train_dpo, cfg, overwrite)
    eval_cfg = cfg
    if cfg["experiment"]["control_arm"]:
        control = updated(cfg, control_settings(runs.stage_dir(cfg, DPO), runs.stage_dir(cfg, SFT), CONTROL))
        status[CONTROL] = run_stage(CONTROL, runs.marker(cfg, CONTROL), train_sft, control, overwrite)
        adapters = {**eval_cfg["eval"]["adapters"], CONTROL: str(runs.stage_dir(cfg, CONTROL))}
        eval_cfg = updated(eval_cfg, {"eval.adapters": adapters})
    if cfg["experiment"]["on_policy_arm"]:
        status[PAIRS] = run_stage(PAIRS, runs.marker(cfg, PAIRS), run_sampling, cfg, overwrite)
        arm = updated(cfg, onpolicy_settings(cfg))
        status[ONPOLICY] = run_stage(ONPOLICY, runs.marker(cfg, ONPOLICY), train_dpo, arm, overwrite)
        adapters = {**eval_cfg["eval"]["adapters"], ONPOLICY: str(runs.stage_dir(cfg, ONPOLICY))}
        eval_cfg = updated(eval_cfg, {"eval.adapters": adapters})
    expected = set(eval_cfg["eval"]["models"]) | set(eval_cfg["eval"]["adapters"])
    results_file = runs.marker(cfg, EVAL)
    # An evaluation that lacks a model asked for now (e.g. the control arm was switched on later) is redone.
    stale = results_file.is_file() and not expected <= set(runs.read_json(results_file)["models"])
    status[EVAL] = run_stage(EVAL, results_file, lambda c: evaluate(c, config_path=config_path),
                             eval_cfg, overwrite or stale)
    results = runs.read_json(results_file)
    if results.get("comparison") and "a_accuracy" not in results["comparison"]:
        print("[eval] results.json was written by an earlier version: re-analysing its predictions.csv")
        evaluate(eval_cfg, from_predictions=results_file.parent / "predictions.csv")
        results = runs.read_json(results_file)
    return results, status


def run(cfg: dict, config_path: str = "<your config>") -> int:
    """Data, then every stage of every seed, then the tables and verdicts."""
    refuse_without_gpu(cfg)  # before building data or loading anything: a GPU-sized model on a CPU stops here
    t0 = time.perf_counter()
    status = {"data": ensure_data(cfg)}
    out_dir = Path(cfg["output_dir"])
    seeds = cfg["seeds"]

    if not seeds:
        results, st = run_once(cfg, config_path)
        status.update(st)
        print(tables.format_table(results))
        print(tables.format_verdict(results))
        _print_status(status, time.perf_counter() - t0)
        print(f"results: {runs.marker(cfg, EVAL)}")
        return 0

    if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"seeds must be distinct integers, got {seeds}")
    results_by_seed = {}
    for s in seeds:
        seed_cfg = updated(cfg, {"seed": s, "output_dir": str(out_dir / f"seed-{s}"), "seeds": None})
        print(f"\n===== seed {s}: {seed_cfg['output_dir']} =====")
        results_by_seed[s], st = run_once(seed_cfg, config_path)
        status.update({f"{k} (seed {s})": v for k, v in st.items()})
    rows = {s: files.read_predictions(out_dir / f"seed-{s}" / EVAL / "predictions.csv") for s in seeds}
    ec = cfg["eval"]
    comparisons = {"pooled": ("sft", "dpo", ("SFT", "DPO"), "comparison"),
                   "pooled_control": (CONTROL, "dpo", ("SFT control", "DPO"), "comparison_control"),
                   "pooled_onpolicy": ("sft", ONPOLICY, ("SFT", "on-policy DPO"), "comparison_onpolicy")}
    agg = aggregate_seeds(results_by_seed, rows, comparisons, margin=ec["margin_points"] / 100,
                          alpha=ec["alpha"])
    for s in seeds:
        agg["per_seed"][str(s)]["output_dir"] = str(out_dir / f"seed-{s}")
    for key in comparisons:
        if agg.get(key):
            agg[key]["sentence"] = verdict_sentence(agg[key])
    agg = files.write_aggregate(out_dir, agg)

    for s, results in results_by_seed.items():
        print(f"\nseed {s}:")
        print(tables.format_table(results))
    print()
    print(markdown.aggregate_markdown(agg))
    if agg["pooled"]:
        print(tables.format_verdict({"comparison": agg["pooled"]}))
    _print_status(status, time.perf_counter() - t0)
    for s in seeds:
        print(f"results (seed {s}): {out_dir / f'seed-{s}' / EVAL / runs.MARKERS[EVAL]}")
    print(f"aggregate: {out_dir / 'aggregate.json'} and {out_dir / 'aggregate.md'}")
    return 0


def _print_status(status: dict, seconds: float) -> None:
    done = [k for k, v in status.items() if v != "skipped"]
    skipped = [k for k, v in status.items() if v == "skipped"]
    print(f"stages run: {', '.join(done) or 'none'}; skipped (already finished): "
          f"{', '.join(skipped) or 'none'}; {seconds:.0f} s")
