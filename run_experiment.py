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
Each stage runs in this process through its script's main(), with the same config and overrides.
A stage folder without its marker but with checkpoint-N/ folders is continued (--resume is passed to
it), so rerunning this command after an interruption is all it takes; --resume here is accepted for
symmetry with the stage scripts. --overwrite reruns every stage (data files are kept).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dporec import UserError, analysis, report  # noqa: E402
from dporec.models import refuse_without_gpu, release_memory  # noqa: E402
from dporec.config import load_config, parse_args, run_main  # noqa: E402

# Overrides that run_experiment decides per stage or per seed instead of passing them through.
_OWN_KEYS = ("seeds", "resume", "overwrite")
CONTROL = analysis.CONTROL


# ---------------------------------------------------------------------------------------------
# Stages

def ensure_data(cfg: dict) -> str:
    """'skipped' when the three data files exist; otherwise build them from data.source."""
    d = cfg["data"]
    files = [Path(d[k]) for k in ("train_file", "val_file", "test_file")]
    if all(f.is_file() for f in files):
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
    summary = movielens.build_from_source(d["source"], folder, seed=cfg["seed"])
    print(f"[data] {json.dumps(summary['splits'])}")
    for note in summary.get("notes", []):  # a thesis:FILE source says how its split relates to users
        print(f"[data] {note}")
    return "built"


def run_stage(name: str, marker: Path, main, argv: list[str], overwrite: bool) -> str:
    """Run one stage's main() unless its marker file says it already finished."""
    folder = marker.parent
    if marker.is_file() and not overwrite:
        print(f"[{name}] skipped: {marker} exists")
        return "skipped"
    flags = []
    if overwrite:
        flags = ["--overwrite"]
    elif any(folder.glob("checkpoint-[0-9]*")):
        flags = ["--resume"]
        print(f"[{name}] {folder} holds an unfinished run: resuming it")
    print(f"[{name}] running with: {' '.join([*argv, *flags])}")
    t0 = time.perf_counter()
    code = main([*argv, *flags])
    release_memory()
    print(f"[{name}] finished in {time.perf_counter() - t0:.1f} s")
    if code:
        raise UserError(f"stage {name} failed (exit status {code}); fix the error above and rerun this command")
    if not marker.is_file():
        raise UserError(f"stage {name} ended without writing {marker}")
    return "done"


def launched(script: str, launcher: str | None):
    """The stage's main(), in this process; or, with experiment.launcher, the script under that command.

    `accelerate launch --num_processes N` (several GPUs) needs processes of its own, so a launcher
    runs the training script as a child process with the same arguments.
    """
    module = __import__(script)
    if not launcher:
        return module.main

    def child(argv: list[str]) -> int:
        cmd = [*shlex.split(launcher), str(ROOT / f"{script}.py"), *argv]
        print(f"[launch] {shlex.join(cmd)}", flush=True)
        return subprocess.call(cmd)
    return child


def run_once(config: str, overrides: list[str], overwrite: bool) -> tuple[dict, dict]:
    """SFT -> DPO (-> control) -> eval for one run folder. Returns (results, {stage: status})."""
    import evaluate_dpo
    cfg = load_config(config, overrides)
    sft_main = launched("train_sft", cfg["experiment"]["launcher"])
    dpo_main = launched("train_dpo", cfg["experiment"]["launcher"])
    out = Path(cfg["output_dir"])
    argv = ["--config", config, *overrides]
    status = {"sft": run_stage("sft", out / "sft" / "metrics.json", sft_main, argv, overwrite)}
    status["dpo"] = run_stage("dpo", out / "dpo" / "metrics.json", dpo_main, argv, overwrite)
    eval_argv, expected = argv, set(cfg["eval"]["models"]) | set(cfg["eval"]["adapters"])
    if cfg["experiment"]["control_arm"]:
        control = analysis.control_overrides(out / "dpo", out / "sft", CONTROL)
        status[CONTROL] = run_stage(CONTROL, out / CONTROL / "metrics.json", sft_main,
                                    argv + control, overwrite)
        adapters = {**cfg["eval"]["adapters"], CONTROL: str(out / CONTROL)}
        eval_argv, expected = argv + [f"eval.adapters={json.dumps(adapters)}"], expected | {CONTROL}
    results_file = out / "eval" / "results.json"
    # An evaluation that lacks a model asked for now (e.g. the control arm was switched on later) is redone.
    stale = results_file.is_file() and not expected <= set(_read_json(results_file)["models"])
    status["eval"] = run_stage("eval", results_file, evaluate_dpo.main, eval_argv, overwrite or stale)
    results = _read_json(results_file)
    if results.get("comparison") and "p_value" not in results["comparison"]:
        print("[eval] results.json predates the paired permutation test: re-analysing its predictions.csv")
        evaluate_dpo.main([*eval_argv, "--from-predictions", str(out / "eval" / "predictions.csv")])
        results = _read_json(results_file)
    return results, status


# ---------------------------------------------------------------------------------------------
# Reading results back

def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds

def aggregate(results_by_seed: dict, out_dir: Path, cfg: dict) -> dict:
    """aggregate.json + aggregate.md from each seed's results.json and predictions.csv."""
    rows = {s: report.read_predictions(out_dir / f"seed-{s}" / "eval" / "predictions.csv") for s in results_by_seed}
    agg = report._jsonable(analysis.aggregate_seeds(results_by_seed, rows, cfg, out_dir))
    _write_if_changed(out_dir / "aggregate.json", json.dumps(agg, indent=2) + "\n")
    _write_if_changed(out_dir / "aggregate.md", report.aggregate_markdown(agg) + "\n")
    return agg


def _write_if_changed(path: Path, text: str) -> None:
    """Rewriting identical content would make a fully skipped rerun look like it produced something."""
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):
        path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(__doc__, argv)
    refuse_without_gpu(cfg)  # before building data or loading anything: a GPU-sized model on a CPU stops here
    overwrite = cfg["overwrite"]
    passthrough = [o for o in args.overrides if o.split("=", 1)[0].strip() not in _OWN_KEYS]
    t0 = time.perf_counter()
    status = {"data": ensure_data(cfg)}
    out_dir = Path(cfg["output_dir"])
    seeds = cfg["seeds"]

    if not seeds:
        results, st = run_once(args.config, passthrough, overwrite)
        status.update(st)
        print(report.format_table(results))
        print(report.format_verdict(results))
        _print_status(status, time.perf_counter() - t0)
        print(f"results: {out_dir / 'eval' / 'results.json'}")
        return 0

    if len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise UserError(f"seeds must be distinct integers, got {seeds}")
    results_by_seed = {}
    for s in seeds:
        run_dir = out_dir / f"seed-{s}"
        print(f"\n===== seed {s}: {run_dir} =====")
        results, st = run_once(args.config, passthrough + [f"seed={s}", f"output_dir={run_dir}"], overwrite)
        results_by_seed[s] = results
        status.update({f"{k} (seed {s})": v for k, v in st.items()})
    agg = aggregate(results_by_seed, out_dir, cfg)

    for s, results in results_by_seed.items():
        print(f"\nseed {s}:")
        print(report.format_table(results))
    print()
    print(report.aggregate_markdown(agg))
    if agg["pooled"]:
        print(report.format_verdict({"comparison": agg["pooled"]}))
    _print_status(status, time.perf_counter() - t0)
    for s in seeds:
        print(f"results (seed {s}): {out_dir / f'seed-{s}' / 'eval' / 'results.json'}")
    print(f"aggregate: {out_dir / 'aggregate.json'} and {out_dir / 'aggregate.md'}")
    return 0


def _print_status(status: dict, seconds: float) -> None:
    done = [k for k, v in status.items() if v != "skipped"]
    skipped = [k for k, v in status.items() if v == "skipped"]
    print(f"stages run: {', '.join(done) or 'none'}; skipped (already finished): {', '.join(skipped) or 'none'}; "
          f"{seconds:.0f} s")


if __name__ == "__main__":
    run_main(main)
