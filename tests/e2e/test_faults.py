"""Faults a user meets, run as the scripts run them (config.run_main): bad data lines, bad config values,
unreadable files, broken models and adapters, half-written checkpoints, unwritable folders, Ctrl-C.

Each case asserts the exit status, that the message names the file and line or the config key, that no
traceback is printed, and that nothing the user had was lost or silently changed. Numbers in the test
names follow the fault-injection review's list (the README's "When something goes wrong").
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dporec import ROOT, UserError, files, weights
from dporec.config import load_config, parse_args, run_main
from dporec.data import candidates, records
from dporec.modeling.local_models import build_tiny_llama
from dporec.runs import provenance
from dporec.training import stages
from tests.helpers import TINY_CONFIG, dpo_main, evaluate_main, sft_main, tiny_overrides, verify_main

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(ROOT_USER, reason="root ignores file permissions")


def argv_for(tiny_data, tiny_model, out, *extra) -> list[str]:
    return ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, out), *extra]


def cli(main, argv, capsys) -> tuple[int, str]:
    """main(argv) as its script runs it: (exit status, stderr + stdout)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_main(lambda: main(argv))
    got = capsys.readouterr()
    return e.value.code, got.err + got.out


def refused(main, argv, capsys, *says) -> str:
    """The script exits 2 with a one-line reason holding every one of `says`, and no traceback."""
    code, text = cli(main, argv, capsys)
    assert code == 2, text
    assert "Traceback" not in text
    for s in says:
        assert s in text, (s, text)
    return text


def verify_fails(argv, capsys, *says) -> str:
    capsys.readouterr()
    assert verify_main(argv) == 1
    text = capsys.readouterr().out
    for s in says:
        assert s in text, (s, text)
    return text


def edited_copy(src: Path, dst: Path, line: int, **fields) -> Path:
    """src with line `line` (1-based) given new field values."""
    lines = src.read_text().splitlines()
    rec = json.loads(lines[line - 1])
    rec.update(fields)
    lines[line - 1] = json.dumps(rec)
    dst.write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_model, tmp_path_factory) -> Path:
    """A finished SFT run on the tiny fixtures (its adapter is what the adapter cases break)."""
    out = tmp_path_factory.mktemp("trained")
    argv = argv_for(tiny_data, tiny_model, out)
    assert stages.run_sft(parse_args("", argv)[1]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# 1. An answer that names both options, or a letter other than A/B, is a bad line everywhere

AMBIGUOUS = [("The better recommendation is Option A or Option B.", "more than one option"),
             ("The better recommendation is Option B or maybe Option A. Reasoning: both fit.",
              "more than one option"),
             ("The better recommendation is Option C.", "'Option C'")]


@pytest.mark.parametrize("output,says", AMBIGUOUS)
def test_1_ambiguous_answer_is_refused_not_guessed(output, says, tiny_data, tiny_model, tmp_path, capsys):
    bad = edited_copy(tiny_data / "train.jsonl", tmp_path / "train.jsonl", 3, output=output)
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", f"data.train_file={bad}")
    refused(sft_main, argv, capsys, f"{bad}:3", says)
    refused(dpo_main, argv, capsys, f"{bad}:3", says)
    verify_fails(argv, capsys, f"{bad}:3", says)
    assert not (tmp_path / "run").exists()


def test_1_check_dataset_refuses_an_ambiguous_answer(tiny_data, tmp_path):
    bad = edited_copy(tiny_data / "train.jsonl", tmp_path / "train.jsonl", 2,
                      output="The better recommendation is Option A or Option B.")
    done = subprocess.run([sys.executable, str(ROOT / "data" / "check_dataset.py"), str(bad)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and f"{bad}:2" in done.stderr and "Traceback" not in done.stderr


def test_1_reasoning_may_name_the_other_option():
    rec = {"instruction": "i", "input": "History: x. Option A: M1 (1990). Option B: M2 (1991).",
           "output": "The better recommendation is Option A. Option B is a weaker fit."}
    ok = records.parse_record(rec, "f:1", "f:1")
    assert ok.label == "A" and ok.reasoning == "Option B is a weaker fit."


# ---------------------------------------------------------------------------------------------
# 2. Over-long examples are refused by line before training, not dropped by TRL

def test_2_overlong_example_is_named_not_dropped(tiny_data, tiny_model, tmp_path, capsys):
    long_instruction = "Read the whole history carefully. " * 120
    bad = edited_copy(tiny_data / "train.jsonl", tmp_path / "train.jsonl", 5, instruction=long_instruction)
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", f"data.train_file={bad}")
    for main in (sft_main, dpo_main):
        extra = [] if main is sft_main else ["dpo.init=base"]
        text = refused(main, argv + extra, capsys, f"{bad}:5", "model.max_seq_length=512", "1 of ")
        assert f"{bad}:4" not in text
        assert not (tmp_path / "run" / ("sft" if main is sft_main else "dpo")).exists()  # no empty folder
    verify_fails(argv, capsys, f"{bad}:5", "data: lengths")


def test_2_all_examples_too_long_is_the_same_clear_refusal(tiny_data, tiny_model, tmp_path, capsys):
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", "model.max_seq_length=64")
    n = len(records.load_examples(tiny_data / "train.jsonl",
                                  32)) + len(records.load_examples(tiny_data / "val.jsonl", 16))
    refused(sft_main, argv, capsys, f"{n} of {n} examples are longer than model.max_seq_length=64")


# ---------------------------------------------------------------------------------------------
# 4. Every knob has its range, checked at load time with the key named (verify_setup.py too)

BAD_VALUES = ["train.batch_size=0", "train.grad_accum=0", "sft.learning_rate=-0.0001", "lora.r=0",
              "lora.dropout=1.5", "model.max_seq_length=8", "dpo.loss_type=[nonsense]",
              "eval.bootstrap_samples=0", "dpo.beta=-1", "sft.learning_rate=0", "eval.alpha=2",
              "train.warmup_ratio=2", "data.max_train_examples=0", "data.max_train_examples=-1",
              "dpo.loss_weights=[1.0, 1.0]", "lora.target_modules=[]", "sft.max_steps=0"]


@pytest.mark.parametrize("override", BAD_VALUES)
def test_4_out_of_range_value_names_its_key(override, tiny_data, tiny_model, tmp_path, capsys):
    key = override.split("=")[0]
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", override)
    refused(sft_main, argv, capsys, key)
    refused(verify_main, argv, capsys, key)
    assert not (tmp_path / "run").exists()


def test_4_bad_value_in_a_yaml_file_names_the_file_and_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dpo:\n  beta: -1\n")
    with pytest.raises(UserError, match=rf"{cfg}: 'dpo.beta' must be > 0"):
        load_config(cfg)


def test_4_defaults_and_shipped_configs_are_in_range():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# 5. A stage built from an adapter that has changed since is stale (run_experiment.py reruns it)

def test_5_changed_input_makes_a_finished_stage_stale(tmp_path, capsys):
    from dporec import arms, experiment
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "adapter_model.safetensors").write_bytes(b"first training")
    dpo = tmp_path / "dpo"
    dpo.mkdir()
    provenance.write_run_info(dpo, load_config(TINY_CONFIG), inputs=provenance.input_record({"sft": sft}))
    (dpo / "metrics.json").write_text("{}")
    calls = []

    def train_dpo(cfg, spec):
        calls.append(spec.overwrite)
        provenance.write_run_info(dpo, cfg, inputs=provenance.input_record({"sft": sft}))
        (dpo / "metrics.json").write_text("{}")
        return 0

    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path}"])
    spec = arms.StageSpec(arms.DPO)
    assert experiment.run_stage(cfg, spec, train_dpo) == "skipped"
    (sft / "adapter_model.safetensors").write_bytes(b"trained again with another seed")
    assert experiment.run_stage(cfg, spec, train_dpo) == "done"
    assert calls == [True] and f"stale: built from other inputs or settings (sft ({sft}), which has changed" \
        in capsys.readouterr().out
    assert experiment.run_stage(cfg, spec, train_dpo) == "skipped"


# ---------------------------------------------------------------------------------------------
# 6. Unreadable files: a clear message naming the file, never a decoding traceback

def _utf16(src: Path, dst: Path) -> Path:
    dst.write_text(src.read_text(), encoding="utf-16")
    return dst


@pytest.mark.parametrize("kind", ["utf16", "binary", "folder"])
def test_6_unreadable_data_file_is_named(kind, tiny_data, tiny_model, tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    if kind == "utf16":
        _utf16(tiny_data / "train.jsonl", bad)
        says = "UTF-16"
    elif kind == "binary":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)) * 4)
        says = "not UTF-8 text"
    else:
        bad.mkdir()
        says = "is a folder"
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", f"data.train_file={bad}")
    refused(sft_main, argv, capsys, str(bad), says)
    verify_fails(argv, capsys, str(bad))


def test_6_utf16_config_and_candidate_file_are_named(tiny_data, tmp_path, capsys):
    cfg = _utf16(TINY_CONFIG, tmp_path / "tiny.yaml")
    refused(sft_main, ["--config", str(cfg)], capsys, str(cfg), "UTF-16")
    sets = tmp_path / "ranking_test.jsonl"
    sets.write_bytes(b'{"user_id": 1}\n\x00\x00\n')
    with pytest.raises(UserError, match=rf"{sets}:2: holds NUL bytes"):
        candidates.load(sets)


@needs_permissions
def test_6_unreadable_permission_is_named(tiny_data, tiny_model, tmp_path, capsys):
    bad = shutil.copy(tiny_data / "train.jsonl", tmp_path / "train.jsonl")
    os.chmod(bad, 0)
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", f"data.train_file={bad}")
    refused(sft_main, argv, capsys, f"cannot read {bad}")


# ---------------------------------------------------------------------------------------------
# 7. Models and adapters are opened before anything loads: missing weights, offline hub ids,
#    truncated adapters, another base of another shape, a same-named base with other weights

def test_7_model_folder_without_weights(tiny_data, tiny_model, tmp_path, capsys):
    model = shutil.copytree(tiny_model, tmp_path / "tiny-llama",
                            ignore=shutil.ignore_patterns("*.safetensors"))
    argv = argv_for(tiny_data, model, tmp_path / "run")
    refused(sft_main, argv, capsys, str(model), "no weights")
    verify_fails(argv, capsys, "no weights")
    assert not (tmp_path / "run").exists()


def test_7_hub_id_offline_is_named(tiny_data, tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", "model.name=example-org/not-downloaded-model")
    refused(sft_main, argv, capsys, "example-org/not-downloaded-model", "HF_HUB_OFFLINE")
    verify_fails(argv, capsys, "HF_HUB_OFFLINE")


def _adapter_copy(trained: Path, dst: Path, **config) -> Path:
    folder = shutil.copytree(trained / "sft", dst, ignore=shutil.ignore_patterns("checkpoint-*"))
    acfg = json.loads((folder / "adapter_config.json").read_text())
    acfg.update(config)
    (folder / "adapter_config.json").write_text(json.dumps(acfg))
    return folder


def test_7_truncated_adapter_is_found_before_the_base_loads(trained, tiny_data, tiny_model, tmp_path, capsys):
    cut = _adapter_copy(trained, tmp_path / "cut")
    weights_file = cut / "adapter_model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", "eval.models=[base]",
                    f"eval.adapters={{cut: {cut}}}")
    refused(evaluate_main, argv, capsys, str(weights_file), "truncated")
    verify_fails(argv + ["--for-eval"], capsys, "truncated")
    refused(dpo_main, argv_for(tiny_data, tiny_model, tmp_path / "run", f"dpo.sft_adapter={cut}"), capsys,
            "truncated")
    assert not (tmp_path / "run").exists()


def test_7_adapter_for_another_shape_is_refused(trained, tiny_data, tmp_path, capsys):
    wide = build_tiny_llama(tmp_path / "wide" / "tiny-llama", hidden=128)
    adapter = _adapter_copy(trained, tmp_path / "a", base_model_name_or_path=str(wide))
    argv = argv_for(tiny_data, wide, tmp_path / "run", "eval.models=[base]",
                    f"eval.adapters={{a: {adapter}}}")
    refused(evaluate_main, argv, capsys, "does not fit", "which needs a base whose", "this base has")
    verify_fails(argv + ["--for-eval"], capsys, "does not fit")


def test_7_same_named_base_with_other_weights_is_refused(trained, tiny_data, tiny_model, tmp_path, capsys):
    """The model folder rebuilt in place (same name, same shape, other weights): the adapter would load
    and score a different model without complaint; the base fingerprint its training recorded says so."""
    rebuilt = build_tiny_llama(tmp_path / "rebuilt" / "tiny-llama", seed=1)
    adapter = _adapter_copy(trained, tmp_path / "a", base_model_name_or_path=str(rebuilt))
    recorded = json.loads((adapter / "run_info.json").read_text())["base_fingerprint"]
    assert recorded and recorded == weights.fingerprint_base(str(tiny_model))
    argv = argv_for(tiny_data, rebuilt, tmp_path / "run", "eval.models=[base]",
                    f"eval.adapters={{a: {adapter}}}")
    refused(evaluate_main, argv, capsys, "other weights", recorded)
    verify_fails(argv + ["--for-eval"], capsys, "other weights")
    # a copy of the same weights under another folder is the same base
    same = shutil.copytree(tiny_model, tmp_path / "copy" / "tiny-llama")
    assert weights.fingerprint_base(str(same)) == recorded


# ---------------------------------------------------------------------------------------------
# 8. A half-written newest checkpoint: resume from the newest complete one, and say so

def _interrupt_after_save(step: int):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt
    return Interrupt()


def test_8_half_written_checkpoint_falls_back(trained, tiny_data, tiny_model, tmp_path, capsys):
    argv = argv_for(tiny_data, tiny_model, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        stages.run_sft(parse_args("", argv)[1], callbacks=[_interrupt_after_save(8)])
    (tmp_path / "sft" / "checkpoint-8" / "trainer_state.json").unlink()  # killed while saving
    capsys.readouterr()
    assert stages.run_sft(parse_args("", [*argv, "--resume"])[1]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-8 is incomplete" in out and "continuing from" in out and "checkpoint-4" in out
    a = load_file(str(trained / "sft" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "sft" / "adapter_model.safetensors"))
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_8_no_complete_checkpoint_says_so(tiny_data, tiny_model, tmp_path, capsys):
    (tmp_path / "sft" / "checkpoint-4").mkdir(parents=True)
    argv = argv_for(tiny_data, tiny_model, tmp_path, "--resume")
    refused(sft_main, argv, capsys, "no checkpoint", "is complete", "--overwrite")
    assert (tmp_path / "sft" / "checkpoint-4").is_dir()  # nothing deleted


# ---------------------------------------------------------------------------------------------
# 9. Output folder problems surface before any model loads, and in verify_setup.py

def test_9_output_dir_that_is_a_file(tiny_data, tiny_model, tmp_path, capsys):
    out = tmp_path / "runs"
    out.write_text("my notes")
    argv = argv_for(tiny_data, tiny_model, out)
    refused(sft_main, argv, capsys, str(out), "is a file")
    verify_fails(argv, capsys, "is a file")
    assert out.read_text() == "my notes"


@needs_permissions
def test_9_read_only_folders(tiny_data, tiny_model, tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o555)
    try:
        argv = argv_for(tiny_data, tiny_model, parent / "run")
        refused(sft_main, argv, capsys, "cannot write in", str(parent))
        verify_fails(argv, capsys, "cannot write in")
    finally:
        os.chmod(parent, 0o755)
    stage = tmp_path / "run" / "sft"
    stage.mkdir(parents=True)
    os.chmod(stage, 0o555)
    try:
        refused(sft_main, argv_for(tiny_data, tiny_model, tmp_path / "run"), capsys, "cannot write in",
                str(stage))
    finally:
        os.chmod(stage, 0o755)


# ---------------------------------------------------------------------------------------------
# 10. results.json is written whole or not at all; no empty stage folder after an early failure

def test_10_results_json_is_never_half_written(tmp_path, monkeypatch):
    path = tmp_path / "results.json"

    def crash(self, target):
        raise OSError("killed mid-write")
    monkeypatch.setattr(Path, "replace", crash)
    with pytest.raises(OSError):
        files.write_json(path, {"models": {}})
    assert not path.exists()  # a finished-evaluation marker appears only complete


# ---------------------------------------------------------------------------------------------
# 11. Words that fit the situation: Ctrl-C before any checkpoint and during evaluation, --resume --overwrite

def _interrupt_at_step(step: int):
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt
    return Interrupt()


def test_11_ctrl_c_before_a_checkpoint_does_not_advise_resume(tiny_data, tiny_model, tmp_path, capsys):
    argv = argv_for(tiny_data, tiny_model, tmp_path)
    code, text = cli(lambda a: stages.run_sft(parse_args("", a)[1], callbacks=[_interrupt_at_step(1)]),
                     argv, capsys)
    assert code == 130 and "before the first checkpoint" in text and "--resume" not in text
    code, text = cli(lambda a: stages.run_sft(parse_args("", a)[1], callbacks=[_interrupt_at_step(5)]),
                     argv, capsys)
    assert code == 130 and "--resume" in text and "checkpoint-4" in text


def test_11_ctrl_c_during_evaluation(trained, tiny_data, tiny_model, tmp_path, capsys, monkeypatch):
    from dporec.evaluation import stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(stage, "score_all", interrupted)
    argv = argv_for(tiny_data, tiny_model, tmp_path / "run", "eval.models=[base]")
    code, text = cli(evaluate_main, argv, capsys)
    assert code == 130 and "keeps no partial results" in text and "--resume" not in text
    assert not (tmp_path / "run" / "eval").exists()


def test_11_resume_with_overwrite_names_both_flags(tiny_data, tiny_model, tmp_path, capsys):
    argv = argv_for(tiny_data, tiny_model, tmp_path, "--resume", "--overwrite")
    refused(sft_main, argv, capsys, "--resume and --overwrite contradict each other")
