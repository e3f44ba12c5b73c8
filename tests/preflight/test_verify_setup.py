"""verify_setup.py on the tiny config: passes when model and data are present, and fails with a
message that names the problem (FILE:LINE for data, the adapter folder for evaluation)."""
from __future__ import annotations

import json
import shutil

import pytest

from dporec import ROOT
from dporec.preflight import environment as env
from dporec.preflight import smoke, table
from tests.helpers import TINY_CONFIG, tiny_overrides, verify_main


def run(capsys, *argv):
    code = verify_main(["--config", str(TINY_CONFIG), *argv])
    return code, capsys.readouterr().out


def fail_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.lstrip().startswith(("✗", "X "))]


def test_good_tiny_config_passes(capsys, tiny_data, tiny_model, tmp_path):
    code, out = run(capsys, *tiny_overrides(tiny_data, tiny_model, tmp_path / "run"))
    assert code == 0, out
    assert fail_rows(out) == []
    for name in ("packages", "4-bit matmul", "model", "memory", "data: files", "data: users", "data: pairs",
                 "data: ids", "disk"):
        assert any(line.lstrip().startswith("✓") and f" {name} " in line
                   for line in out.splitlines()), (name, out)
    # Adapters that do not exist yet are only a warning before training.
    assert "adapter: sft" in out and "not trained yet" in out
    assert "4-bit matmuls in float32" in out  # what the loader sets every 4-bit layer to
    assert "the DPO stage by route" in out and "<- this config" in out  # both DPO routes, side by side


def test_a_results_file_of_another_gpu_is_named_not_silently_ignored(capsys, tiny_data, tiny_model, tmp_path):
    """--utilisation with a file measured on another GPU than the ones predicted for: the time row says the
    assumed utilisations apply instead of quietly printing them."""
    measured = tmp_path / "h100-sxm.json"
    measured.write_text(json.dumps({"convention": "matmul-6N", "gpu": "H100 SXM",
                                    "utilisation": {"hf": {"train": 0.3}}}))
    over = tiny_overrides(tiny_data, tiny_model, tmp_path / "run")
    _, out = run(capsys, "--utilisation", str(measured), *over)
    assert "was measured on H100 SXM, not on RTX 3090 or T4 (fp16): the assumed utilisations apply" in out


def test_a_prequantized_checkpoints_compute_dtype_is_named(tiny_cfg, tiny_model, tmp_path):
    """A pre-quantized checkpoint keeps its own bnb_4bit_compute_dtype in transformers; the model row says
    the loader sets the 4-bit matmuls to the run's dtype instead."""
    from dporec.config import updated
    from dporec.preflight import inputs
    model = tmp_path / "prequantized"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"}
    (model / "config.json").write_text(json.dumps(config))
    status, _, detail, _ = inputs.check_model(table.Facts(updated(tiny_cfg, {"model.name": str(model)}), "x"))
    assert status == table.OK
    assert "bnb_4bit_compute_dtype=bfloat16: the 4-bit matmuls are set to run in float32" in detail


def _copy_data(tiny_data, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(tiny_data, dst)
    return dst


def test_broken_data_file_names_file_and_line(capsys, tiny_data, tiny_model, tmp_path):
    data = _copy_data(tiny_data, tmp_path)
    val = data / "val.jsonl"
    lines = val.read_text().splitlines()
    rec = json.loads(lines[2])
    del rec["output"]
    lines[2] = json.dumps(rec)
    val.write_text("\n".join(lines) + "\n")
    code, out = run(capsys, *tiny_overrides(data, tiny_model, tmp_path / "run"))
    assert code == 1
    assert f"{val}:3: missing field 'output'" in out
    assert any("data: val" in line for line in fail_rows(out)), out
    assert "fix:" in out


def test_user_in_two_splits_fails(capsys, tiny_data, tiny_model, tmp_path):
    data = _copy_data(tiny_data, tmp_path)
    train_user = json.loads((data / "train.jsonl").read_text().splitlines()[0])["user_id"]
    test = data / "test.jsonl"
    lines = test.read_text().splitlines()
    rec = json.loads(lines[0])
    rec["user_id"] = train_user
    lines[0] = json.dumps(rec)
    test.write_text("\n".join(lines) + "\n")
    code, out = run(capsys, *tiny_overrides(data, tiny_model, tmp_path / "run"))
    assert code == 1
    assert any("data: users" in line and "train and test" in line for line in fail_rows(out)), out
    assert f"{test}:1" in out


def test_missing_adapter_fails_for_eval(capsys, tiny_data, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    code, out = run(capsys, "--for-eval", *tiny_overrides(tiny_data, tiny_model, run_dir))
    assert code == 1
    failed = fail_rows(out)
    assert any("adapter: sft" in line and str(run_dir / "sft") in line for line in failed), out
    assert any("adapter: dpo" in line for line in failed), out


def test_adapter_of_another_base_model_fails(capsys, tiny_data, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "sft").mkdir(parents=True)
    (run_dir / "sft" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "meta-llama/Meta-Llama-3-8B", "r": 8}))
    code, out = run(capsys, *tiny_overrides(tiny_data, tiny_model, run_dir))
    assert code == 1
    assert any("adapter: sft" in line and "Meta-Llama-3-8B" in line for line in fail_rows(out)), out


def test_missing_model_folder_gives_build_command(capsys, tiny_data, tmp_path):
    missing = tmp_path / "models" / "tiny-llama"
    code, out = run(capsys, *tiny_overrides(tiny_data, missing, tmp_path / "run"))
    assert code == 1
    assert f"folder not found: {missing}" in out
    assert "scripts/build_tiny_model.py" in out


def test_a_crashing_check_becomes_a_failed_row(tiny_cfg):
    def check_boom(ctx):
        raise RuntimeError("boom")

    rows = table.run_checks([check_boom, env.check_python], table.Facts(tiny_cfg, "x.yaml"))
    assert rows[0][0] == table.FAIL and rows[0][1] == "boom" and "RuntimeError: boom" in rows[0][2]
    assert rows[1][0] == table.OK


def test_pins_come_from_the_requirements_files():
    core = env.parse_pins(ROOT / "requirements-core.txt")
    gpu = env.parse_pins(ROOT / "requirements.txt")
    assert str(core["trl"].specifier) == "==1.14.0"
    assert "unsloth" in gpu and "trl" in gpu  # -r requirements-core.txt is followed


@pytest.mark.slow
def test_smoke_trains_a_few_steps(capsys, tiny_data, tiny_model, tmp_path):
    code, out = run(capsys, "--smoke", *tiny_overrides(tiny_data, tiny_model, tmp_path / "run"))
    assert code == 0, out
    assert any(line.lstrip().startswith("✓") and "smoke training" in line and "(SFT on hf, DPO on hf)" in line
               for line in out.splitlines()), out


# ---------------------------------------------------------------------------------------------
# GPU install problems (issue 11): each is a ✗ with its fix, decided by functions a CPU can run

FAKE_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name,driver_version" ]; then echo "NVIDIA GeForce RTX 3090, 550.54.15"; exit 0; fi
echo "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |"
"""


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CPU behaviour")
def test_gpu_visible_but_unusable_by_torch_fails_with_fix(capsys, tiny_data, tiny_model, tmp_path,
                                                          monkeypatch):
    """nvidia-smi works (a real executable on PATH printing what a 3090 box prints), torch sees no GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    code, out = run(capsys, *tiny_overrides(tiny_data, tiny_model, tmp_path / "run"))
    assert code == 1
    gpu = [line for line in fail_rows(out) if " gpu " in line]
    assert gpu and "nvidia-smi sees NVIDIA GeForce RTX 3090 (driver 550.54.15, CUDA 12.4)" in gpu[0], out
    assert "CPU-only build" in gpu[0]
    assert "fix: pip install -r requirements.txt" in out and "R570" in out


def test_gpu_unusable_fix_names_the_driver_when_torch_wants_newer_cuda():
    smi = {"name": "NVIDIA GeForce RTX 3090", "driver": "550.54.15", "cuda": "12.4"}
    status, name, detail, fix = env.gpu_unusable_row(smi, "2.14.1+cu130", "13.0")
    assert status == table.FAIL and "built for CUDA 13.0" in detail
    assert "update the NVIDIA driver" in fix and "requirements.txt" in fix
    assert env.driver_row({**smi, "driver": "550.54.15"})[0] == table.WARN
    assert env.driver_row({**smi, "driver": "570.86.10"})[0] == table.OK


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CPU behaviour")
def test_gpu_sized_config_without_gpu_is_a_failure(capsys, tiny_data, tmp_path):
    """The 8B thesis config on a CPU: ✗ (the scripts would refuse it), unless explicitly opted in."""
    cfg = str(ROOT / "configs" / "llama3_8b.yaml")
    data = [f"data.train_file={tiny_data / 'train.jsonl'}", f"data.val_file={tiny_data / 'val.jsonl'}",
            f"data.test_file={tiny_data / 'test.jsonl'}", f"output_dir={tmp_path / 'run'}"]
    code = verify_main(["--config", cfg, *data])
    out = capsys.readouterr().out
    assert code == 1
    needs = [line for line in fail_rows(out) if "needs a gpu" in line]
    assert needs and "unsloth/llama-3-8b-bnb-4bit (about 8B parameters) needs a CUDA GPU" in needs[0], out
    verify_main(["--config", cfg, *data, "model.backend=hf", "model.allow_cpu=true"])
    assert "needs a gpu" not in capsys.readouterr().out


def test_smoke_runs_with_the_users_backends(tiny_cfg, tmp_path):
    """The smoke run keeps the user's model.backend and dpo.prefix_sharing, so each stage runs on the backend
    the real run plans for it (on a GPU with Unsloth: SFT under Unsloth, the shared-prompt DPO on hf);
    without a process setup it runs on hf."""
    from dporec.config import updated
    facts = table.Facts(updated(tiny_cfg, {"dpo.prefix_sharing": False}), "x.yaml")
    assert smoke.smoke_config(facts, tmp_path, tmp_path / "m")["model"]["backend"] == "hf"  # no setup yet
    facts.setup()
    assert facts.runtime.process_backend == "hf" and facts.setup_error is None
    cfg = smoke.smoke_config(facts, tmp_path, tmp_path / "m")
    assert cfg["model"]["backend"] == "auto" and not cfg["dpo"]["prefix_sharing"]


def test_smoke_runs_a_stage_this_process_cannot_run_in_a_fresh_one(standin_unsloth, tiny_cfg):
    """Under a process-wide patch of Llama's forward (the stand-in for Unsloth), the hf stages of the smoke
    run go to fresh processes, as run_experiment.py sends them, and pass there."""
    facts = table.Facts(tiny_cfg, "x.yaml")
    facts.setup()
    status, name, detail = smoke.check_smoke(facts)[:3]
    assert status == table.OK, detail
    assert "SFT on hf in a fresh process" in detail and "DPO on hf in a fresh process" in detail
    assert not any(training for training, _ in standin_unsloth)  # nothing trained under the patch
