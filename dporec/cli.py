"""Every entry script's command line: its parser, its one process setup and the stage it calls. The scripts
(train_sft.py, ...) are their docstring and `main(argv)` calling the function of the same name here, so the
tests exercise the real parsers.

Each function takes the arguments as a script gets them (`argv`, None: sys.argv) and the script's
docstring (the --help text), sets up logging once, and returns the exit status; config.run_main turns a
UserError into one line and status 2.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dporec import UserError, arms, log
from dporec.config import load_config, parse_args
from dporec.files import read_json

console = logging.getLogger("dporec.cli")


def _stage_flags(kind: str):
    """--arm NAME (the arm's stage of this kind, derived from the run's finished stages) and --stage-spec
    FILE (run_experiment.py's hand-over to a child process)."""
    names = [a.name for a in arms.ARMS if any(s.kind == kind for s in a.stages)]

    def add(p: argparse.ArgumentParser) -> None:
        if names:
            p.add_argument("--arm", choices=names, help="run this arm's stage instead (dporec/arms.py): "
                                                        + ", ".join(names))
        p.add_argument("--stage-spec", metavar="FILE", help=argparse.SUPPRESS)
    return add


def _spec(args, cfg: dict, kind: str) -> arms.StageSpec | None:
    """The spec a stage script runs: handed over by run_experiment.py, an --arm's, or (None) the default."""
    if getattr(args, "stage_spec", None):
        return arms.spec_from_dict(read_json(args.stage_spec))
    if getattr(args, "arm", None):
        from dporec.runs.adapters import FinishedRun
        arm = arms.by_name(args.arm)
        for problem in arm.unmet(cfg):
            raise UserError(f"--arm {arm.name}: {problem}")
        stage = next(s for s in arm.stages if s.kind == kind)
        return arm.derive(stage, FinishedRun(cfg, f"--arm {arm.name}"))
    return None


def _setup(cfg: dict, kind: str):
    from dporec.modeling import runtime
    return runtime.setup(cfg, kind)


# ---------------------------------------------------------------------------------------------
# Training and sampling stages

def train_sft(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()
    args, cfg = parse_args(doc, argv, extra=_stage_flags("sft"))
    from dporec.training.stages import run_sft
    return run_sft(cfg, _spec(args, cfg, "sft"), _setup(cfg, "sft"))


def train_dpo(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()
    args, cfg = parse_args(doc, argv, extra=_stage_flags("dpo"))
    from dporec.training.stages import run_dpo
    return run_dpo(cfg, _spec(args, cfg, "dpo"), _setup(cfg, "dpo"))


def sample_onpolicy(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()
    args, cfg = parse_args(doc, argv, extra=_stage_flags("sampling"))
    from dporec.onpolicy.stage import run_sampling
    spec = _spec(args, cfg, "sampling")
    return run_sampling(cfg, spec)  # sets the process up only when there is something left to sample


# ---------------------------------------------------------------------------------------------
# Evaluation, the experiment, the preflight

def evaluate_dpo(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()

    def extra(p):
        p.add_argument("--from-predictions", metavar="PATH",
                       help="recompute every statistic from this predictions.csv; no model")
        _stage_flags("eval")(p)

    args, cfg = parse_args(doc, argv, extra=extra)
    from dporec.evaluation.stage import evaluate
    spec = _spec(args, cfg, "eval")
    rt = None if args.from_predictions else _setup(cfg, "eval")
    evaluate(cfg, rt, args.from_predictions, args.config, spec)
    return 0


def run_experiment(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()
    args, cfg = parse_args(doc, argv)
    from dporec import experiment
    return experiment.run(cfg, args.config)


def verify_setup(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()

    def extra(p):
        p.add_argument("--smoke", action="store_true",
                       help="also run a few SFT and DPO steps on a tiny model, each stage on the backend "
                            "the real run gives it (in a fresh process where this one cannot run it)")
        p.add_argument("--for-eval", action="store_true", help="adapters in output_dir must "
                                                               "exist (before evaluation)")
        p.add_argument("--utilisation", metavar="FILE", type=Path,
                       help="predict with the utilisation per backend a benchmark measured "
                            "(benchmarks/bench_train.py writes benchmarks/results/<gpu>.json) instead of "
                            "the assumed ones")

    args, cfg = parse_args(doc, argv, extra=extra)
    from dporec.preflight.verify import verify
    return verify(cfg, args.config, smoke=args.smoke, for_eval=args.for_eval, utilisation=args.utilisation)


# ---------------------------------------------------------------------------------------------
# Using a trained model

def recommend(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()

    def extra(p):
        p.add_argument("--input", required=True, metavar="FILE.jsonl", help="requests: history + candidates")
        p.add_argument("--adapter", metavar="DIR", help="adapter folder, or 'none' for the base model")
        p.add_argument("--explain", action="store_true", help="generate the answer for the top pair")
        p.add_argument("--out", metavar="FILE.jsonl", help="also write the rankings here")

    args, cfg = parse_args(doc, argv, extra=extra)
    from dporec.inference.recommend import recommend as rank
    rank(cfg, args.input, args.adapter, args.explain, args.out, _setup(cfg, "eval"))
    return 0


def export(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()
    from dporec.inference.export import DTYPES
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, metavar="DIR", help="a trained adapter, e.g. runs/x/dpo")
    p.add_argument("--out", required=True, metavar="DIR", help="the merged model's folder")
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="weights' dtype (default bfloat16)")
    p.add_argument("--base", metavar="NAME", help="load this base instead of the one config.yaml names")
    p.add_argument("--backend", default="auto", choices=("auto", "hf", "unsloth"))
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = p.parse_args(argv)
    from dporec.inference.export import export as merge
    merge(args.adapter, args.out, args.dtype, args.base, args.backend, args.overwrite)
    return 0


# ---------------------------------------------------------------------------------------------
# Data

# prepare_movielens.py's flags and the sources.config_build keys they stand for
BUILD_FLAGS = (("source", "source"), ("out", "out_dir"), ("seed", "seed"),
               *((k, k) for k in ("history_len", "train_pairs_per_user", "eval_pairs_per_user",
                                  "ranking_candidates", "negatives", "split", "val_fraction",
                                  "test_fraction", "max_users", "like_threshold", "dislike_threshold")))


def _prepare_parser(doc: str) -> argparse.ArgumentParser:
    from dporec.data import sources
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sources:\n  " + "\n  ".join(sources.help_lines()))
    p.add_argument("--config", type=Path, help="a YAML config: build the data its runs read")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="with --config: config overrides, e.g. data.train_file=... seed=3")
    p.add_argument("--source", help=sources.forms())
    p.add_argument("--ml1m", metavar="PATH",
                   help="with thesis:FILE: ml-1m.zip or folder to recover each line's user id from the "
                        "ratings")
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--seed", type=int, help="picks targets, negatives, splits and positions (default: seed)")
    p.add_argument("--history-len", type=int, help="liked movies shown before the pair (data.history_len)")
    p.add_argument("--train-pairs-per-user", type=int,
                   help="pairs per training user at most (data.train_pairs_per_user)")
    p.add_argument("--eval-pairs-per-user", type=int,
                   help="pairs per val/test user at most (data.eval_pairs_per_user)")
    p.add_argument("--ranking-candidates", type=int,
                   help="movies per test user in ranking_test.jsonl (eval.ranking; 0: no file; "
                        "data.ranking_candidates)")
    p.add_argument("--negatives", choices=("disliked", "matched"),
                   help="disliked: any movie the user rated <= data.dislike_threshold (2) (general appeal "
                        "answers most pairs); "
                        "matched: a disliked movie as popular and as well rated as the liked one "
                        "(personal taste); data.negatives")
    p.add_argument("--split", choices=("users", "temporal"),
                   help="users: random user-disjoint splits; temporal: also training pairs before the test "
                        "period and val/test pairs in it (data.split)")
    p.add_argument("--max-users", type=int,
                   help="draw this many users at random (seeded) from the source before building, e.g. 6040 "
                        "for an ML-1M-size set from ML-25M (data.max_users; default: all)")
    p.add_argument("--like-threshold", type=float,
                   help="stars from which a rating counts as liked (data.like_threshold; default 4)")
    p.add_argument("--dislike-threshold", type=float,
                   help="stars up to which a rating counts as disliked (data.dislike_threshold; default 2)")
    p.add_argument("--val-fraction", type=float, help="share of users in val (data.val_fraction)")
    p.add_argument("--test-fraction", type=float, help="share of users in test (data.test_fraction)")
    p.add_argument("--allow-md5-mismatch", action="store_true",
                   help="accept a release's zip whose MD5 differs from the published one")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    return p


def _with_config(args: argparse.Namespace) -> argparse.Namespace:
    """Flags not given come from --config (sources.config_build), else the config schema's defaults (the
    one home of the build defaults: data.built.DEFAULTS)."""
    from dporec.data import sources
    if args.overrides and not args.config:
        raise UserError(f"KEY=VALUE overrides ({' '.join(args.overrides)}) need --config")
    cfg = load_config(args.config, args.overrides)
    built = sources.config_build(cfg)
    if args.config and not built["source"] and not args.source:
        raise UserError(f"{args.config}: data.source is not set; pass --source or set it in the config")
    for flag, key in BUILD_FLAGS:
        if getattr(args, flag) is None and (args.config or key not in ("source", "out_dir")):
            setattr(args, flag, built[key])
    if args.source is None or args.out is None:
        raise UserError("give --config FILE, or both --source and --out")
    args.out = Path(args.out)
    return args


def prepare_movielens(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()
    from dporec.data import sources
    from dporec.report.tables import pairs_summary, thesis_summary
    args = _with_config(_prepare_parser(doc).parse_intermixed_args(argv))
    if args.out.is_file() or (args.out.is_dir() and any(args.out.iterdir()) and not args.force):
        raise UserError(f"{args.out} exists and is not empty; choose another --out or pass --force")
    source = args.source
    if args.ml1m:
        if not sources.is_thesis(source):
            raise UserError("--ml1m goes with --source thesis:FILE (an "
                            "ml-1m source is given as --source itself)")
        source = f"{source}?ml1m={args.ml1m}"
    settings = {key: getattr(args, flag) for flag, key in BUILD_FLAGS
                if key not in ("source", "out_dir", "seed")}
    summary = sources.build(source, args.out, seed=args.seed, allow_md5_mismatch=args.allow_md5_mismatch,
                            **settings)
    console.info(thesis_summary(summary) if summary.get("kind") == "thesis" else pairs_summary(summary))
    extra = [summary[k]["file"] if k == "personal_test" else "ranking_test.jsonl"
             for k in ("ranking", "personal_test") if summary.get(k)]
    console.info(f"wrote {args.out}/train.jsonl, val.jsonl, test.jsonl, "
                 f"{''.join(f'{e}, ' for e in extra)}and summary.json")
    from dporec.data import built
    built.check_not_empty(summary, source)  # written, but not data a run can use: a non-zero exit
    return 0


def check_dataset(argv: list[str] | None = None, doc: str = "") -> int:
    log.setup()
    from dporec.data import balance, inspect
    from dporec.report.tables import dataset_lines
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="JSONL file(s), e.g. train val test")
    p.add_argument("--rebalance", type=Path, metavar="OUT",
                   help="write a copy with the answer in position A for half (±1) of the examples")
    args = p.parse_args(argv)
    if args.rebalance and len(args.files) > 1:
        raise UserError("--rebalance takes exactly one FILE")
    loaded = inspect.load_all(args.files)
    for path, examples in loaded.items():
        console.info("\n".join(dataset_lines(path, inspect.describe(examples, path))))
        warning = balance.balance_warning(examples, str(path))
        if warning:
            console.warning(f"\n{'!' * 100}\n{warning}\n{'!' * 100}\n")
    if len(loaded) == 1:
        console.info("user overlap: N/A (one file)")
        if args.rebalance:
            b = inspect.write_rebalanced(loaded[args.files[0]], args.rebalance)
            console.info(f"wrote {args.rebalance}: {b['n']} examples, position A {b['A']} "
                     f"({100 * b['a_fraction']:.1f}%), B {b['B']}")
        return 0
    leaks = inspect.leaks(loaded)
    if leaks:
        console.warning("SPLIT LEAK:\n  " + "\n  ".join(leaks))
        return 1
    console.info(f"user overlap: none across {len(loaded)} files")
    return 0


COMMANDS = {f.__name__: f for f in (train_sft, train_dpo, sample_onpolicy, evaluate_dpo, run_experiment,
                                    verify_setup, recommend, export, prepare_movielens, check_dataset)}


def script_name(command: str) -> str:
    """Where a command's script lives: data/ for the data commands, the checkout's top level otherwise."""
    return f"data/{command}.py" if command in ("prepare_movielens", "check_dataset") else f"{command}.py"

