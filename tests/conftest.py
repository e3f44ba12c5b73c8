"""Shared fixtures: a tiny synthetic dataset and a tiny random Llama, both built locally in seconds.

Nothing here touches the network: the data come from the synthetic source, the model and its
tokenizer from dporec.modeling.local_models.build_tiny_llama.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dporec import log
from tests.helpers import TINY_CONFIG, tiny_overrides

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
log.setup()  # the console the scripts set up (dporec.cli), so tests read what a user would see


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """train/val/test.jsonl built from synthetic MovieLens-format ratings (40 users; three training pairs
    per user, so that configs/tiny.yaml's 32 training examples exist)."""
    from dporec.data import sources
    out = tmp_path_factory.mktemp("data")
    sources.build("synthetic:40", out, seed=0, train_pairs_per_user=3)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from dporec.modeling.local_models import build_tiny_llama
    return build_tiny_llama(tmp_path_factory.mktemp("model") / "tiny-llama", seed=0)


@pytest.fixture
def tiny_cfg(tiny_data, tiny_model, tmp_path):
    """configs/tiny.yaml pointed at the fixtures, with a fresh run folder."""
    from dporec.config import load_config
    return load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path / "run"))


@pytest.fixture
def standin_unsloth(monkeypatch):
    """Patch LlamaModel.forward for the whole process the way Unsloth does; returns the calls it saw as
    (training, mask dropped)."""
    from transformers.models.llama import modeling_llama
    original = modeling_llama.LlamaModel.forward
    calls = []

    def forward(self, *args, attention_mask=None, **kwargs):
        dropped = self.training and attention_mask is not None and attention_mask.dim() == 4
        calls.append((self.training, dropped))
        return original(self, *args, attention_mask=None if dropped else attention_mask, **kwargs)

    forward.__module__ = "standin_unsloth.models.llama"  # where a patch's forward lives: not transformers
    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", forward)
    return calls
