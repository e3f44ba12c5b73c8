"""Training under `accelerate launch` with two CPU processes (DDP over gloo): the same scripts, one
adapter, metrics written once, and each process trained on its own shard of the data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dporec import ROOT, UserError
from tests.helpers import TINY_CONFIG, experiment_main, tiny_overrides

ACCELERATE = Path(sys.executable).with_name("accelerate")


def launch(script: str, overrides: list[str]) -> subprocess.CompletedProcess:
    # --multi_gpu selects accelerate's torchrun launcher; with no GPU, accelerate runs the group on the
    # CPU over gloo (`--cpu` would start a single process).
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531",
           str(ROOT / script), "--config", str(TINY_CONFIG), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed next to python")
def test_two_process_sft_then_dpo(tiny_data, tiny_model, tmp_path):
    # 32 training examples, batch 4, 2 processes: 4 steps are one epoch, each process its own 16.
    over = tiny_overrides(tiny_data, tiny_model, tmp_path / "run") + ["sft.max_steps=4", "dpo.max_steps=4",
                                                                        "train.save_steps=2"]
    for stage, script in (("sft", "train_sft.py"), ("dpo", "train_dpo.py")):
        proc = launch(script, over)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = tmp_path / "run" / stage
        assert (out / "adapter_model.safetensors").is_file()
        assert not (out / ".datasets").exists()  # the copies both processes read are cleaned up
        assert not (out / ".running").exists()   # the group's one lock, released
        m = json.loads((out / "metrics.json").read_text())
        assert m["world_size"] == 2 and m["steps"] == 4
        shards = m["data_shards"]
        assert shards["world_size"] == 2
        assert shards["examples_per_process"] == [16, 16]                      # each its own half ...
        assert shards["first_epoch_examples_in_two_processes"] == 0             # ... and no example in both
        # written by the main process alone: one summary line, not two
        assert proc.stdout.count(f"[{stage}] done:") == 1, proc.stdout
    # DPO from the SFT adapter under DDP keeps the reference semantics: rewards 0 at step 0
    init = json.loads((tmp_path / "run" / "dpo" / "metrics.json").read_text())["initial_eval"]
    assert abs(init["eval_rewards/chosen"]) < 1e-3

    # An SFT run interrupted after checkpoint-2 and resumed under DDP ends where the straight run ended.
    cut = tmp_path / "cut" / "sft"
    cut.mkdir(parents=True)
    shutil.copytree(tmp_path / "run" / "sft" / "checkpoint-2", cut / "checkpoint-2")
    over_cut = [o for o in over if not o.startswith("output_dir=")] + [f"output_dir={tmp_path / 'cut'}",
                                                                       "--resume"]
    proc = launch("train_sft.py", over_cut)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((cut / "metrics.json").read_text())["resumed_from"].endswith("checkpoint-2")
    a = load_file(str(tmp_path / "run" / "sft" / "adapter_model.safetensors"))
    b = load_file(str(cut / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)



def test_run_experiment_runs_training_stages_under_a_launcher(tiny_data, tiny_model, tmp_path, capsys):
    """experiment.launcher runs each training stage as a child process under that command (here the
    plain interpreter; `accelerate launch ...` on a multi-GPU machine), then evaluates in-process."""
    over = tiny_overrides(tiny_data, tiny_model, tmp_path / "run") + [
        "sft.max_steps=2", "dpo.max_steps=2", f"experiment.launcher={sys.executable}"]
    assert experiment_main(["--config", str(TINY_CONFIG), *over]) == 0
    out = capsys.readouterr().out
    assert out.count("[launch] ") == 2 and "train_dpo.py" in out
    for stage in ("sft", "dpo"):
        assert json.loads((tmp_path / "run" / stage / "metrics.json").read_text())["steps"] == 2
    assert (tmp_path / "run" / "eval" / "results.json").is_file()


def test_several_processes_use_the_hf_backend(monkeypatch):
    """Under a launch of several processes every stage kind runs on hf (the path DDP is tested on), even on
    a GPU with Unsloth installed; an explicit unsloth is refused."""
    from dporec.config import load_config
    from dporec.modeling import runtime
    from dporec.modeling.backends import world_size
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert world_size() == 2
    cfg = load_config(TINY_CONFIG)
    plan = runtime.plan(cfg, True, True, world_size())
    assert {b for b, _ in plan.values()} == {"hf"} and "several processes" in plan["sft"][1]
    refused = runtime.plan(load_config(TINY_CONFIG, ["model.backend=unsloth"]), True, True, world_size())
    assert refused["sft"][0] is None and "model.backend=hf" in refused["sft"][1]
    with pytest.raises(UserError, match="model.backend=hf"):
        runtime.backends_of(refused)
