"""The one process setup every entry point makes: which backend each stage kind runs on, what this process
imports for it, and how many processes train together. Stages receive the Runtime it returns; none
re-detects the machine or the libraries.

Unsloth patches transformers, TRL and PEFT when it is imported, for the whole process (Llama's forwards at
class level, trl.DPOTrainer), and must be imported before them. So one process runs one backend: the one
its first stage needs. Whether a stage may run in this process is decided when the stage starts, from
the backend it needs and what the process has loaded by then (modeling.patches): a stage on another
backend, or a stage on hf once anything has patched the model classes, cannot run here (Runtime.check);
run_experiment.py runs such a stage in a fresh child process (Runtime.runs_here).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dporec import ROOT, UserError, arms, compat
from dporec.config import save_config, updated
from dporec.modeling import patches
from dporec.modeling.backends import choose_backend, several_processes, world_size
from dporec.modeling.hardware import cuda_capability, dtype_for, refuse_without_gpu, unsloth_dtype_note

log = logging.getLogger(__name__)

KINDS = ("sft", "dpo", "sampling", "eval")  # dporec.arms.Stage.kind


@dataclass(frozen=True)
class Runtime:
    backends: dict                   # stage kind -> "unsloth" | "hf" | None (cannot run here: see why)
    process_backend: str             # the backend this process loaded (its first stage's)
    cuda: bool
    capability: tuple | None         # GPU 0's compute capability; None without CUDA
    processes: int                   # processes training together (accelerate launch)
    why: dict = field(default_factory=dict)   # stage kind -> why that backend

    def backend(self, kind: str) -> str:
        return self.backends[kind]

    def why_not_here(self, kind: str) -> str | None:
        """Why a stage of this kind cannot run in this process now, or None when it can: its backend is
        the one loaded here and, for hf, nothing has patched the model classes (checked live: a stage
        starting after an Unsloth stage of the same process sees the patch)."""
        backend = self.backends[kind]
        if backend is None:  # the config cannot run it on this machine at all
            return self.why[kind]
        if backend != self.process_backend:
            return (f"this process runs the {self.process_backend} backend (Unsloth patches the model "
                    f"classes for the whole process), but the {kind} stage runs on {backend}")
        if backend == "hf":
            patched = patches.process_patches()
            if patched:
                return (f"the {kind} stage runs on hf, but this process's model classes are patched by "
                        f"another backend: {'; '.join(patched[:3])}")
        return None

    def runs_here(self, kind: str) -> bool:
        """Whether a stage of this kind can run in this process now (why_not_here)."""
        return self.why_not_here(kind) is None

    def check(self, kind: str, script: str) -> str:
        """The stage's backend, or a UserError when the config cannot run it here or this process cannot
        run it unpatched (call it where the stage starts, before it loads a model)."""
        if self.backends[kind] is None:
            raise UserError(self.why[kind])
        why = self.why_not_here(kind)
        if why:
            raise UserError(f"{why}: run it in a fresh process (python {script} ...; if this already is "
                            "one, something imported at start-up patches transformers: remove it)")
        return self.backends[kind]


def plan(cfg: dict, cuda: bool, has_unsloth: bool, processes: int = 1) -> dict[str, tuple[str | None, str]]:
    """{stage kind: (backend, why)} for this config on a machine with these facts; imports nothing.
    The DPO stage with dpo.prefix_sharing runs on hf (its shared-prompt forward needs a custom mask). A kind
    the config cannot run here gets (None, why): an error only where a stage of that kind runs."""
    out = {}
    for kind in KINDS:
        try:
            out[kind] = choose_backend(cfg["model"]["backend"], cuda, has_unsloth, processes > 1,
                                       shared_prompt=kind == "dpo" and cfg["dpo"]["prefix_sharing"])
        except UserError as e:
            out[kind] = (None, str(e))
    return out


def backends_of(chosen: dict[str, tuple[str | None, str]]) -> dict[str, str]:
    """{kind: backend} of a plan; a UserError naming the first kind the config cannot run."""
    for backend, why in chosen.values():
        if backend is None:
            raise UserError(why)
    return {k: b for k, (b, _) in chosen.items()}


def setup(cfg: dict, first: str) -> Runtime:
    """Set this process up for a run whose first stage is of kind `first`: refuse a GPU-sized model without
    a GPU (before anything downloads), choose every kind's backend, import Unsloth when this process runs
    it (before transformers, TRL and PEFT), reject dtype settings this GPU cannot run, and prepare several
    CPU processes' checkpoints. Call once per process, before any model code."""
    refuse_without_gpu(cfg)
    cuda = torch.cuda.is_available()
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    chosen = plan(cfg, cuda, has_unsloth, world_size())
    if chosen[first][0] is None:
        raise UserError(chosen[first][1])
    backends = {k: b for k, (b, _) in chosen.items()}
    if cfg["model"]["backend"] == "auto":
        log.info(f"[backend] auto -> {backends[first]} ({chosen[first][1]})")
    if backends[first] == "unsloth":
        try:
            import unsloth  # noqa: F401  (must precede trl/transformers/peft: it patches them)
        except Exception as e:  # noqa: BLE001 - an import failure is what the user needs to see
            raise UserError(f"unsloth is installed but fails to import: {type(e).__name__}: {e}. "
                            "pip install -r requirements.txt, or pass model.backend=hf") from None
    capability = cuda_capability()
    note = unsloth_dtype_note(cfg, backends[first], capability)
    if note:
        log.info(note)
    dtype_for(cfg["model"]["dtype"], capability)  # refuses bf16 on a GPU without it
    if several_processes() and not cuda:
        compat.allow_indexed_cpu_storages()
    return Runtime(backends=backends, process_backend=backends[first], cuda=cuda, capability=capability,
                   processes=world_size(), why={k: w for k, (_, w) in chosen.items()})


def placed(stage: arms.Stage, rt: Runtime, here, launcher: str | None = None):
    """Where a stage runs, decided when it starts: `here` (run(cfg, spec) in this process) when this process
    can run it unpatched, else the stage's script in a fresh child process (also, with a launcher such as
    `accelerate launch`, every training stage). run_experiment.py and verify_setup.py --smoke both ask."""
    if launcher and stage.kind in arms.TRAINING_KINDS:
        return child(stage.script, launcher)
    why = rt.why_not_here(stage.kind)
    return child(stage.script, why=why) if why else here


def child(script: str, command: str | None = None, why: str | None = None):
    """A stage as `<command> <script> --config FILE --stage-spec FILE` in a fresh child process (command:
    this Python unless given, e.g. `accelerate launch`): the config is the user's, resolved, and the spec
    the one the stage function would get, so it runs exactly what the function would, in a process no
    other backend has patched. `why`: the reason it cannot run here, printed when it starts. Returns
    run(cfg, spec) -> exit status."""
    command = command or shlex.quote(sys.executable)

    def run(cfg: dict, spec: arms.StageSpec) -> int:
        if why:
            log.info(f"[{spec.stage.name}] in a fresh process: {why}")
        with tempfile.TemporaryDirectory(prefix="dporec-launch-") as tmp:
            # the child launches nothing itself, and takes a launcher from the command line only
            config = save_config(updated(cfg, {"experiment.launcher": None}), Path(tmp) / "config.yaml")
            spec_file = Path(tmp) / "stage.json"
            spec_file.write_text(json.dumps(arms.spec_to_dict(spec)))
            cmd = [*shlex.split(command), str(ROOT / script), "--config", str(config),
                   "--stage-spec", str(spec_file)]
            log.info(f"[launch] {shlex.join(cmd)}")
            sys.stdout.flush()
            return subprocess.call(cmd)
    return run
