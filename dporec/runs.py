"""The run-folder layout: stage names, finished markers, checkpoints and adapter folders.

    <output_dir>/sft/          train_sft.py      finished when metrics.json exists
    <output_dir>/dpo/          train_dpo.py      finished when metrics.json exists
    <output_dir>/sft_control/  train_sft.py      (experiment.control_arm) finished when metrics.json exists
    <output_dir>/eval/         evaluate_dpo.py   finished when results.json exists

A training stage folder holding checkpoint-N/ folders but no metrics.json is an unfinished run:
it is continued with resume=true or started over with overwrite=true, never silently mixed.
The scripts, run_experiment.py and verify_setup.py all read the layout from here.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from . import UserError
from .config import save_config

SFT, DPO, CONTROL, EVAL = "sft", "dpo", "sft_control", "eval"
TRAINED_BY = {SFT: "train_sft.py", DPO: "train_dpo.py"}
MARKERS = {SFT: "metrics.json", DPO: "metrics.json", CONTROL: "metrics.json", EVAL: "results.json"}
CHECKPOINT_GLOB = "checkpoint-[0-9]*"
ADAPTER_FILE = "adapter_config.json"


def stage_dir(cfg: dict, stage: str) -> Path:
    return Path(cfg["output_dir"]) / stage


def marker(cfg: dict, stage: str) -> Path:
    """The file whose presence marks `stage` finished (written last by the stage)."""
    return stage_dir(cfg, stage) / MARKERS.get(stage, "metrics.json")


def prepare_run_dir(path: Path, cfg: dict, done_marker: str = "metrics.json") -> Path:
    """Create a stage folder, refusing to clobber a finished run unless overwrite/resume is set."""
    path = Path(path)
    finished = (path / done_marker).exists()
    if finished and cfg.get("resume"):
        raise UserError(f"{path} holds a finished run ({done_marker} exists); nothing to resume. "
                        f"Pass overwrite=true to train again.")
    if finished and not cfg.get("overwrite"):
        raise UserError(f"{path} already holds a finished run ({done_marker} exists). "
                        f"Use another output_dir, or pass --overwrite to replace it.")
    if finished:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_in(path: Path) -> list[Path]:
    return sorted(Path(path).glob(CHECKPOINT_GLOB), key=lambda p: int(p.name.split("-")[1]))


def resume_checkpoint(path: Path, cfg: dict) -> str | None:
    """The checkpoint to continue from (resume=true), or None for a fresh start.

    Call after prepare_run_dir (which refuses finished runs). A folder holding checkpoints of an
    unfinished run is neither silently continued nor silently mixed with a new run.
    """
    from transformers.trainer_utils import get_last_checkpoint
    path = Path(path)
    last = get_last_checkpoint(str(path)) if path.is_dir() else None
    if cfg.get("resume"):
        if last is None:
            raise UserError(f"resume requested, but {path} has no checkpoint-N folder to continue from. "
                            f"Run without --resume to start a fresh run.")
        print(f"[resume] continuing from {last}")
        return last
    if last is not None:
        if not cfg.get("overwrite"):
            raise UserError(f"{path} holds checkpoints of an unfinished run ({Path(last).name}). "
                            f"Pass --resume to continue it, or --overwrite to start over.")
        for ckpt in checkpoints_in(path):
            shutil.rmtree(ckpt)
    return None


def has_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_FILE).is_file()


def sft_adapter_path(cfg: dict) -> Path:
    """The adapter DPO starts from when dpo.init=sft; a clear error when it has not been trained."""
    path = Path(cfg["dpo"]["sft_adapter"] or stage_dir(cfg, SFT))
    if not has_adapter(path):
        raise UserError(f"dpo.init=sft needs a trained SFT adapter in {path}, but there is none. Run "
                        f"python train_sft.py --config <same config> first, point dpo.sft_adapter at one, "
                        f"or set dpo.init=base.")
    return path


def eval_adapters(cfg: dict, with_control: bool = False) -> dict[str, Path | None]:
    """{name: adapter folder, or None for the base model} evaluate_dpo.py loads, in evaluation order.

    with_control adds the control arm's folder when experiment.control_arm is set (run_experiment.py
    passes it to the evaluation as an eval.adapters entry). Names are checked; folders are not.
    """
    found: dict[str, Path | None] = {}
    extra = dict(cfg["eval"]["adapters"] or {})
    for name in cfg["eval"]["models"]:
        if name == "base":
            found[name] = None
        elif name in (SFT, DPO):
            found[name] = stage_dir(cfg, name)
        elif name not in extra:
            raise UserError(f"eval.models: unknown model {name!r}; use base, sft, dpo or a name from eval.adapters")
    for name, path in extra.items():
        if name == "base" or name in (SFT, DPO) and name in cfg["eval"]["models"]:
            raise UserError(f"eval.adapters: the name {name!r} is taken by a built-in model; choose another")
        found[name] = Path(str(path))
    if with_control and cfg["experiment"]["control_arm"]:
        found.setdefault(CONTROL, stage_dir(cfg, CONTROL))
    return found


def missing_adapter_message(name: str, path: Path, config_path: str) -> str:
    how = (f"train it with: python {TRAINED_BY[name]} --config {config_path}" if name in TRAINED_BY
           else "check eval.adapters")
    return f"eval.models asks for {name!r}, but {path} holds no adapter (no {ADAPTER_FILE}); {how}"


def find_adapters(cfg: dict, config_path: str) -> dict[str, Path | None]:
    """eval_adapters, each one present and trained on model.name; fails before any model loads."""
    from .models import check_adapter
    found = eval_adapters(cfg)
    if not found:
        raise UserError("eval.models is empty and eval.adapters names nothing: nothing to evaluate")
    for name, path in found.items():
        if path is None:
            continue
        if not has_adapter(path):
            raise UserError(missing_adapter_message(name, path, config_path))
        check_adapter(path, cfg["model"]["name"])
    return found


# ---------------------------------------------------------------------------------------------
# Run metadata

def git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate",
            "unsloth", "unsloth_zoo", "xformers", "scipy", "numpy")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def write_run_info(path: Path, cfg: dict, **extra) -> None:
    """Write the resolved config and what is needed to reproduce the run into `path`.

    `extra` carries stage facts such as backend=..., reference_model=...
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path / "config.yaml")
    info = {
        "seed": cfg["seed"],
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "packages": package_versions(),
        **extra,
    }
    (path / "run_info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
