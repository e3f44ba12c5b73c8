"""What a stage recorded: the config as the user gave it, the spec the stage ran with, library versions,
the git commit, the inputs it was built from (with their hashes, so a changed input shows), and its recipe:
the resolved settings that shape what it produces and the hashes of the data files it read. A finished
stage whose recipe or inputs differ from the present ones is stale (run_experiment.py reruns it, a script
refuses it); an unfinished one may be continued only with settings that cannot change what it has done.

Inputs and data inside output_dir are recorded relative to it, so a run folder that was moved or copied
still knows what it was built from; an input that cannot be found means "cannot tell", never "stale"."""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from pathlib import Path

from dporec import ROOT, UserError, arms, weights
from dporec.config import defaults as config_defaults
from dporec.config import save_config, updated
from dporec.files import read_json, read_yaml

log = logging.getLogger(__name__)
CONFIG, RUN_INFO = "config.yaml", "run_info.json"  # what every stage folder records beside its outputs
RECIPE = "recipe.json"  # written when a stage starts: what it is being built from
START = "the adapter it starts from"  # the recipe's entry for it (also an input in run_info.json)

# The config keys that shape what each kind of stage produces (prefixes end in "."); a change reruns or
# refuses the stage. Not among them: where things go and how often they are logged or saved, the data's
# build settings (their effect is in the data files' hashes), and the input adapters' paths (their hashes
# are the inputs').
_TRAINING = ("seed", "model.", "lora.", "data.prompt_format", "data.max_train_examples",
             "data.max_val_examples", "train.")
SHAPING = {
    "sft": (*_TRAINING, "sft."),
    "dpo": (*_TRAINING, "dpo."),
    "sampling": ("seed", "model.", "data.prompt_format", "data.max_train_examples", "onpolicy."),
    "eval": ("seed", "model.", "data.prompt_format", "data.max_test_examples", "eval."),
}
# Settings of the evaluation that shape only the analysis of its scores: a change re-analyses the scores
# (evaluation.stage.read_results), it does not score again.
ANALYSIS_ONLY = ("eval.alpha", "eval.margin_points", "eval.ranking_margin", "eval.bootstrap_samples")
NOT_SHAPING = (*ANALYSIS_ONLY, "model.backend", "model.allow_cpu", "train.gradient_checkpointing",
               "train.logging_steps", "train.eval_steps", "train.save_steps", "train.save_total_limit",
               "train.report_to", "dpo.sft_adapter", "eval.adapters", "eval.batch_size",
               "onpolicy.batch_size",
               # the same loss, metrics and gradients either way (tests/training/test_dpo_trainer.py)
               "dpo.prefix_sharing", "dpo.precompute_ref_log_probs")
DATA_FILES = {"sft": ("train_file", "val_file"), "dpo": ("train_file", "val_file"),
              "sampling": ("train_file",), "eval": ("test_file",)}
# What an unfinished stage may be continued with although it differs: more or fewer steps to go; for
# sampling, what only the pairing made from the samples depends on.
MAY_CHANGE_ON_RESUME = ("sft.max_steps", "sft.epochs", "dpo.max_steps", "dpo.epochs", "onpolicy.max_prompts",
                        "onpolicy.rejected", "onpolicy.balance_positions")
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


def _relative(path, output_dir) -> str | None:
    """`path` relative to output_dir when it lies inside it (what survives moving the run folder)."""
    if output_dir is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path(output_dir).resolve()))
    except (ValueError, OSError):
        return None


def _where(rec: dict, folder: Path) -> Path:
    """Where a recorded input is now: inside the stage's run folder (folder.parent) when it was recorded
    relative to it, else its recorded path."""
    return Path(folder).parent / rec["relative"] if rec.get("relative") else Path(rec["path"])


def input_record(adapters: dict, output_dir=None) -> dict:
    """{name: {"path", "relative", "sha256"}} of the adapters a stage is built from, for its run_info.json
    "inputs" ("relative": to output_dir, when the adapter lies inside it)."""
    out = {}
    for name, path in adapters.items():
        f = weights.adapter_weights_file(path) if path is not None else None
        if f is not None:
            out[name] = {"path": str(path), "relative": _relative(path, output_dir),
                         "sha256": weights.fingerprint_file(f)}
    return out


def changed_inputs(folder: Path) -> list[str]:
    """The inputs a finished stage recorded (run_info.json "inputs") that have changed since: retrained or
    replaced. [] when all are as recorded, or nothing was recorded. An input that cannot be found is not
    counted as changed (the run folder may have moved without it): it is logged as "cannot tell"."""
    info = Path(folder) / RUN_INFO
    recorded = read_json(info).get("inputs") or {} if info.is_file() else {}
    changed = []
    for name, rec in recorded.items():
        where = _where(rec, folder)
        f = weights.adapter_weights_file(where)
        if f is None:
            log.warning(f"[{Path(folder).name}] cannot tell whether its input {name} has changed: {where} "
                        "is not there (moved?); leaving the finished stage as it is")
        elif weights.fingerprint_file(f) != rec["sha256"]:
            changed.append(f"{name} ({where})")
    return changed


def _flat(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _shapes(kind: str, key: str, ranking: bool = False) -> bool:
    """Whether `key` shapes what a stage of this kind produces. An analysis setting does for an evaluation
    with the ranking on: the ranking's summary is computed when scoring, not re-analysed."""
    if any(key == n or key.startswith(n + ".") for n in NOT_SHAPING):  # eval.adapters.NAME: an input
        return kind == "eval" and ranking and key in ANALYSIS_ONLY
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in SHAPING[kind])


def recipe(cfg: dict, spec: arms.StageSpec) -> dict:
    """What the stage of `spec` is built from under `cfg`: {"settings": {key: value} of its effective config
    (arms.StageSpec.config_settings applied) that shape it, "data": {data key: {"relative", "sha256"}} of
    the files it reads and of the adapter it starts from}."""
    kind = spec.stage.kind
    scfg = updated(cfg, spec.config_settings(cfg["output_dir"]))
    ranking = bool(scfg["eval"]["ranking"])
    settings = {k: v for k, v in _flat(scfg).items() if _shapes(kind, k, ranking)}
    data = {}
    files = {key: scfg["data"][key] for key in DATA_FILES[kind]}
    if kind == "eval" and ranking:  # the candidate sets the ranking scores
        from dporec.data import candidates
        d = scfg["data"]
        files["ranking_file"] = d["ranking_file"] or candidates.default_path(d["test_file"])
    if kind == "eval" and scfg["eval"]["personal_task"]:  # the second verdict's pairs, when built
        from dporec.data import built
        personal = built.personal_test_file(scfg["data"]["test_file"])
        if personal:
            files["personal_test_file"] = personal
    for key, path in files.items():
        path = Path(path)
        if path.is_file():
            data[f"data.{key}"] = {"relative": _relative(path, cfg["output_dir"]),
                                   "sha256": weights.fingerprint_file(path)}
    start = weights.adapter_weights_file(spec.init_adapter) if spec.init_adapter else None
    if start is not None:  # the adapter it starts from (DPO from SFT, the arms)
        data[START] = {"relative": _relative(spec.init_adapter, cfg["output_dir"]),
                                              "sha256": weights.fingerprint_file(start)}
    return {"stage": kind, "settings": settings, "data": data}


def read_recipe(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / RECIPE).read_text())
    except (OSError, ValueError):
        return {}


def write_recipe(folder: Path, rec: dict) -> None:
    (Path(folder) / RECIPE).write_text(json.dumps(rec, indent=2, default=str) + "\n")


def recipe_changes(folder: Path, now: dict, may_change=()) -> list[str] | None:
    """How `now` differs from the recipe a stage folder recorded: ["dpo.beta: 0.1 -> 0.5", "data.test_file
    (its contents)", ...]; None when none was recorded (a stage from an earlier version: cannot tell)."""
    if not (Path(folder) / RECIPE).is_file():
        return None
    old = read_recipe(folder)
    if not old:
        return None
    out = []
    a, b = old.get("settings", {}), json.loads(json.dumps(now["settings"], default=str))  # as recorded
    defaults_ = json.loads(json.dumps(_flat(config_defaults()), default=str))
    for k in sorted(set(a) | set(b)):
        # a key a later version added is unchanged when the run uses its default (what the old code did)
        before = a.get(k, defaults_.get(k, "<unset>"))
        if k not in may_change and before != b.get(k, "<unset>"):
            out.append(f"{k}: {before} -> {b.get(k, '<unset>')}")
    for k in sorted(old.get("data", {})):
        if k not in now["data"]:
            log.warning(f"[{Path(folder).name}] cannot tell whether {k} has changed: it is not there now")
        elif (old["data"][k] or {}).get("sha256") != now["data"][k].get("sha256"):
            out.append(f"{k} (its contents)")
    return out


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
