"""Shared test helpers: the repository's paths, the tiny configuration pointed at the fixtures, and the
scripts' commands as the scripts run them (dporec.cli: the real parsers; no test imports a script)."""
from __future__ import annotations

from pathlib import Path

from dporec import ROOT, cli

TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tiny_overrides(tiny_data: Path, tiny_model: Path, out: Path) -> list[str]:
    """configs/tiny.yaml's KEY=VALUE overrides for the tiny fixtures and a run folder."""
    return [f"model.name={tiny_model}", f"output_dir={out}",
            f"data.train_file={tiny_data / 'train.jsonl'}", f"data.val_file={tiny_data / 'val.jsonl'}",
            f"data.test_file={tiny_data / 'test.jsonl'}"]


# The scripts' main(argv): each script's main is cli.<its name>(argv, __doc__)
sft_main, dpo_main, sample_main = cli.train_sft, cli.train_dpo, cli.sample_onpolicy
evaluate_main, experiment_main, verify_main = cli.evaluate_dpo, cli.run_experiment, cli.verify_setup
