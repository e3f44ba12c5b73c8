"""Faults, round two: what a stage was built from (its recipe: the settings that shape it, its data files'
and its starting adapter's hashes), resumes that would mix two runs, and run folders that were moved or
copied. Numbers in the test names follow the second fault-injection review's list. Each case runs as the
scripts run (config.run_main) and asserts the exit status, the message naming what changed, and that
nothing finished was lost or silently reused.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e.test_faults import argv_for, cli, refused
from tests.helpers import TINY_CONFIG, experiment_main, sft_main, tiny_overrides

FAST = ["sft.max_steps=2", "dpo.max_steps=2", "data.max_train_examples=8", "data.max_val_examples=4",
        "data.max_test_examples=8", "eval.bootstrap_samples=100", "train.eval_steps=100",
        "train.save_steps=1"]


def experiment(out: Path, tiny_data, tiny_model, capsys, *extra) -> str:
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, out), *FAST, *extra]
    code, text = cli(experiment_main, argv, capsys)
    assert code == 0, text
    return text


def interrupted_sft(argv: list[str], step: int) -> None:
    """train_sft.py stopped like Ctrl-C right after checkpoint-<step> was written."""
    from transformers import TrainerCallback

    from dporec.config import parse_args
    from dporec.training import stages

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stages.run_sft(parse_args("", argv)[1], callbacks=[Interrupt()])


def mtimes(root: Path) -> dict:
    names = ("metrics.json", "results.json", "predictions.csv", "adapter_model.safetensors")
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if p.name in names}


@pytest.fixture(scope="module")
def finished(tiny_data, tiny_model, tmp_path_factory):
    """A finished run_experiment.py run folder (SFT, DPO, evaluation); tests work on copies of it."""
    from dporec.config import run_main
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, out), *FAST]
    with pytest.raises(SystemExit) as e:
        run_main(lambda: experiment_main(argv))
    assert e.value.code == 0
    return out


def copy_of(finished: Path, tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(finished, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# 1. A resume finishes after its starting checkpoint rotated away: tests/training/test_stages.py
#    (test_a_resume_finishes_after_its_checkpoint_rotated_away)

# ---------------------------------------------------------------------------------------------
# 2. A finished stage is not reused after a setting that shapes it, or its data, changed

def test_2_a_changed_setting_reruns_the_stages_it_shapes(finished, tiny_data, tiny_model, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = mtimes(run)
    text = experiment(run, tiny_data, tiny_model, capsys, "dpo.beta=0.5")
    assert "[sft] skipped" in text
    assert "[dpo] stale" in text and "dpo.beta: 0.1 -> 0.5" in text
    assert "[eval] stale" in text  # built from the DPO adapter that changed
    after = mtimes(run)
    assert after[Path("sft/adapter_model.safetensors")] == before[Path("sft/adapter_model.safetensors")]
    assert after[Path("dpo/metrics.json")] != before[Path("dpo/metrics.json")]
    assert json.loads((run / "dpo" / "recipe.json").read_text())["settings"]["dpo.beta"] == 0.5
    current = mtimes(run)
    text = experiment(run, tiny_data, tiny_model, capsys, "dpo.beta=0.5")  # now current: all skipped
    assert "[dpo] skipped" in text and "[eval] skipped" in text and mtimes(run) == current


def test_2_changed_test_data_reruns_the_evaluation(finished, tiny_data, tiny_model, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    lines = (data / "test.jsonl").read_text().splitlines()
    (data / "test.jsonl").write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # the same pairs, reordered
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(data, tiny_model, run), *FAST]
    code, text = cli(experiment_main, argv, capsys)
    assert code == 0, text
    assert "[sft] skipped" in text and "[dpo] skipped" in text
    assert "[eval] stale" in text and "data.test_file (its contents)" in text


def test_2_an_analysis_setting_reanalyses_without_scoring_again(finished, tiny_data, tiny_model, tmp_path,
                                                                capsys):
    run = copy_of(finished, tmp_path)
    scored = (run / "eval" / "predictions.csv").stat().st_mtime_ns
    text = experiment(run, tiny_data, tiny_model, capsys, "eval.alpha=0.1")
    assert "[eval] skipped" in text and "re-analysing" in text
    assert (run / "eval" / "predictions.csv").stat().st_mtime_ns == scored  # not scored again
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["alpha"] == 0.1 and results["analysis"]["eval.alpha"] == 0.1


def test_2_a_script_refuses_a_stale_stage_with_resume_auto(finished, tiny_data, tiny_model, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = mtimes(run)
    argv = argv_for(tiny_data, tiny_model, run, *FAST, "resume=auto", "sft.learning_rate=5e-4")
    refused(sft_main, argv, capsys, "is finished but stale", "sft.learning_rate: 0.001 -> 0.0005",
            "--overwrite")
    assert mtimes(run) == before  # the finished stage is left as it was


# ---------------------------------------------------------------------------------------------
# 3. A resume takes only what cannot change what was trained so far

def test_3_resume_with_another_setting_is_refused_naming_it(tiny_data, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = argv_for(tiny_data, tiny_model, out, "train.save_steps=2")
    interrupted_sft(argv, 4)
    weights_before = (out / "sft" / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    refused(sft_main, argv + ["--resume", "sft.learning_rate=1e-5"], capsys,
            "started with other settings or data", "sft.learning_rate: 0.001 -> 1e-05")
    refused(sft_main, argv + ["--resume", "data.max_train_examples=16"], capsys,
            "data.max_train_examples: 32 -> 16")
    assert (out / "sft" / "checkpoint-4" / "adapter_model.safetensors").read_bytes() == weights_before
    assert not (out / "sft" / "metrics.json").exists()
    # more steps to go cannot change what was trained so far: allowed
    code, text = cli(sft_main, argv + ["--resume", "sft.max_steps=10"], capsys)
    assert code == 0, text
    assert json.loads((out / "sft" / "metrics.json").read_text())["steps"] == 10


# ---------------------------------------------------------------------------------------------
# 5. Moved or copied run folders

def test_5_a_moved_run_folder_is_still_current(finished, tiny_data, tiny_model, tmp_path, capsys):
    moved = tmp_path / "moved"
    shutil.move(copy_of(finished, tmp_path, "first"), moved)  # mv first moved (Colab -> Drive)
    assert json.loads((moved / "dpo" / "run_info.json").read_text())["inputs"]["sft"]["relative"] == "sft"
    before = mtimes(moved)
    text = experiment(moved, tiny_data, tiny_model, capsys)
    assert "[dpo] skipped" in text and "[eval] skipped" in text and "stale" not in text
    assert mtimes(moved) == before


def test_5_in_a_copy_a_retrained_sft_makes_its_dpo_stale(finished, tiny_data, tiny_model, tmp_path, capsys):
    copy = copy_of(finished, tmp_path, "copy")
    code, text = cli(sft_main, argv_for(tiny_data, tiny_model, copy, *FAST, "seed=7", "--overwrite"), capsys)
    assert code == 0, text
    text = experiment(copy, tiny_data, tiny_model, capsys, "seed=7")
    assert "[dpo] stale" in text and f"{copy / 'sft'}" in text  # the copy's own SFT, not the original's
    # the original run is untouched and still current
    text = experiment(finished, tiny_data, tiny_model, capsys)
    assert "stale" not in text


def test_5_an_input_that_cannot_be_found_is_not_stale(finished, tiny_data, tiny_model, tmp_path, capsys):
    """DPO built from an SFT adapter outside the run folder that has since gone: 'cannot tell', and the
    finished stage is left as it is (never deleted and retrained on a guess)."""
    from dporec.runs import lifecycle
    run = copy_of(finished, tmp_path)
    info = json.loads((run / "dpo" / "run_info.json").read_text())
    info["inputs"]["sft"] = {"path": str(tmp_path / "gone" / "sft"), "relative": None, "sha256": "0" * 64}
    (run / "dpo" / "run_info.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert lifecycle.stale_inputs(run / "dpo", "metrics.json") == []
    said = capsys.readouterr()
    assert "cannot tell whether its input sft has changed" in said.err + said.out


# ---------------------------------------------------------------------------------------------
# 4. export.py never deletes what it did not write

def export_main(argv):
    from dporec import cli as cli_module
    return cli_module.export(argv, "export.py")


def test_4_export_refuses_the_run_folder_and_the_adapter(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = mtimes(run)
    for out in (run, run / "sft", run / "sft" / "merged"):
        refused(export_main, ["--adapter", str(run / "sft"), "--out", str(out), "--overwrite"], capsys,
                "is, holds or lies inside the adapter")
    refused(export_main, ["--adapter", str(run / "dpo"), "--out", str(run), "--overwrite"], capsys,
            "lies inside the adapter")
    assert mtimes(run) == before and (run / "eval" / "results.json").is_file()
    other = tmp_path / "looks-like-an-export"  # an earlier export's mark, but a run inside it
    shutil.copytree(run / "eval", other / "old-run" / "eval")
    (other / "export_info.json").write_text("{}")
    refused(export_main, ["--adapter", str(run / "sft"), "--out", str(other), "--overwrite"], capsys,
            "holds a run", str(other / "old-run" / "eval"))
    assert (other / "old-run" / "eval" / "results.json").is_file()


def test_4_overwrite_replaces_only_an_earlier_export(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("a user's file")
    refused(export_main, ["--adapter", str(run / "sft"), "--out", str(notes), "--overwrite"], capsys,
            "holds files no export wrote")
    assert (notes / "mine.txt").read_text() == "a user's file"
    out = tmp_path / "merged"
    for extra in ([], ["--overwrite"]):  # a second export replaces the first, through a temporary sibling
        code, text = cli(export_main, ["--adapter", str(run / "sft"), "--out", str(out), *extra], capsys)
        assert code == 0, text
        assert (out / "export_info.json").is_file() and not (tmp_path / ".merged.exporting").exists()


def test_4_overwrite_through_a_link_into_a_mount_point_and_on_a_full_disk(finished, tmp_path, capsys,
                                                                          monkeypatch):
    import os
    from collections import namedtuple

    from dporec.inference import export
    run = copy_of(finished, tmp_path)
    drive = tmp_path / "drive" / "merged"  # where the link leads (a Drive folder linked into the project)
    link = tmp_path / "merged"
    code, text = cli(export_main, ["--adapter", str(run / "sft"), "--out", str(drive)], capsys)
    assert code == 0, text
    link.symlink_to(drive, target_is_directory=True)
    first = (drive / "export_info.json").stat().st_mtime_ns
    code, text = cli(export_main, ["--adapter", str(run / "dpo"), "--out", str(link), "--overwrite"], capsys)
    assert code == 0, text
    assert link.is_symlink()
    assert json.loads((drive / "export_info.json").read_text())["adapter"].endswith("dpo")
    assert (drive / "export_info.json").stat().st_mtime_ns != first
    # a mount point: the new export is written inside it and moved up; the earlier one's files go
    (drive / "stale-shard.safetensors").write_text("from an earlier export")
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == drive or real_ismount(p))
    # ... on a disk too full to hold both: the earlier export is deleted first, saying so
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(export.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 1000, 1000))
    code, text = cli(export_main, ["--adapter", str(run / "sft"), "--out", str(drive), "--overwrite"], capsys)
    assert code == 0, text
    assert "too little to write the new export beside the earlier one" in text
    assert json.loads((drive / "export_info.json").read_text())["adapter"].endswith("sft")
    assert not (drive / "stale-shard.safetensors").exists() and not (drive / ".exporting").exists()


# ---------------------------------------------------------------------------------------------
# 9. Evaluation on training users is refused

@pytest.mark.parametrize("which", ["train_file", "val_file", "shares a user", "shares a user, ./path"])
def test_9_evaluation_on_training_users_is_refused(which, tiny_data, tiny_model, tmp_path, capsys,
                                                   monkeypatch):
    from tests.helpers import evaluate_main
    test = tiny_data / ("train.jsonl" if which == "train_file" else "val.jsonl")
    if which.startswith("shares a user"):  # the test file plus one training line
        test = tmp_path / "test.jsonl"
        train_line = (tiny_data / "train.jsonl").read_text().splitlines()[0]
        test.write_text((tiny_data / "test.jsonl").read_text() + train_line + "\n")
    if which.endswith("./path"):  # the path as a user types it
        monkeypatch.chdir(tmp_path)
        test = Path("./test.jsonl")
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", f"data.test_file={test}", "eval.models=[base]")
    says = ("shares users or pairs with the training data" if which.startswith("shares a user")
            else f"is also data.{which}")
    refused(evaluate_main, argv, capsys, says, str(test))
    assert not (tmp_path / "run" / "eval").exists()


# ---------------------------------------------------------------------------------------------
# 10. Non-finite values

def test_10_a_predictions_file_with_inf_is_refused(finished, tiny_data, tiny_model, tmp_path, capsys):
    from tests.helpers import evaluate_main
    edited = tmp_path / "predictions.csv"
    lines = (finished / "eval" / "predictions.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("logp_a")] = "-inf"
    edited.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", "--from-predictions", str(edited))
    refused(evaluate_main, argv, capsys, f"{edited}:2", "'logp_a' must be a finite number")


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_10_a_non_finite_setting_is_refused(value, tiny_data, tiny_model, tmp_path, capsys):
    refused(sft_main, argv_for(tiny_data, tiny_model, tmp_path / "run", f"sft.learning_rate={value}"), capsys,
            "'sft.learning_rate' must be a finite number")


def test_10_a_diverged_stage_is_not_marked_finished(tiny_data, tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = argv_for(tiny_data, tiny_model, out, "sft.learning_rate=1e30", "sft.max_steps=2",
                    "train.max_grad_norm=1e30")
    refused(sft_main, argv, capsys, "training diverged", "not marked finished")
    assert not (out / "sft" / "metrics.json").exists()
    assert not (out / "sft" / "adapter_model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# 12. Config values refused when read, not after the model loads

@pytest.mark.parametrize("override,says", [
    ("train.optim=adamw_torh", "(did you mean 'adamw_torch'?)"),
    ("train.lr_scheduler=cosin", "(did you mean 'cosine'?)"),
    ("train.report_to=tensorbord", "(did you mean 'tensorboard'?)"),
])
def test_12_a_trainer_name_typo_is_named_before_the_model_loads(override, says, tiny_data, tiny_model,
                                                                 tmp_path, capsys):
    from tests.helpers import verify_main
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", override)
    refused(sft_main, argv, capsys, f"'{override.split('=')[0]}'", says)
    assert not (tmp_path / "run" / "sft").exists()
    capsys.readouterr()
    assert verify_main(argv) == 1
    assert says in capsys.readouterr().out


@pytest.mark.parametrize("override,says", [
    ("seed=-1", "'seed' must be >= 0 and <="), (f"seed={2**32}", "'seed' must be >= 0 and <= 4294967295"),
    ("seeds=[]", "'seeds' must list at least 1"), ("seeds=[[1, 2]]", "'seeds' must be distinct integers"),
    ("lora.r=100000", "'lora.r' must be >= 1 and <= 1024"),
    ("output_dir=", "'output_dir' must name a folder"),
    ("output_dir=$NO_SUCH_VARIABLE_HERE/run", "names an environment variable that is not set"),
])
def test_12_out_of_range_values_are_named(override, says, tiny_data, tiny_model, tmp_path, capsys,
                                          monkeypatch):
    monkeypatch.chdir(tmp_path)  # a check that let one through would write its run here, not in the checkout
    refused(sft_main, argv_for(tiny_data, tiny_model, tmp_path / "run", override), capsys, says)


def test_12_a_key_given_twice_or_a_section_that_is_not_one(tmp_path, capsys):
    from dporec import UserError
    from dporec.config import load_config
    twice = tmp_path / "twice.yaml"
    twice.write_text("sft:\n  learning_rate: 1.0e-5\ndpo:\n  beta: 0.2\nsft:\n  max_steps: 4\n")
    with pytest.raises(UserError, match=r"twice.yaml: .*'sft' appears twice \(lines 1 and 5\)"):
        load_config(twice)
    zero = tmp_path / "zero.yaml"
    zero.write_text("model: 0\n")
    with pytest.raises(UserError, match="'model' must be a mapping"):
        load_config(zero)


def test_12_output_dir_under_home_is_expanded(tmp_path, monkeypatch):
    from dporec.config import load_config
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(None, ["output_dir=~/runs/x"])["output_dir"] == str(tmp_path / "runs" / "x")
    assert load_config(None, ["output_dir=$HOME/y"])["output_dir"] == str(tmp_path / "y")


# ---------------------------------------------------------------------------------------------
# 6. A stale adapter is refused by the standalone scripts

def test_6_evaluating_a_dpo_built_from_a_retrained_sft_is_refused(finished, tiny_data, tiny_model, tmp_path,
                                                                   capsys):
    from tests.helpers import evaluate_main
    run = copy_of(finished, tmp_path)
    code, text = cli(sft_main, argv_for(tiny_data, tiny_model, run, *FAST, "seed=7", "--overwrite"), capsys)
    assert code == 0, text
    refused(evaluate_main, argv_for(tiny_data, tiny_model, run, *FAST, "seed=7", "--overwrite"), capsys,
            f"adapter {run / 'dpo'} is stale: built from sft", "python train_dpo.py")
    assert (run / "eval" / "results.json").is_file()  # refused before the old evaluation was replaced


def test_6_evaluating_with_settings_the_adapters_were_not_trained_with_is_refused(
        finished, tiny_data, tiny_model, tmp_path, capsys):
    from tests.helpers import evaluate_main
    run = copy_of(finished, tmp_path)
    beta = json.loads((run / "dpo" / "recipe.json").read_text())["settings"]["dpo.beta"]
    argv = argv_for(tiny_data, tiny_model, run, *FAST, "dpo.beta=0.37", "--overwrite")
    refused(evaluate_main, argv, capsys, f"adapter {run / 'dpo'} was trained with other settings or data",
            f"dpo.beta: {beta} -> 0.37", "python train_dpo.py")
    assert (run / "eval" / "results.json").is_file()
    # a setting of the evaluation alone is not the adapters' business
    code, text = cli(evaluate_main, argv_for(tiny_data, tiny_model, run, *FAST, "eval.batch_size=3",
                                             "--overwrite"), capsys)
    assert code == 0, text


# ---------------------------------------------------------------------------------------------
# 7. A second process into the same stage folder is refused

def test_7_a_live_lock_refuses_a_second_process_and_a_dead_one_is_cleared(tiny_data, tiny_model, tmp_path,
                                                                          capsys):
    import socket
    import subprocess
    import sys
    out = tmp_path / "run"
    (out / "sft").mkdir(parents=True)
    lock = out / "sft" / ".running"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        argv = argv_for(tiny_data, tiny_model, out, "sft.max_steps=1")
        refused(sft_main, argv, capsys, f"is being written by another process (pid {other.pid}, {lock})")
    finally:
        other.kill()
        other.wait()
    code, text = cli(sft_main, argv, capsys)  # the process that held it has ended: the lock is cleared
    assert code == 0, text
    assert "removing a lock left by an ended process" in text and not lock.exists()


def test_7_under_a_launcher_the_group_shares_one_lock_and_a_second_run_is_refused(tmp_path, monkeypatch):
    import os
    import socket
    import subprocess
    import sys

    from dporec import UserError
    from dporec.runs import lifecycle
    stage = tmp_path / "sft"
    stage.mkdir()
    monkeypatch.setenv("WORLD_SIZE", "2")  # a process of an `accelerate launch` group
    with lifecycle.stage_guard(stage):  # the first process of the group takes the lock for its agent
        held = json.loads((stage / ".running").read_text())
        assert held["pid"] == os.getppid()
        with lifecycle.stage_guard(stage):  # another process of the same group works in the folder too
            pass
        assert (stage / ".running").is_file()  # it did not remove the group's lock
        monkeypatch.setenv("WORLD_SIZE", "1")  # an unrelated single process while the group's agent lives
        with pytest.raises(UserError, match=f"being written by another process \\(pid {os.getppid()}"):
            lifecycle.prepare_run_dir(stage, False, True, "metrics.json")
        monkeypatch.setenv("WORLD_SIZE", "2")
    assert not (stage / ".running").exists()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a launched group is refused a folder a live unrelated run holds
        (stage / ".running").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(UserError, match=f"being written by another process \\(pid {other.pid}"):
            lifecycle.prepare_run_dir(stage, False, True, "metrics.json")
    finally:
        other.kill()
        other.wait()


# ---------------------------------------------------------------------------------------------
# 16. A half-written results.json is not a finished evaluation

def test_16_a_half_written_results_json(finished, tiny_data, tiny_model, tmp_path, capsys):
    from tests.helpers import evaluate_main
    run = copy_of(finished, tmp_path)
    results = run / "eval" / "results.json"
    results.write_text(results.read_text()[:100])  # cut short
    refused(evaluate_main, argv_for(tiny_data, tiny_model, run, *FAST, "resume=auto"), capsys,
            "results.json is half-written or unreadable", "--overwrite")
    text = experiment(run, tiny_data, tiny_model, capsys)  # the orchestrator runs it again
    assert "[eval] " in text and "half-written or unreadable: running the stage again" in text
    assert json.loads(results.read_text())["models"]


# ---------------------------------------------------------------------------------------------
# 15. A re-analysis deletes nothing of the user's, and keeps every earlier results.json

def test_15_reanalysing_an_edited_copy_in_the_eval_folder(finished, tiny_data, tiny_model, tmp_path, capsys):
    from tests.helpers import evaluate_main
    run = copy_of(finished, tmp_path)
    ev = run / "eval"
    scored, first = (ev / "predictions.csv").read_text(), json.loads((ev / "results.json").read_text())
    edited = ev / "edited.csv"
    edited.write_text(scored)
    (ev / "my notes.txt").write_text("a user's notes")
    argv = argv_for(tiny_data, tiny_model, run, *FAST)
    for source in (edited, ev / "predictions.csv"):  # the edited copy, then the result in place again
        code, text = cli(evaluate_main, [*argv, "--from-predictions", str(source), "--overwrite"], capsys)
        assert code == 0, text
    assert edited.read_text() == scored and (ev / "my notes.txt").read_text() == "a user's notes"
    assert (ev / "predictions.previous.csv").read_text() == scored  # the scored file, kept
    assert json.loads((ev / "results.previous.json").read_text()) == first  # the model-scored results
    assert (ev / "results.previous-2.json").is_file()  # the first re-analysis's, not replacing the above
    # what the scores were built from is still recorded: a retrained DPO still makes the evaluation stale
    assert json.loads((ev / "run_info.json").read_text())["inputs"]["dpo"]["relative"] == "dpo"


# ---------------------------------------------------------------------------------------------
# 13, 17. I/O faults as messages, not tracebacks

def _exit_of(main, capsys) -> tuple[int, str]:
    from dporec.config import run_main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(main)
    got = capsys.readouterr()
    return e.value.code, got.err + got.out


def test_13_a_full_disk_and_a_pickled_file_are_messages(capsys):
    import errno
    import pickle

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/sft/README.md")

    code, text = _exit_of(full, capsys)
    assert code == 2 and "runs/x/sft/README.md: the disk is full" in text and "Traceback" not in text

    def pickled():
        raise pickle.UnpicklingError("Weights only load failed ... weights_only=False ...")

    code, text = _exit_of(pickled, capsys)
    assert code == 2 and "pickled Python objects, which are refused" in text
    assert "weights_only=False" not in text  # never the unsafe advice


def test_17_sigterm_says_what_can_be_resumed(capsys):
    import os
    import signal

    def killed():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop main()")

    code, text = _exit_of(killed, capsys)
    assert code == 143 and "interrupted" in text


def test_13_a_lone_surrogate_in_a_title_is_named(tiny_data, tiny_model, tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    lines = (tiny_data / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[2])
    rec["input"] = rec["input"].replace("Option A: ", "Option A: \udc80", 1)
    lines[2] = json.dumps(rec)  # \\udc80 in the file: valid JSON, not text
    bad.write_text("\n".join(lines) + "\n")
    refused(sft_main, argv_for(tiny_data, tiny_model, tmp_path / "run", f"data.train_file={bad}"), capsys,
            f"{bad}:3: field 'input' holds a character that is not text")


def test_7_a_lock_from_another_machine_is_taken_over_with_a_warning(tiny_data, tiny_model, tmp_path, capsys):
    """A run folder on shared storage whose machine is gone (a Colab VM): the next run takes it over and
    says so, instead of refusing forever."""
    out = tmp_path / "run"
    (out / "sft").mkdir(parents=True)
    (out / "sft" / ".running").write_text(json.dumps({"pid": 12345, "host": "a-colab-vm-that-is-gone"}))
    code, text = cli(sft_main, argv_for(tiny_data, tiny_model, out, "sft.max_steps=1"), capsys)
    assert code == 0, text
    assert "was left by a process on a-colab-vm-that-is-gone" in text


def test_2_a_key_a_later_version_added_leaves_a_stage_current(finished, tmp_path):
    """A finished stage recorded before a config key existed is current when the run uses that key's
    default (what the earlier code did), stale when it sets another value."""
    from dporec import arms
    from dporec.config import load_config
    from dporec.runs import provenance
    run = copy_of(finished, tmp_path)
    recorded = json.loads((run / "sft" / "recipe.json").read_text())
    del recorded["settings"]["train.weight_decay"]
    (run / "sft" / "recipe.json").write_text(json.dumps(recorded))
    cfg = load_config(run / "sft" / "config.yaml", [f"output_dir={run}"])  # the run's own config
    now = provenance.recipe(cfg, arms.StageSpec(arms.SFT))
    assert provenance.recipe_changes(run / "sft", now) == []
    cfg["train"]["weight_decay"] = 0.5
    assert provenance.recipe_changes(run / "sft", provenance.recipe(cfg, arms.StageSpec(arms.SFT))) == [
        f"train.weight_decay: {load_config(None)['train']['weight_decay']} -> 0.5"]



# ---------------------------------------------------------------------------------------------
# 17. Smaller: data a user wrote by hand

def test_17_hand_written_data_faults_are_named(tiny_data, tmp_path):
    from dporec import UserError
    from dporec.data import records, sources
    line = json.loads((tiny_data / "train.jsonl").read_text().splitlines()[0])
    option_a = re.search(r"Option A: (.*)\.\n", line["input"]).group(1)  # B becomes A up to whitespace
    cases = {
        "typo": ({**line, "rejectd": "The better recommendation is Option B."}, "unknown field 'rejectd' "
                 "(did you mean 'rejected'?)"),
        "same movie": ({**line, "input": re.sub(r"Option B: .*", lambda m: f"Option B:  {option_a}  .",
                                                 line["input"])}, "Option A and Option B are the same movie"),
    }
    for name, (rec, says) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps(rec) + "\n")
        with pytest.raises(UserError, match=re.escape(says)):
            records.load_examples(path)
    lower = {**line, "output": line["output"].replace("Option A", "option a").replace("Option B", "option b")}
    (tmp_path / "lower.jsonl").write_text(json.dumps(lower) + "\n")
    with pytest.raises(UserError, match=r"lower.jsonl:1: .*writes 'option [ab]'.*capital O, capital letter"):
        records.load_examples(tmp_path / "lower.jsonl")
    cr = tmp_path / "cr.jsonl"  # an old Mac file: lines end in a lone \r
    cr.write_bytes("\r".join((tiny_data / "train.jsonl").read_text().splitlines()[:3]).encode() + b"\r")
    assert len(records.load_examples(cr)) == 3
    from dporec.data import built
    with pytest.raises(UserError, match="synthetic:3: the build left the .* split\\(s\\) empty"):
        built.check_not_empty(sources.build("synthetic:3", tmp_path / "three", seed=0), "synthetic:3")


# ---------------------------------------------------------------------------------------------
# 8. A stage never deletes the user's own folders

def test_8_a_finished_stage_folder_that_is_a_users_folder_is_never_deleted(tmp_path, monkeypatch):
    from dporec import UserError
    from dporec.runs import lifecycle
    home = tmp_path / "home"
    home.mkdir()
    (home / "metrics.json").write_text("{}")  # looks like a finished stage
    (home / "thesis.docx").write_text("a user's file")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "metrics.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for where in (home, Path(".")):  # the home folder, the working folder
        with pytest.raises(UserError, match="refusing to delete"):
            lifecycle.prepare_run_dir(where, False, True, "metrics.json")
    assert (home / "thesis.docx").read_text() == "a user's file"


# ---------------------------------------------------------------------------------------------
# 17. Smaller: links that lead nowhere, a preflight check that fails in a library

def test_17_a_symlink_loop_and_a_dangling_link_are_named_as_such(tiny_data, tiny_model, tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    (tmp_path / "gone").symlink_to(tmp_path / "moved-away.jsonl")
    out = tmp_path / "out"
    refused(sft_main, ["--config", str(tmp_path / "a")], capsys, "a is a symbolic link loop")
    refused(sft_main, argv_for(tiny_data, tiny_model, out, f"data.train_file={tmp_path / 'gone'}"), capsys,
            "gone is a symbolic link to", "moved-away.jsonl, which does not exist")
    refused(sft_main, argv_for(tiny_data, tiny_model, out, f"data.train_file={tmp_path / 'a' / 'x.jsonl'}"),
            capsys, "a is a symbolic link loop")
    assert not out.exists()


def test_17_a_check_that_fails_names_the_projects_line_and_the_librarys(tmp_path):
    from dporec.preflight.table import FAIL, run_checks

    def check_reads_json(facts):
        return json.loads("{")  # raised inside the json library, called from this file

    [(status, name, detail, fix)] = run_checks([check_reads_json], None)
    assert status == FAIL and name == "reads json"
    assert "the check itself failed: JSONDecodeError" in detail
    assert re.search(r"\(tests/e2e/test_faults_round_two\.py:\d+, raised in decoder\.py:\d+\)$",
                     detail), detail


def test_17_a_launcher_is_taken_from_the_command_line_only(tmp_path):
    from dporec import UserError
    from dporec.config import load_config
    shared = tmp_path / "shared.yaml"
    shared.write_text("experiment:\n  launcher: touch pwned\n")
    with pytest.raises(UserError, match="shared.yaml: 'experiment.launcher' runs a command, so it is taken "
                                        "from the command line only"):
        load_config(shared)
    assert load_config(None, ["experiment.launcher=accelerate launch"])["experiment"]["launcher"] == \
        "accelerate launch"
    (tmp_path / "run_info.json").write_text("{}")  # a stage's own record: read back, it launches nothing
    assert load_config(shared)["experiment"]["launcher"] is None


def test_12_an_adapter_name_with_a_dot_is_named_before_the_model_loads(finished, tiny_data, tiny_model,
                                                                       tmp_path, capsys):
    from tests.helpers import evaluate_main
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    refused(evaluate_main, argv_for(tiny_data, tiny_model, out, "--overwrite", "eval.models=[base]",
                                    f"eval.adapters={{my.sft: {out / 'sft'}}}"), capsys,
            "eval.adapters: the name 'my.sft' must be letters, digits, '_' or '-'", "e.g. 'my_sft'")
    assert (out / "eval" / "results.json").is_file()  # the finished evaluation is untouched


def test_7_a_lock_is_never_read_empty_by_a_second_process(tmp_path, monkeypatch):
    """The lock is created holding its owner (hard-linked into place), so a process that finds it never
    reads it empty and takes it for one a crash left."""
    import os

    from dporec.runs import lifecycle
    stage = tmp_path / "sft"
    stage.mkdir()
    seen = []
    real_link = os.link

    def link_and_look(src, dst, *a, **k):  # the moment the lock appears, what would a reader see?
        real_link(src, dst, *a, **k)
        seen.append(Path(dst).read_text())
    monkeypatch.setattr(os, "link", link_and_look)
    with lifecycle.stage_guard(stage):
        assert json.loads(seen[0])["pid"] == os.getpid()
        assert [p.name for p in stage.iterdir()] == [".running"]  # no temporary file left beside it
    assert not (stage / ".running").exists()
