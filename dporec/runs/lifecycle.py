"""A stage folder's lifecycle: created only where nothing finished would be lost, continued from its newest
complete checkpoint, left alone when finished, and never left empty by a failure.

A stage folder holding checkpoint-N/ folders but no marker is an unfinished run: it is continued with
resume=true (or auto) or started over with overwrite=true, never silently mixed. `resume` and `overwrite`
are the user's (config keys, --resume, --overwrite) or the orchestrator's (arms.StageSpec.mode).
"""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dporec import UserError, weights
from dporec.runs import provenance

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")  # what a resume reads, with weights


def prepare_run_dir(path: Path, resume, overwrite: bool, done_marker: str) -> Path:
    """Create a stage folder, refusing to clobber a finished run unless overwrite is set, and proving it
    writable now rather than at the first save, hours of training later."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder: set output_dir to a folder")
    finished = (path / done_marker).exists()
    if finished and resume is True:
        raise UserError(f"{path} holds a finished run ({done_marker} exists); nothing to resume. "
                        f"Pass --overwrite (without --resume) to train again.")
    if finished and not overwrite:
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


def stale_inputs(path: Path, done_marker: str) -> list[str] | None:
    """None when the stage folder holds no finished run; else the inputs it was built from that have
    changed since ([] when it is current). run_experiment.py reruns a stale stage; a script refuses it."""
    path = Path(path)
    return provenance.changed_inputs(path) if (path / done_marker).is_file() else None


def finished_already(path: Path, resume, done_marker: str) -> bool:
    """resume=auto and the stage is finished: say so and leave it (a stale one is refused instead)."""
    path = Path(path)
    changed = stale_inputs(path, done_marker) if resume == "auto" else None
    if changed is None:
        return False
    if changed:
        raise UserError(f"{path} is finished but stale: built from {', '.join(changed)}, which has changed "
                        "since. Pass --overwrite (without resume) to build it again")
    log.info(f"[{path.name}] finished already ({path / done_marker}); resume=auto leaves it as it is")
    return True


def check_writable(path: Path) -> None:
    """A file can be created in `path` (or, before it exists, in its nearest existing parent)."""
    path = Path(path)
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


def checkpoint_complete(path: Path) -> bool:
    """Whether a checkpoint holds everything a resume reads: the Trainer writes the weights, then the
    optimizer, scheduler and trainer_state.json, so a save cut short lacks the last of them."""
    path = Path(path)
    return (all((path / f).is_file() for f in CHECKPOINT_FILES)
            and weights.adapter_weights_file(path) is not None)


def resume_checkpoint(path: Path, resume, overwrite: bool) -> str | None:
    """The checkpoint to continue from, or None for a fresh start.

    Call after prepare_run_dir (which refuses finished runs). A folder holding checkpoints of an
    unfinished run is neither silently continued nor silently mixed with a new run. A half-written
    newest checkpoint (killed while saving) is passed over for the newest complete one, saying so.
    """
    found = checkpoints_in(path)
    last = str(found[-1]) if found else None
    if resume == "auto" and last is None:
        return None  # nothing to continue: a fresh start
    if resume:
        if last is None:
            raise UserError(f"resume requested, but {path} has no checkpoint-N folder to continue from. "
                            f"Run without --resume to start a fresh run.")
        complete = [c for c in found if checkpoint_complete(c)]
        for c in found[found.index(complete[-1]) + 1 if complete else 0:]:
            lacks = [f for f in CHECKPOINT_FILES if not (c / f).is_file()] or ["its weights"]
            log.info(f"[resume] {c} is incomplete (a save cut short: no {', '.join(lacks)}); passing over it")
        if not complete:
            raise UserError(f"resume requested, but no checkpoint in {path} is complete "
                            f"({', '.join(c.name for c in found)} lack files a resume reads). "
                            f"Pass --overwrite (without --resume) to start over.")
        log.info(f"[resume] continuing from {complete[-1]}")
        return str(complete[-1])
    if last is not None:
        if not overwrite:
            raise UserError(f"{path} holds checkpoints of an unfinished run ({Path(last).name}). "
                            f"Pass --resume to continue it, or --overwrite to start over.")
        for ckpt in checkpoints_in(path):
            shutil.rmtree(ckpt)
    return None
