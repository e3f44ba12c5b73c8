"""The adapters a run holds: the one SFT adapter every consumer uses, the models an evaluation scores, what
finished stages hand the arms, and the checks an adapter folder must pass before anything loads it."""
from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from dporec import UserError, arms, weights
from dporec.files import read_json
from dporec.runs import provenance

ADAPTER_FILE = "adapter_config.json"


def has_adapter(path) -> bool:
    return (Path(path) / ADAPTER_FILE).is_file()


def sft_adapter(cfg: dict) -> Path:
    """The run's SFT adapter: dpo.sft_adapter when set, else <output_dir>/sft. DPO starts from it, the
    on-policy arm samples from it, the control arm continues it and the evaluation scores it as `sft`."""
    return Path(cfg["dpo"]["sft_adapter"] or arms.SFT.folder(cfg["output_dir"]))


def sft_adapter_given(cfg: dict) -> bool:
    """Whether the run's SFT adapter comes from elsewhere (dpo.sft_adapter), so no SFT stage trains it."""
    return sft_adapter(cfg).resolve() != arms.SFT.folder(cfg["output_dir"]).resolve()


def run_stages(cfg: dict) -> list:
    """The stages this config runs before its evaluation, in order (arms.Stage): SFT unless dpo.sft_adapter
    gives the run's SFT adapter, DPO, then the stages of every arm it switches on."""
    return [*([] if sft_adapter_given(cfg) else [arms.SFT]), arms.DPO,
            *(s for arm in arms.enabled(cfg) for s in arm.stages)]


def require_sft_adapter(path, needed_for: str) -> Path:
    """The run's SFT adapter at `path`, checked to be there; a clear error naming what needs it when not."""
    path = Path(path)
    if not has_adapter(path):
        raise UserError(f"{needed_for} needs the run's trained SFT adapter in {path}, but there is none. Run "
                        "python train_sft.py --config <same config> first, or point dpo.sft_adapter at one")
    return path


class FinishedRun:
    """arms.Finished read from a run folder, each fact when an arm asks for it (a stage that needs only
    the SFT adapter runs before DPO has finished). The SFT adapter is where it will be: the stage that
    starts from it checks it is there (require_sft_adapter) once its own inputs are checked."""

    def __init__(self, cfg: dict, needed_for: str = "this stage"):
        self.cfg, self.needed_for = cfg, needed_for
        self.output_dir = cfg["output_dir"]
        self.sft_adapter = str(sft_adapter(cfg))

    @cached_property
    def _dpo(self) -> dict:
        rec = provenance.stage_record(arms.DPO.folder(self.output_dir))
        if rec is None:
            raise UserError(f"{self.needed_for} is sized by the finished DPO stage, but "
                            f"{arms.DPO.folder(self.output_dir)} holds none: run python train_dpo.py "
                            "--config <same config> first")
        return rec

    @cached_property
    def dpo_steps(self) -> int:
        steps = self._dpo["metrics"].get("steps")
        if not isinstance(steps, int) or steps <= 0:
            raise UserError(f"{arms.DPO.marker_file(self.output_dir)} has no positive 'steps' count; "
                            f"cannot size {self.needed_for}")
        return steps

    @cached_property
    def dpo_learning_rate(self) -> float:
        return self._dpo["learning_rate"]


def eval_adapters(cfg: dict) -> dict[str, Path | None]:
    """{name: adapter folder, or None for the base model} an evaluation scores, in this order: eval.models,
    eval.adapters, then the model of every arm the config switches on. Names are checked; folders not."""
    found: dict[str, Path | None] = {}
    extra = dict(cfg["eval"]["adapters"] or {})
    built_in = {"sft": sft_adapter(cfg), "dpo": arms.DPO.folder(cfg["output_dir"])}
    for name in cfg["eval"]["models"]:
        if name == "base":
            found[name] = None
        elif name in built_in:
            found[name] = built_in[name]
        elif name not in extra:
            raise UserError(f"eval.models: unknown model {name!r}; use base, "
                            "sft, dpo or a name from eval.adapters")
    arm_models = {a.model.name: a.model.folder(cfg["output_dir"]) for a in arms.enabled(cfg)}
    for name, path in extra.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            # PEFT keeps each adapter under its name as a module key, where a dot is a path separator
            suggestion = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_") or "mine"
            raise UserError(f"eval.adapters: the name {name!r} must be letters, digits, '_' or '-' (no dots "
                            f"or spaces), e.g. {suggestion!r}")
        if name == "base" or name in built_in and name in cfg["eval"]["models"]:
            raise UserError(f"eval.adapters: the name {name!r} is taken by a built-in model; choose another")
        if name in arm_models and Path(str(path)).resolve() != arm_models[name].resolve():
            raise UserError(f"eval.adapters: the name {name!r} is the model of an arm this config switches "
                            f"on ({arm_models[name]}); choose another name")
        found[name] = Path(str(path))
    for name, path in arm_models.items():
        found.setdefault(name, path)
    return found


def missing_adapter_message(name: str, path: Path, config_path: str) -> str:
    stage = next((s for s in arms.stages() if s.name == name and s.kind != "eval"), None)
    arm = arms.arm_of(name)
    how = "check eval.adapters"
    if stage:
        how = f"train it with: python {stage.script} --config {config_path}"
        how += f" --arm {arm.name}" if arm else ""
    return f"the evaluation scores {name!r}, but {path} holds no adapter (no {ADAPTER_FILE}); {how}"


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
        _check_recipe(cfg, path, config_path)
    return found


def _check_recipe(cfg: dict, path: Path, config_path: str) -> None:
    """A stage folder of this run trained under other settings or data than this config gives (dpo.beta
    changed after DPO trained, data rebuilt) is refused: the evaluation would record settings its models
    were not trained with. run_experiment.py retrains such a stage before it evaluates."""
    stage = next((s for s in arms.stages() if s.kind in arms.TRAINING_KINDS
                  and s.folder(cfg["output_dir"]).resolve() == Path(path).resolve()), None)
    if stage is None or not (Path(path) / provenance.RECIPE).is_file():
        return
    spec = arms.spec_for(stage, cfg, FinishedRun(cfg, f"checking {path}"))
    changed = provenance.recipe_changes(path, provenance.recipe(cfg, spec))
    changed = [c for c in changed or [] if not c.startswith(provenance.START)]  # an input: checked above
    if changed:
        raise UserError(f"adapter {path} was trained with other settings or data than {config_path} gives: "
                        f"{'; '.join(changed)}. Evaluate it with the config it was trained with "
                        f"({path / provenance.CONFIG}), or retrain it (python {stage.script} --config "
                        f"{config_path} --overwrite; run_experiment.py reruns such stages itself)")


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
    if (path / provenance.RUN_INFO).is_file():  # a trained stage: its own inputs still as they were
        changed = provenance.changed_inputs(path)
        if changed:
            raise UserError(f"adapter {path} is stale: built from {', '.join(changed)}, which has changed "
                            f"since; retrain it (python {_script(path)} ... --overwrite; run_experiment.py "
                            "reruns stale stages itself)")
    return acfg


def _script(folder: Path) -> str:
    """The script that trains a stage folder, by its name (arms.stages())."""
    return next((s.script for s in arms.stages() if s.name == Path(folder).name), "its training script")


def _check_same_base(adapter: Path, base_name: str) -> None:
    """A same-named base with other weights (a rebuilt or replaced folder) would load the adapter without
    complaint and score a different model: compare the fingerprint the adapter's training recorded."""
    info = adapter / provenance.RUN_INFO
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

