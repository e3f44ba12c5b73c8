"""The whole experiment in one command: data -> SFT -> DPO -> evaluation, skipping finished stages.

Commands:
    # CPU smoke run on the tiny random Llama (about a minute; inputs from `make models data-tiny`)
    python run_experiment.py --config configs/tiny.yaml output_dir=runs/smoke
    # the CPU demo: SmolLM2-135M on MovieLens-100K (what `make demo` runs)
    python run_experiment.py --config configs/cpu_demo.yaml
    # the thesis setup on a GPU; repeat over seeds; add the compute-matched SFT control arm
    python run_experiment.py --config configs/llama3_8b.yaml
    python run_experiment.py --config configs/llama3_8b.yaml "seeds=[1, 2, 3]"
    python run_experiment.py --config configs/llama3_8b.yaml experiment.control_arm=true
    # run it again: finished stages are skipped, an interrupted stage continues from its last checkpoint;
    # --overwrite trains and evaluates everything again
    python run_experiment.py --config configs/llama3_8b.yaml --overwrite

Stages and the file that marks each one finished (a stage whose marker exists is skipped):
    data         data.train_file/val_file/test_file; built from data.source when missing
    sft          <run>/sft/metrics.json                         (train_sft.py)
    dpo          <run>/dpo/metrics.json                         (train_dpo.py)
    sft_control  <run>/sft_control/metrics.json, with experiment.control_arm=true: SFT continued from
                 the SFT adapter for as many optimizer steps as the DPO stage took, at the DPO stage's
                 learning rate (batch, schedule, warmup, optimizer, examples and seed are shared), so
                 "DPO beats SFT" can be told apart from "more training beats less" (train_sft.py);
                 report.md lists what is matched and what cannot be
    eval         <run>/eval/results.json                        (evaluate_dpo.py)
<run> is output_dir, or output_dir/seed-<s> for each s in `seeds`. With seeds, output_dir/aggregate.json
and aggregate.md hold mean ± sd per metric and model, the per-seed verdicts and a pooled comparison
(each test pair's score averaged over the seeds first: n is the number of distinct pairs).
Each stage runs in this process through its script's run(cfg), with this config (the control arm and
the seeds change a few keys of a copy). With experiment.launcher each training stage runs as a child
process under that command instead, reading the resolved config from a temporary YAML file.
A stage folder without its marker but with checkpoint-N/ folders is continued (resume=true is set for
it), so rerunning this command after an interruption is all it takes; --resume here is accepted for
symmetry with the stage scripts. --overwrite reruns every stage (data files are kept).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import tempfile
import time
from pathlib import Path

from dporec import UserError, analysis, report, runs
from dporec.config import parse_args, run_main, save_config, updated
from dporec.models import refuse_without_gpu, release_memory

ROOT = Path(__file__).resolve().parent
SFT, DPO, CONTROL, EVAL = runs.SFT, runs.DPO, runs.CONTROL, runs.EVAL


# ---------------------------------------------------------------------------------------------
# Stages

def ensure_data(cfg: dict) -> str:
    """'skipped' when the three data files (and, for eval.ranking, the candidate sets beside them) exist;
    otherwise build them from data.source (the same seed rebuilds the same splits)."""
    d = cfg["data"]
    files = [Path(d[k]) for k in ("train_file", "val_file", "test_file")]
    from dporec import candidates
    ranking = [] if not cfg["eval"]["ranking"] or d["ranking_file"] else [candidates.default_path(files[2])]
    if all(f.is_file() for f in files + ranking):
        return "skipped"
    if not d["source"]:
        missing = ", ".join(str(f) for f in files if not f.is_file())
        raise UserError(f"data files missing ({missing}) and data.source is not set; build them with "
                        f"python data/prepare_movielens.py --source <ml-1m.zip | recbole:ml-100k> "
                        f"--out {files[0].parent}, or set data.source")
    folder = files[0].parent
    expected = [folder / f"{s}.jsonl" for s in ("train", "val", "test")]
    if [f.resolve() for f in files] != [f.resolve() for f in expected]:
        raise UserError(f"data.source builds train.jsonl, val.jsonl and test.jsonl in one folder; point "
                        f"data.train_file/val_file/test_file at {expected[0]}, {expected[1]}, {expected[2]}")
    from dporec import movielens
    print(f"[data] building {folder} from {d['source']} (seed {cfg['seed']})")
    summary = movielens.build_from_source(d["source"], folder, seed=cfg["seed"],
                                          ranking_candidates=d["ranking_candidates"])
    print(f"[data] {json.dumps(summary['splits'])}")
    for note in summary.get("notes", []):  # a thesis:FILE source says how its split relates to users
        print(f"[data] {note}")
    return "built"


def run_stage(name: str, marker: Path, run, cfg: dict, overwrite: bool) -> str:
    """run(cfg) for one stage unless its marker file says it already finished.

    The stage gets overwrite as given, and resume=true when its folder holds checkpoints of an
    unfinished run.
    """
    folder = marker.parent
    if marker.is_file() and not overwrite:
        print(f"[{name}] skipped: {marker} exists")
        return "skipped"
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
        raise UserError(f"stage {name} failed (exit status {code}); fix the error above and rerun this command")
    if not marker.is_file():
        raise UserError(f"stage {name} ended without writing {marker}")
    return "done"


def stage_runner(script: str, launcher: str | None):
    """The stage script's run(cfg), in this process; or, with experiment.launcher, the script under
    that command as a child process.

    `accelerate launch --num_processes N` (several GPUs) needs processes of its own; the child reads
    the resolved config from a YAML file written for it, so it trains exactly what run(cfg) would.
    """
    module = __import__(script)
    if not launcher:
        return module.run

    def child(cfg: dict) -> int:
        with tempfile.TemporaryDirectory(prefix="dporec-launch-") as tmp:
            config = save_config(cfg, Path(tmp) / "config.yaml")
            cmd = [*shlex.split(launcher), str(ROOT / f"{script}.py"), "--config", str(config)]
            print(f"[launch] {shlex.join(cmd)}", flush=True)
            return subprocess.call(cmd)
    return child


def run_once(cfg: dict, config_path: str = "<your config>") -> tuple[dict, dict]:
    """SFT -> DPO (-> control) -> eval for one run folder. Returns (results, {stage: status})."""
    import evaluate_dpo
    overwrite, launcher = cfg["overwrite"], cfg["experiment"]["launcher"]
    train_sft, train_dpo = stage_runner("train_sft", launcher), stage_runner("train_dpo", launcher)
    status = {SFT: run_stage(SFT, runs.marker(cfg, SFT), train_sft, cfg, overwrite)}
    status[DPO] = run_stage(DPO, runs.marker(cfg, DPO), train_dpo, cfg, overwrite)
    eval_cfg = cfg
    if cfg["experiment"]["control_arm"]:
        control = updated(cfg, analysis.control_settings(runs.stage_dir(cfg, DPO), runs.stage_dir(cfg, SFT), CONTROL))
        status[CONTROL] = run_stage(CONTROL, runs.marker(cfg, CONTROL), train_sft, control, overwrite)
        adapters = {**cfg["eval"]["adapters"], CONTROL: str(runs.stage_dir(cfg, CONTROL))}
        eval_cfg = updated(cfg, {"eval.adapters": adapters})
    expected = set(eval_cfg["eval"]["models"]) | set(eval_cfg["eval"]["adapters"])
    results_file = runs.marker(cfg, EVAL)
    # An evaluation that lacks a model asked for now (e.g. the control arm was switched on later) is redone.
    stale = results_file.is_file() and not expected <= set(analysis.read_json(results_file)["models"])
    status[EVAL] = run_stage(EVAL, results_file, lambda c: evaluate_dpo.run(c, config_path=config_path),
                             eval_cfg, overwrite or stale)
    results = analysis.read_json(results_file)
    if results.get("comparison") and "p_value" not in results["comparison"]:
        print("[eval] results.json predates the paired permutation test: re-analysing its predictions.csv")
        evaluate_dpo.run(eval_cfg, from_predictions=results_file.parent / "predictions.csv")
        results = analysis.read_json(results_file)
    return results, status


# ---------------------------------------------------------------------------------------------

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
        print(report.format_table(results))
        print(report.format_verdict(results))
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
    rows = {s: report.read_predictions(out_dir / f"seed-{s}" / EVAL / "predictions.csv") for s in seeds}
    agg = report.write_aggregate(out_dir, analysis.aggregate_seeds(results_by_seed, rows, cfg, out_dir))

    for s, results in results_by_seed.items():
        print(f"\nseed {s}:")
        print(report.format_table(results))
    print()
    print(report.aggregate_markdown(agg))
    if agg["pooled"]:
        print(report.format_verdict({"comparison": agg["pooled"]}))
    _print_status(status, time.perf_counter() - t0)
    for s in seeds:
        print(f"results (seed {s}): {out_dir / f'seed-{s}' / EVAL / runs.MARKERS[EVAL]}")
    print(f"aggregate: {out_dir / 'aggregate.json'} and {out_dir / 'aggregate.md'}")
    return 0


def _print_status(status: dict, seconds: float) -> None:
    done = [k for k, v in status.items() if v != "skipped"]
    skipped = [k for k, v in status.items() if v == "skipped"]
    print(f"stages run: {', '.join(done) or 'none'}; skipped (already finished): {', '.join(skipped) or 'none'}; "
          f"{seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(__doc__, argv)
    return run(cfg, args.config)


if __name__ == "__main__":
    run_main(main)
