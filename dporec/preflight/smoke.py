"""Preflight's optional smoke run: a few SFT and DPO steps on a tiny model, through the real stages, on the
backends the real run will use: each stage kind on its planned backend (modeling.runtime.plan of the
user's model.backend and dpo.prefix_sharing), in this process where it can run here and otherwise in a
fresh child process, exactly as run_experiment.py decides it (on a GPU with Unsloth: SFT here under
Unsloth, the shared-prompt DPO on hf in a child)."""
from __future__ import annotations

import logging
import tempfile
import time
from functools import partial
from pathlib import Path

from dporec import ROOT, UserError, arms
from dporec.config import load_config, updated
from dporec.data import sources
from dporec.modeling import local_models
from dporec.preflight.table import FAIL, OK, row
from dporec.runs.adapters import FinishedRun
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
        try:  # the user's backends; this process was set up by verify for the user's first stage
            rt = runtime.setup(cfg, "sft")
        except UserError as e:
            return row(FAIL, "smoke training", str(e), "fix model.backend / dpo.prefix_sharing")
        ran = []
        for stage, run in ((arms.SFT, run_sft), (arms.DPO, run_dpo)):
            if rt.backends[stage.kind] is None:  # the config cannot run this stage here: the plan says why
                return row(FAIL, "smoke training", f"{stage.label}: {rt.why[stage.kind]}",
                           "fix model.backend / dpo.prefix_sharing")
            spec = arms.spec_for(stage, cfg, FinishedRun(cfg, "the smoke run"))  # DPO: from the SFT just made
            # as run_experiment.py places it: here, or in a fresh process where this one cannot run it
            fresh = rt.why_not_here(stage.kind) is not None
            placed = runtime.placed(stage, rt, lambda c, spec, run=run: run(c, spec=spec, rt=rt))
            code = _call(partial(placed, spec=spec), cfg)
            if code:
                return row(FAIL, "smoke training", f"{stage.label} on {rt.backends[stage.kind]} exited with "
                                                   f"status {code} (output above)",
                           "read the error above; python train_sft.py "
                           "--config configs/tiny.yaml reproduces it")
            ran.append(f"{stage.label} on {rt.backends[stage.kind]}" + (" in a fresh process" * fresh))
    return row(OK, "smoke training", f"3 SFT + 3 DPO steps on a tiny 4-bit Llama in {time.time() - t0:.0f} s "
                                     f"({', '.join(ran)})")


def smoke_config(ctx, tmp: Path, model_dir: Path) -> dict:
    """The smoke run's config: the tiny model and data with the user's model.backend and dpo.prefix_sharing,
    so each stage runs on the backend the real run gives it. Without a process setup (it failed: its row
    says why) the smoke runs on hf."""
    data = tmp / "data"
    user = ctx.cfg
    return updated(load_config(ROOT / "configs" / "tiny.yaml"), {
        "model.name": str(model_dir), "model.backend": user["model"]["backend"] if ctx.runtime else "hf",
        "dpo.prefix_sharing": user["dpo"]["prefix_sharing"],
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
