"""The one process setup every entry point makes: which backend each stage kind runs on, what this process
imports for it, and how many processes train together. Stages receive the Runtime it returns; none
re-detects the machine or the libraries.

Unsloth patches transformers, TRL and PEFT when it is imported, for the whole process (Llama's forwards at
class level, trl.DPOTrainer), and must be imported before them. So one process runs one backend: the one
its first stage needs. A stage whose backend differs cannot run in it (Runtime.check); run_experiment.py
runs such a stage in a child process of its own (Runtime.runs_here).
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass, field

import torch

from dporec import UserError, compat
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

    def runs_here(self, kind: str) -> bool:
        """Whether a stage of this kind can run in this process: its backend is the one loaded here."""
        return self.backends[kind] == self.process_backend

    def check(self, kind: str, script: str) -> str:
        """The stage's backend, or a UserError when the config cannot run it here or this process was set
        up for another backend."""
        if self.backends[kind] is None:
            raise UserError(self.why[kind])
        if not self.runs_here(kind):
            raise UserError(f"this process runs the {self.process_backend} backend (Unsloth patches the "
                            f"model classes for the whole process), but the {kind} stage runs on "
                            f"{self.backends[kind]}: run it in a fresh process (python {script} ...)")
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
    if "unsloth" in sys.modules and backends[first] == "hf":
        raise UserError("Unsloth was imported in this process before the run started (it patches "
                        "transformers for the whole process), but this stage runs on hf: run it in a "
                        "fresh Python process")
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
