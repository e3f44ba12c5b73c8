"""Preflight's optional smoke run: a few SFT and DPO steps on a tiny model, through the real stages,
with the backend the user's config resolves to."""
from __future__ import annotations

import logging
import tempfile
import time
from functools import partial
from pathlib import Path

from dporec import ROOT, UserError
from dporec.config import load_config, updated
from dporec.data import sources
from dporec.modeling import local_models
from dporec.preflight.table import FAIL, OK, row
from dporec.training.stages import run_dpo, run_sft

log = logging.getLogger(__name__)


def check_smoke(ctx):
    """A few SFT and DPO steps on a tiny model and synthetic data, through the stages' own functions."""
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="dporec-smoke-") as tmp:
        tmp = Path(tmp)
        model_dir = local_models.build_tiny_llama(tmp / "tiny-llama", seed=0)
        sources.build("synthetic:30", tmp / "data", seed=0)
        cfg = smoke_config(ctx, tmp, model_dir)
        from dporec.modeling import runtime
        rt = runtime.setup(cfg, "sft")  # the same backends as this process: nothing new is imported
        for stage, run in (("SFT", run_sft), ("DPO", run_dpo)):
            code = _call(partial(run, rt=rt), cfg)
            if code:
                return row(FAIL, "smoke training", f"{stage} exited with status {code} (output above)",
                           "read the error above; python train_sft.py "
                           "--config configs/tiny.yaml reproduces it")
    return row(OK, "smoke training", f"3 SFT + 3 DPO steps on a tiny 4-bit Llama in {time.time() - t0:.0f} s "
                                     f"(backend {_backend(ctx)})")


def _backend(ctx) -> str:
    """The backend this process was set up for (verify's process setup), else hf."""
    return ctx.runtime.process_backend if ctx.runtime else "hf"


def smoke_config(ctx, tmp: Path, model_dir: Path) -> dict:
    """The smoke run's config. It keeps the backend the process setup chose for the user's config: with
    backend auto the tiny config would import Unsloth after this process imported transformers. DPO runs
    on that backend too: with the shared prompt on hf, without under Unsloth (which cannot run it)."""
    data = tmp / "data"
    return updated(load_config(ROOT / "configs" / "tiny.yaml"), {
        "model.name": str(model_dir), "model.backend": _backend(ctx),
        "dpo.prefix_sharing": _backend(ctx) == "hf",
        "output_dir": str(tmp / "run"),
        "data.train_file": str(data / "train.jsonl"), "data.val_file": str(data / "val.jsonl"),
        "data.test_file": str(data / "test.jsonl"), "sft.max_steps": 3, "dpo.max_steps": 3,
        "data.max_train_examples": 12})


def _call(run, cfg) -> int:
    try:
        return run(cfg) or 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except UserError as e:
        log.error(f"error: {e}")
        return 2
