"""The run folder: stage folders, finished markers, checkpoints, adapters, and what a stage recorded.

    <output_dir>/sft/          train_sft.py      finished when metrics.json exists
    <output_dir>/dpo/          train_dpo.py      finished when metrics.json exists
    <output_dir>/sft_control/  train_sft.py      (experiment.control_arm) finished when metrics.json exists
    <output_dir>/eval/         evaluate_dpo.py   finished when results.json exists

A training stage folder holding checkpoint-N/ folders but no metrics.json is an unfinished run: it is
continued with resume=true or started over with overwrite=true, never silently mixed. The stages,
run_experiment.py and verify_setup.py all read the layout from here.
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import yaml

from dporec import ROOT, UserError, read_text, weights
from dporec.config import save_config

SFT, DPO, CONTROL, EVAL = "sft", "dpo", "sft_control", "eval"
ONPOLICY_PAIRS, ONPOLICY = "onpolicy_pairs", "dpo_onpolicy"  # the on-policy arm's pairs and DPO adapter
TRAINED_BY = {SFT: "train_sft.py", DPO: "train_dpo.py"}
MARKERS = {SFT: "metrics.json", DPO: "metrics.json", CONTROL: "metrics.json", EVAL: "results.json",
           ONPOLICY_PAIRS: "summary.json", ONPOLICY: "metrics.json"}
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ADAPTER_FILE = "adapter_config.json"


def stage_dir(cfg: dict, stage: str) -> Path:
    return Path(cfg["output_dir"]) / stage


def marker(cfg: dict, stage: str) -> Path:
    """The file whose presence marks `stage` finished (written last by the stage)."""
    return stage_dir(cfg, stage) / MARKERS.get(stage, "metrics.json")


def prepare_run_dir(path: Path, cfg: dict, done_marker: str = "metrics.json") -> Path:
    """Create a stage folder, refusing to clobber a finished run unless overwrite/resume is set, and
    proving it writable now rather than at the first save, hours of training later."""
    path = Path(path)
    if cfg.get("resume") and cfg.get("overwrite"):
        raise UserError(f"--resume and --overwrite contradict each other: --resume continues the run in "
                        f"{path}, --overwrite deletes it and starts over; pass one of them")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder: set output_dir to a folder")
    finished = (path / done_marker).exists()
    if finished and cfg.get("resume"):
        raise UserError(f"{path} holds a finished run ({done_marker} exists); nothing to resume. "
                        f"Pass --overwrite (without --resume) to train again.")
    if finished and not cfg.get("overwrite"):
        raise UserError(f"{path} already holds a finished run ({done_marker} exists). "
                        f"Use another output_dir, or pass --overwrite to replace it.")
    check_writable(path)
    if finished:
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the stage folder {path}: {e.strerror or e} ({e.filename})") from None
    check_writable(path)
    return path


def finished_already(path: Path, cfg: dict, done_marker: str = "metrics.json") -> bool:
    """resume=auto and the stage is finished: say so and leave it (a stale one is refused instead)."""
    path = Path(path)
    if cfg.get("resume") != "auto" or not (path / done_marker).is_file():
        return False
    changed = changed_inputs(path)
    if changed:
        raise UserError(f"{path} is finished but stale: built from {', '.join(changed)}, which has changed "
                        "since. Pass --overwrite (without resume) to build it again")
    print(f"[{path.name}] finished already ({path / done_marker}); resume=auto leaves it as it is")
    return True


def check_writable(path: Path) -> None:
    """A file can be created in `path` (or, before it exists, in its nearest existing parent)."""
    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    if folder is None or not folder.is_dir():
        raise UserError(f"cannot create {path}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write in {folder} ({e.strerror or e}): a read-only folder or disk? "
                        f"Set output_dir to a writable folder") from None


def interrupt_advice(path: Path, resumable: bool) -> str:
    if not resumable:
        return f"interrupted: {path} keeps no partial results; rerun the same command to start it again"
    found = checkpoints_in(path)
    if found:
        return f"interrupted; rerun with --resume to continue from {found[-1]}"
    return ("interrupted before the first checkpoint (every train.save_steps steps): nothing to resume; "
            "rerun the same command to start again")


@contextmanager
def stage_guard(path: Path, resumable: bool = True):
    """Around a stage's work in its folder: Ctrl-C says what can be resumed, and a failure that left the
    folder empty removes it (an empty stage folder looks like a run that never was)."""
    try:
        yield
    except BaseException as e:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if isinstance(e, KeyboardInterrupt) and not e.args:
            raise KeyboardInterrupt(interrupt_advice(path, resumable)) from None
        raise


def checkpoints_in(path: Path) -> list[Path]:
    """checkpoint-N folders of a stage folder, oldest (smallest N) first."""
    path = Path(path)
    found = [p for p in path.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)] if path.is_dir() else []
    return sorted(found, key=lambda p: int(CHECKPOINT_RE.match(p.name)[1]))


CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")  # what a resume reads, with weights


def checkpoint_complete(path: Path) -> bool:
    """Whether a checkpoint holds everything a resume reads: the Trainer writes the weights, then the
    optimizer, scheduler and trainer_state.json, so a save cut short lacks the last of them."""
    path = Path(path)
    return (all((path / f).is_file() for f in CHECKPOINT_FILES)
            and weights.adapter_weights_file(path) is not None)


def resume_checkpoint(path: Path, cfg: dict) -> str | None:
    """The checkpoint to continue from (resume=true), or None for a fresh start.

    Call after prepare_run_dir (which refuses finished runs). A folder holding checkpoints of an
    unfinished run is neither silently continued nor silently mixed with a new run. A half-written
    newest checkpoint (killed while saving) is passed over for the newest complete one, saying so.
    """
    found = checkpoints_in(path)
    last = str(found[-1]) if found else None
    if cfg.get("resume") == "auto" and last is None:
        return None  # nothing to continue: a fresh start
    if cfg.get("resume"):
        if last is None:
            raise UserError(f"resume requested, but {path} has no checkpoint-N folder to continue from. "
                            f"Run without --resume to start a fresh run.")
        complete = [c for c in found if checkpoint_complete(c)]
        for c in found[found.index(complete[-1]) + 1 if complete else 0:]:
            lacks = [f for f in CHECKPOINT_FILES if not (c / f).is_file()] or ["its weights"]
            print(f"[resume] {c} is incomplete (a save cut short: no {', '.join(lacks)}); passing over it")
        if not complete:
            raise UserError(f"resume requested, but no checkpoint in {path} is complete "
                            f"({', '.join(c.name for c in found)} lack files a resume reads). "
                            f"Pass --overwrite (without --resume) to start over.")
        print(f"[resume] continuing from {complete[-1]}")
        return str(complete[-1])
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
        raise UserError(f"dpo.init=sft needs a trained SFT adapter in {path}, but there is none. Run python "
                        "train_sft.py --config <same config> first, point "
                        "dpo.sft_adapter at one, or set dpo.init=base.")
    return path


def eval_adapters(cfg: dict, with_control: bool = False) -> dict[str, Path | None]:
    """{name: adapter folder, or None for the base model} evaluate_dpo.py loads, in evaluation order.

    with_control adds the control arm's folder when experiment.control_arm is set, and the on-policy
    arm's when experiment.on_policy_arm is (run_experiment.py passes them to the evaluation as
    eval.adapters entries). Names are checked; folders are not.
    """
    found: dict[str, Path | None] = {}
    extra = dict(cfg["eval"]["adapters"] or {})
    for name in cfg["eval"]["models"]:
        if name == "base":
            found[name] = None
        elif name in (SFT, DPO):
            found[name] = stage_dir(cfg, name)
        elif name not in extra:
            raise UserError(f"eval.models: unknown model {name!r}; use base, "
                            "sft, dpo or a name from eval.adapters")
    for name, path in extra.items():
        if name == "base" or name in (SFT, DPO) and name in cfg["eval"]["models"]:
            raise UserError(f"eval.adapters: the name {name!r} is taken by a built-in model; choose another")
        found[name] = Path(str(path))
    if with_control and cfg["experiment"]["control_arm"]:
        found.setdefault(CONTROL, stage_dir(cfg, CONTROL))
    if with_control and cfg["experiment"]["on_policy_arm"]:
        found.setdefault(ONPOLICY, stage_dir(cfg, ONPOLICY))
    return found


def missing_adapter_message(name: str, path: Path, config_path: str) -> str:
    how = (f"train it with: python {TRAINED_BY[name]} --config {config_path}" if name in TRAINED_BY
           else "check eval.adapters")
    return f"eval.models asks for {name!r}, but {path} holds no adapter (no {ADAPTER_FILE}); {how}"


def find_adapters(cfg: dict, config_path: str) -> dict[str, Path | None]:
    """eval_adapters, each one present and trained on model.name; fails before any model loads."""
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


def check_adapter(path: str | Path, base_name: str | None = None) -> dict:
    """An adapter folder's adapter_config.json, after checking what loading it would trip over: a missing
    or truncated weights file, another base model (by name, by LoRA shapes against the base's
    config.json, or, for the same name, by the base fingerprint its training recorded)."""
    path = Path(path)
    cfg_file = path / ADAPTER_FILE
    if not cfg_file.is_file():
        raise UserError(f"adapter not found: {path} has no {ADAPTER_FILE} (train it first)")
    acfg = read_json(cfg_file)
    trained_on = acfg.get("base_model_name_or_path")
    if base_name and trained_on and not _same_model(trained_on, base_name):
        raise UserError(f"adapter {path} was trained on {trained_on!r}, but model.name is {base_name!r}")
    weights_file = weights.adapter_weights_file(path)
    if weights_file is None:
        raise UserError(f"adapter {path} has {ADAPTER_FILE} but no weights "
                        f"({' / '.join(weights.ADAPTER_WEIGHTS)}): an interrupted save or copy")
    if weights_file.suffix == ".safetensors":
        header = weights.safetensors_header(weights_file)
        base_config = weights.base_config(base_name) if base_name else None
        problem = weights.adapter_shape_problem(header, base_config) if base_config else None
        if problem:
            raise UserError(f"adapter {path} does not fit model.name={base_name}: {problem}")
    if base_name:
        _check_same_base(path, base_name)
    return acfg


def _check_same_base(adapter: Path, base_name: str) -> None:
    """A same-named base with other weights (a rebuilt or replaced folder) would load the adapter without
    complaint and score a different model: compare the fingerprint the adapter's training recorded."""
    info = adapter / "run_info.json"
    recorded = read_json(info).get("base_fingerprint") if info.is_file() else None
    current = weights.fingerprint_base(base_name) if recorded else None
    if recorded and current and recorded != current:
        raise UserError(f"adapter {adapter} was trained on other weights than model.name={base_name} holds "
                        f"now (base fingerprint {recorded} in {info}, now {current}): the model folder was "
                        "rebuilt or replaced. Point model.name at the model it was trained on, or retrain")


def _same_model(a: str, b: str) -> bool:
    na, nb = a.rstrip("/"), b.rstrip("/")
    if na == nb:
        return True
    pa, pb = Path(na).expanduser(), Path(nb).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return Path(na).name == Path(nb).name  # same folder name: moved or a hub id vs its local copy


# ---------------------------------------------------------------------------------------------
# What a finished stage recorded

def read_json(path: Path) -> dict:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None


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
    info = Path(folder) / "run_info.json"
    recorded = read_json(info).get("inputs") or {} if info.is_file() else {}
    changed = []
    for name, rec in recorded.items():
        f = weights.adapter_weights_file(rec["path"])
        if f is None or weights.fingerprint_file(f) != rec["sha256"]:
            changed.append(f"{name} ({rec['path']})")
    return changed


NOT_MATCHABLE = ("the objective (DPO's preference loss on chosen vs rejected answers vs SFT's likelihood of "
                 "the chosen answer) and the compute per example: a DPO step runs the policy on both "
                 "answers and the frozen reference on both, about "
                 "twice the forward/backward work of an SFT step")


def stage_facts(folder: Path, stage: str) -> dict | None:
    """What a finished training stage did (steps, batch, learning rate, schedule, ...) from its config.yaml
    and metrics.json; None when either is missing. `stage` names the config section of its learning rate."""
    try:
        cfg, m = read_yaml(Path(folder) / "config.yaml"), read_json(Path(folder) / "metrics.json")
    except UserError:
        return None
    t = cfg["train"]
    per_step = t["batch_size"] * t["grad_accum"]
    return {"optimizer steps": m.get("steps"), "examples per optimizer step": per_step,
            "examples seen": (m.get("steps") or 0) * per_step, "learning rate": cfg[stage]["learning_rate"],
            "schedule": t["lr_scheduler"], "warmup ratio": t["warmup_ratio"], "optimizer": t["optim"],
            "weight decay": t["weight_decay"], "max grad norm": t["max_grad_norm"],
            "training examples": m.get("n_train"), "seed": cfg["seed"]}


def control_matching(dpo_dir: Path, control_dir: Path) -> dict | None:
    """What the compute-matched control shares with DPO: {"items": [{what, dpo, control, matched}],
    "matched", "not_matched", "not_matchable"}; None when either stage folder is incomplete."""
    dpo, ctl = stage_facts(dpo_dir, DPO), stage_facts(control_dir, SFT)
    if dpo is None or ctl is None:
        return None
    items = [{"what": k, "dpo": dpo[k], "control": ctl[k], "matched": dpo[k] == ctl[k]} for k in dpo]
    return {"items": items, "matched": [i["what"] for i in items if i["matched"]],
            "not_matched": [i["what"] for i in items if not i["matched"]], "not_matchable": NOT_MATCHABLE}


# ---------------------------------------------------------------------------------------------
# Run metadata

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
