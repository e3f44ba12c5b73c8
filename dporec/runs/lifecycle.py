"""A stage folder's lifecycle: created only where nothing finished would be lost, continued from its newest
complete checkpoint, left alone when finished, and never left empty by a failure.

A stage folder holding checkpoint-N/ folders but no marker is an unfinished run: it is continued with
resume=true (or auto) or started over with overwrite=true, never silently mixed. `resume` and `overwrite`
are the user's (config keys, --resume, --overwrite) or the orchestrator's (arms.StageSpec.mode).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dporec import ROOT, UserError, weights
from dporec.runs import provenance

log = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
LOCK = ".running"  # in a stage folder while a process works in it: {"pid", "host"}
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")  # what a resume reads, with weights


def prepare_run_dir(path: Path, resume, overwrite: bool, done_marker: str) -> Path:
    """Create a stage folder, refusing to clobber a finished run unless overwrite is set, and proving it
    writable now rather than at the first save, hours of training later."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not a folder: set output_dir to a folder")
    check_lock(path)  # before anything here is deleted: another process may be writing it
    if marker_broken(path, done_marker) and not overwrite:
        raise UserError(f"{path / done_marker} is half-written or unreadable (an interrupted copy?): the "
                        "stage did not finish as far as can be told. Pass --overwrite to run it again")
    finished = (path / done_marker).exists()
    if finished and resume is True:
        raise UserError(f"{path} holds a finished run ({done_marker} exists); nothing to resume. "
                        f"Pass --overwrite (without --resume) to train again.")
    if finished and not overwrite:
        raise UserError(f"{path} already holds a finished run ({done_marker} exists). "
                        f"Use another output_dir, or pass --overwrite to replace it.")
    check_writable(path)
    if finished:
        _refuse_to_delete(path)
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the stage folder {path}: {e.strerror or e} ({e.filename})") from None
    check_writable(path)
    return path


def marker_broken(path: Path, done_marker: str) -> bool:
    """The stage's finished marker (a JSON file) exists but cannot be read: not a finished stage."""
    marker = Path(path) / done_marker
    if not marker.is_file() or marker.suffix != ".json":
        return False
    try:
        json.loads(marker.read_text())
    except (OSError, ValueError):
        return True
    return False


def _refuse_to_delete(path: Path) -> None:
    """A stage folder is replaced only when it is a stage's own folder inside a run folder: never the file
    system's root, the home folder, the working folder or the project checkout (a run folder set to one of
    them would otherwise be wiped with everything a user keeps there)."""
    p = Path(path).resolve()
    keep = {Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve(), ROOT.resolve()}
    if p in keep or p.parent == p:
        raise UserError(f"refusing to delete {p}: a stage folder lives inside output_dir, never is one of "
                        "your own folders; set output_dir to a folder of its own")


def stale_inputs(path: Path, done_marker: str, recipe: dict | None = None) -> list[str] | None:
    """None when the stage folder holds no finished run; else what it was built from that has changed
    since ([] when it is current): input adapters retrained or replaced, and, given the present `recipe`
    (provenance.recipe), settings that shape it and data files. run_experiment.py reruns a stale stage; a
    script refuses it."""
    path = Path(path)
    if not (path / done_marker).is_file() or marker_broken(path, done_marker):
        return None
    inputs = provenance.changed_inputs(path)
    changed = [f"{c}, which has changed since" for c in inputs]
    if recipe is not None:  # (the starting adapter is an input too: named once)
        changed += [c for c in provenance.recipe_changes(path, recipe) or []
                    if not (inputs and c.startswith(provenance.START))]
    return changed


def finished_already(path: Path, resume, done_marker: str, recipe: dict | None = None) -> bool:
    """resume=auto and the stage is finished: say so and leave it (a stale one is refused instead)."""
    path = Path(path)
    changed = stale_inputs(path, done_marker, recipe) if resume == "auto" else None
    if changed is None:
        return False
    if changed:
        raise UserError(f"{path} is finished but stale: built from other inputs or settings: "
                        f"{'; '.join(changed)}. Pass --overwrite (without resume) to build it again")
    log.info(f"[{path.name}] finished already ({path / done_marker}); resume=auto leaves it as it is")
    return True


def start_recipe(path: Path, recipe: dict, continuing: bool) -> None:
    """Record what a stage starting in `path` is built from. Continuing an unfinished one, refuse what would
    mix two runs in one (other settings, data or inputs than it started with), naming the keys; more or
    fewer steps to go are allowed (provenance.MAY_CHANGE_ON_RESUME)."""
    path = Path(path)
    if continuing:
        changed = provenance.recipe_changes(path, recipe, may_change=provenance.MAY_CHANGE_ON_RESUME)
        if changed:
            raise UserError(f"{path} holds an unfinished run started with other settings or data: "
                            f"{'; '.join(changed)}. Continue it with the settings it started with, or pass "
                            "--overwrite (without resume) to start over with these")
        steps = [c for c in provenance.recipe_changes(path, recipe) or [] if c.split(":")[0]
                 in provenance.MAY_CHANGE_ON_RESUME]
        if steps:  # allowed, but the learning-rate schedule then differs from a run of either length
            before = provenance.read_recipe(path).get("resumed_with", [])
            recipe = {**recipe, "resumed_with": [*before, *steps]}
    provenance.write_recipe(path, recipe)


def unfinished(path: Path, done_marker: str) -> bool:
    """A stage folder a run started in and did not finish: checkpoints, or the recipe its start recorded
    (sampling keeps no checkpoints), and no marker."""
    path = Path(path)
    return not (path / done_marker).is_file() and (bool(checkpoints_in(path))
                                                   or (path / provenance.RECIPE).is_file())


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


def _holder() -> dict:
    """Who holds a stage folder's lock: this process, or under a launcher (`accelerate launch`, torchrun;
    WORLD_SIZE > 1) the launcher's agent that started this group of processes, which they all share as
    their parent: the group is one run, writing one folder."""
    group = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return {"pid": os.getppid() if group else os.getpid(), "host": socket.gethostname(), "group": group}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def check_lock(path: Path) -> bool:
    """Refuse a stage folder another live process (or launched group) on this machine is working in: two
    runs into one output_dir would replace each other's results. A lock left by a process that has ended
    is removed. True when the lock is this run's own group's (another process of it took it)."""
    lock = Path(path) / LOCK
    if not lock.is_file():
        return False
    try:
        held = json.loads(lock.read_text())
        pid, host = int(held["pid"]), held["host"]
    except (OSError, ValueError, KeyError, TypeError):
        pid, host = None, None
    me = _holder()
    if host == me["host"] and pid == me["pid"]:
        if me["group"]:
            return True  # taken by another process of this launched group
        lock.unlink(missing_ok=True)  # this process's own, left by an earlier stage: not a second run
        return False
    if host == me["host"] and pid is not None and _alive(pid):
        raise UserError(f"{path} is being written by another process (pid {pid}, {lock}); wait for it to "
                        f"finish, or use another output_dir. If no such run is going, delete {lock}")
    if host not in (None, me["host"]):  # a folder on shared storage: that machine may be gone (a Colab VM)
        log.warning(f"[{Path(path).name}] {lock} was left by a process on {host} (pid {pid}); taking the "
                    "stage folder over. If that run is still going, stop this one: both write here")
    else:
        log.info(f"[{Path(path).name}] removing a lock left by an ended process ({lock})")
    lock.unlink(missing_ok=True)
    return False


def _create(lock: Path, content: str) -> None:
    """Create `lock` holding `content` in one step, or raise FileExistsError: written beside it first and
    hard-linked into place, so no process ever reads it empty (a file opened with O_EXCL and written after
    would be, for a moment, and a second process would take it for one a crash left). O_EXCL where the
    file system has no hard links."""
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.{socket.gethostname()}")
    tmp.write_text(content)
    try:
        os.link(tmp, lock)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (some network and FUSE file systems)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as f:
            f.write(content)
    finally:
        tmp.unlink(missing_ok=True)


def _take_lock(path: Path) -> bool:
    """Create the stage folder's lock atomically (two processes cannot both take it). False when another
    process of this launched group holds it already (the group shares one lock)."""
    lock = Path(path) / LOCK
    for _ in range(2):
        try:
            _create(lock, json.dumps({k: v for k, v in _holder().items() if k != "group"}))
        except FileExistsError:
            if check_lock(path):  # refuses a live holder, clears an ended one
                return False
            continue
        return True
    raise UserError(f"{path}: another process took {lock} at the same moment; rerun")


@contextmanager
def stage_guard(path: Path, resumable: bool = True):
    """Around a stage's work in its folder: a lock against a second process in the same folder, Ctrl-C says
    what can be resumed, and a failure that left nothing but the start's recipe removes the folder (an
    empty stage folder looks like a run that never was)."""
    lock = Path(path) / LOCK
    mine = _take_lock(path)  # the process that took it removes it

    def release():
        if mine:
            lock.unlink(missing_ok=True)
    try:
        yield
    except BaseException as e:
        release()
        # nothing but what the start recorded: a stage that never ran leaves no folder
        if path.is_dir() and {p.name for p in path.iterdir()} <= {provenance.RECIPE}:
            shutil.rmtree(path, ignore_errors=True)  # another process of a launched group may remove it too
        if isinstance(e, KeyboardInterrupt) and not e.args:
            raise KeyboardInterrupt(interrupt_advice(path, resumable)) from None
        raise
    finally:
        release()


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
