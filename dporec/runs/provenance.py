"""What a stage recorded: the config as the user gave it, the spec the stage ran with, library versions,
the git commit, and the inputs it was built from (with their hashes, so a changed input shows)."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

from dporec import ROOT, UserError, arms, weights
from dporec.config import save_config
from dporec.files import read_json, read_yaml

CONFIG, RUN_INFO = "config.yaml", "run_info.json"  # what every stage folder records beside its outputs
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate",
            "unsloth", "unsloth_zoo", "xformers", "scipy", "numpy")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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
    """Write the user's config (config.yaml, as given) and what is needed to reproduce the run
    (run_info.json) into `path`. `extra` carries stage facts such as stage=..., backend=...,
    reference_model=..."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path / CONFIG)
    info = {
        "seed": cfg["seed"],
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "packages": package_versions(),
        **extra,
    }
    (path / RUN_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")


def input_record(adapters: dict) -> dict:
    """{name: {"path", "sha256"}} of the adapters a stage is built from, for its run_info.json "inputs"."""
    out = {}
    for name, path in adapters.items():
        f = weights.adapter_weights_file(path) if path is not None else None
        if f is not None:
            out[name] = {"path": str(path), "sha256": weights.fingerprint_file(f)}
    return out


def changed_inputs(folder: Path) -> list[str]:
    """The inputs a finished stage recorded (run_info.json "inputs") that have changed since: retrained,
    replaced or gone. [] when all are as recorded, or nothing was recorded."""
    info = Path(folder) / RUN_INFO
    recorded = read_json(info).get("inputs") or {} if info.is_file() else {}
    changed = []
    for name, rec in recorded.items():
        f = weights.adapter_weights_file(rec["path"])
        if f is None or weights.fingerprint_file(f) != rec["sha256"]:
            changed.append(f"{name} ({rec['path']})")
    return changed


def stage_record(folder: Path) -> dict | None:
    """The effective settings a finished training stage ran with (run_info.json "spec": steps, learning
    rate, training file, ...); for a stage written before they were recorded, its config.yaml's section.
    None when the folder holds no finished stage."""
    folder = Path(folder)
    try:
        info, m = read_json(folder / RUN_INFO), read_json(folder / arms.TRAINING_MARKER)
        cfg = read_yaml(folder / CONFIG)
    except UserError:
        return None
    rec = dict(info.get("spec") or {})
    if "learning_rate" not in rec:  # recorded before the stage spec existed
        kind = info.get("stage") if info.get("stage") in cfg else "sft"
        rec.update(kind=kind, learning_rate=cfg[kind]["learning_rate"])
    return {**rec, "config": cfg, "metrics": m}


def stage_facts(folder: Path) -> dict | None:
    """What a finished training stage did (steps, batch, learning rate, schedule, ...); None when it has
    not finished."""
    rec = stage_record(folder)
    if rec is None:
        return None
    cfg, m, t = rec["config"], rec["metrics"], rec["config"]["train"]
    per_step = t["batch_size"] * t["grad_accum"]
    return {"optimizer steps": m.get("steps"), "examples per optimizer step": per_step,
            "examples seen": (m.get("steps") or 0) * per_step, "learning rate": rec["learning_rate"],
            "schedule": t["lr_scheduler"], "warmup ratio": t["warmup_ratio"], "optimizer": t["optim"],
            "weight decay": t["weight_decay"], "max grad norm": t["max_grad_norm"],
            "training examples": m.get("n_train"), "seed": cfg["seed"]}


def matching(reference_dir: Path, arm_dir: Path, names: tuple[str, str], unmatched: str) -> dict | None:
    """What an arm's stage shares with the stage it is matched to: {"items": [{what, <reference name>,
    <arm name>, matched}], "matched", "not_matched", "not_matchable"}; None when either is unfinished."""
    ref, arm = stage_facts(reference_dir), stage_facts(arm_dir)
    if ref is None or arm is None:
        return None
    items = [{"what": k, names[0]: ref[k], names[1]: arm[k], "matched": ref[k] == arm[k]} for k in ref]
    return {"items": items, "matched": [i["what"] for i in items if i["matched"]],
            "not_matched": [i["what"] for i in items if not i["matched"]], "not_matchable": unmatched}
