"""Shared fixtures: a tiny synthetic dataset and a tiny random Llama, both built locally in seconds.

Nothing here touches the network: the data come from dporec.synthetic, the model and its
tokenizer from dporec.local_models.build_tiny_llama.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Child processes (scripts under data/, accelerate launch) import this checkout too, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train/val/test.jsonl built from synthetic MovieLens-format ratings (40 users)."""
    from dporec import movielens
    out = tmp_path_factory.mktemp("data")
    movielens.build_from_source("synthetic:40", out, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from dporec.local_models import build_tiny_llama
    return build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama", seed=0)


def tiny_overrides(tiny_data: Path, tiny_model: Path, out: Path) -> list[str]:
    return [f"model.name={tiny_model}", f"output_dir={out}",
            f"data.train_file={tiny_data / 'train.jsonl'}", f"data.val_file={tiny_data / 'val.jsonl'}",
            f"data.test_file={tiny_data / 'test.jsonl'}"]


@pytest.fixture
def tiny_cfg(tiny_data, tiny_model, tmp_path):
    """configs/tiny.yaml pointed at the fixtures, with a fresh run folder."""
    from dporec.config import load_config
    return load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path / "run"))
