"""Shared test helpers: the repository's paths and the tiny configuration pointed at the fixtures."""
from __future__ import annotations

from pathlib import Path

from dporec import ROOT

TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tiny_overrides(tiny_data: Path, tiny_model: Path, out: Path) -> list[str]:
    """configs/tiny.yaml's KEY=VALUE overrides for the tiny fixtures and a run folder."""
    return [f"model.name={tiny_model}", f"output_dir={out}",
            f"data.train_file={tiny_data / 'train.jsonl'}", f"data.val_file={tiny_data / 'val.jsonl'}",
            f"data.test_file={tiny_data / 'test.jsonl'}"]


# The top-level scripts' main(argv), called through the package (no test imports a script).

def sft_main(argv: list[str]) -> int:
    from dporec.config import parse_args
    from dporec.training.stages import run_sft
    return run_sft(parse_args("", argv)[1])


def dpo_main(argv: list[str]) -> int:
    from dporec.config import parse_args
    from dporec.training.stages import run_dpo
    return run_dpo(parse_args("", argv)[1])


def evaluate_main(argv: list[str]) -> int:
    from dporec.config import parse_args
    from dporec.evaluation.stage import evaluate
    args, cfg = parse_args("", argv, extra=lambda p: p.add_argument("--from-predictions"))
    return evaluate(cfg, args.from_predictions, args.config)


def experiment_main(argv: list[str]) -> int:
    from dporec import experiment
    from dporec.config import parse_args
    args, cfg = parse_args("", argv)
    return experiment.run(cfg, args.config)


def verify_main(argv: list[str]) -> int:
    from dporec.config import parse_args
    from dporec.preflight.verify import verify

    def extra(p):
        p.add_argument("--smoke", action="store_true")
        p.add_argument("--for-eval", action="store_true")
    args, cfg = parse_args("", argv, extra=extra)
    return verify(cfg, args.config, smoke=args.smoke, for_eval=args.for_eval)
