"""dporec.config (defaults, YAML files, KEY=VALUE overrides, validation) and dporec.runs (run folders and
run metadata)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from dporec import ROOT, UserError, arms
from dporec.config import SCHEMA, defaults, load_config, parse_args, updated
from dporec.runs.lifecycle import prepare_run_dir
from dporec.runs.provenance import write_run_info

TINY = ROOT / "configs" / "tiny.yaml"


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_load_and_match_the_schema():
    cfg = load_config(None)
    assert cfg == defaults()
    assert cfg["seed"] == SCHEMA["seed"].default == 42
    assert cfg["dpo"]["beta"] == 0.1 and cfg["model"]["load_in_4bit"] is True
    cfg["lora"]["target_modules"].append("lm_head")  # defaults are copies, not the schema's objects
    assert "lm_head" not in load_config(None)["lora"]["target_modules"]


def test_config_file_overrides_defaults_and_keeps_the_rest():
    cfg = load_config(TINY)
    assert cfg["lora"]["r"] == 8 and cfg["train"]["optim"] == "adamw_torch"
    assert cfg["eval"]["alpha"] == SCHEMA["eval"]["alpha"].default  # not in tiny.yaml


def test_overrides_take_dotted_keys_and_yaml_scalars():
    cfg = load_config(TINY, ["dpo.beta=0.5", "seed=3", "overwrite=true", "dpo.loss_type=[sigmoid, sft]",
                             "data.max_train_examples=null", "dpo.learning_rate=2", "output_dir=runs/x"])
    assert cfg["dpo"]["beta"] == 0.5 and cfg["seed"] == 3 and cfg["overwrite"] is True
    assert cfg["dpo"]["loss_type"] == ["sigmoid", "sft"]
    assert cfg["data"]["max_train_examples"] is None
    assert cfg["dpo"]["learning_rate"] == 2.0 and isinstance(cfg["dpo"]["learning_rate"], float)
    assert cfg["output_dir"] == "runs/x"


def test_exponent_without_dot_is_a_float():
    assert load_config(None, ["sft.learning_rate=1e-4"])["sft"]["learning_rate"] == 1e-4


@pytest.mark.parametrize("override, nearest", [("dpo.betta=0.3", "dpo.beta"), ("dpoo.beta=0.3", "dpo.beta"),
                                               ("lora.rank=8", "lora.r")])
def test_unknown_override_key_names_key_and_nearest(override, nearest):
    key = override.split("=")[0]
    with pytest.raises(UserError, match=re.escape(f"unknown config key '{key}' (did you mean '{nearest}'?)")):
        load_config(None, [override])


def test_unknown_key_in_yaml_file_names_file_key_and_nearest(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", "dpo:\n  betta: 0.3\n")
    message = f"{path}: unknown config key 'dpo.betta' (did you mean 'dpo.beta'?)"
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("seed=abc", "'seed' must be int, got 'abc'"),
    ("lora.r=true", "'lora.r' must be int, got True"),
    ("dpo.beta=[1]", "'dpo.beta' must be float, got [1]"),
    ("model.load_in_4bit=1", "'model.load_in_4bit' must be bool, got 1"),
])
def test_wrong_types_are_rejected(override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(None, [override])


def test_wrong_type_in_yaml_file_and_section_that_is_not_a_mapping(tmp_path):
    with pytest.raises(UserError, match=re.escape("'train.batch_size' must be int, got 'four'")):
        load_config(write_yaml(tmp_path / "a.yaml", "train:\n  batch_size: four\n"))
    with pytest.raises(UserError, match="'dpo' must be a mapping"):
        load_config(write_yaml(tmp_path / "b.yaml", "dpo: 3\n"))


def test_choices_are_enforced():
    with pytest.raises(UserError,
                       match=re.escape("'model.backend' must be one of ['auto', 'unsloth', 'hf']")):
        load_config(None, ["model.backend=vllm"])
    assert load_config(None, ["model.backend=hf"])["model"]["backend"] == "hf"


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="must look like KEY=VALUE"):
        load_config(None, ["dpo.beta"])
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_parse_args_applies_flags_and_overrides():
    args, cfg = parse_args("test", ["--config", str(TINY), "--overwrite", "dpo.beta=0.2"])
    assert cfg["overwrite"] is True and cfg["dpo"]["beta"] == 0.2 and cfg["resume"] is False
    assert arms.DPO.folder(cfg["output_dir"]) == Path("runs/tiny/dpo")


def test_prepare_run_dir_refuses_a_finished_run_unless_overwrite(tmp_path):
    run = prepare_run_dir(tmp_path / "sft", False, False, "metrics.json")
    (run / "metrics.json").write_text("{}")
    (run / "adapter.bin").write_text("old")
    with pytest.raises(UserError, match="already holds a finished run"):
        prepare_run_dir(run, False, False, "metrics.json")
    with pytest.raises(UserError, match="nothing to resume"):
        prepare_run_dir(run, True, False, "metrics.json")
    assert (run / "adapter.bin").exists()
    prepare_run_dir(run, False, True, "metrics.json")
    assert run.is_dir() and not any(run.iterdir())


def test_write_run_info_records_config_seed_packages_and_commit(tmp_path):
    cfg = load_config(TINY, ["seed=7"])
    write_run_info(tmp_path / "run", cfg, backend="hf")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()) == cfg
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["seed"] == 7 and info["backend"] == "hf"
    assert info["packages"]["torch"] and "numpy" in info["packages"]
    assert "git_commit" in info
    assert info["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", info["git_commit"])


def test_updated_copies_and_validates():
    cfg = load_config(TINY)
    new = updated(cfg, {"dpo.beta": 0.3, "eval.adapters": {"x": "runs/x"}})
    assert new["dpo"]["beta"] == 0.3 and new["eval"]["adapters"] == {"x": "runs/x"}
    assert cfg["dpo"]["beta"] != 0.3 and cfg["eval"]["adapters"] == {}  # the original is untouched
    with pytest.raises(UserError, match="dpo.betta"):
        updated(cfg, {"dpo.betta": 0.3})
    with pytest.raises(UserError, match="must be float"):
        updated(cfg, {"dpo.beta": "high"})


def test_the_on_policy_arm_needs_dpo_from_sft():
    assert load_config(None, ["experiment.on_policy_arm=true"])["onpolicy"]["samples_per_prompt"] == 4
    with pytest.raises(UserError, match="on_policy_arm.*dpo.init=sft"):
        load_config(None, ["experiment.on_policy_arm=true", "dpo.init=base"])
    with pytest.raises(UserError, match="onpolicy.rejected"):
        load_config(None, ["onpolicy.rejected=longest"])


def test_rules_tying_keys_hold_wherever_a_config_is_made():
    """Seeds distinct, resume against overwrite, an arm's needs: the schema's one cross-key check, from a
    file, an override, a flag or config.updated alike."""
    for bad in (["seeds=[1, 1]"], ["seeds=[1, true]"], ["resume=true", "overwrite=true"],
                ["data.val_fraction=0.5", "data.test_fraction=0.5"]):
        with pytest.raises(UserError):
            load_config(TINY, bad)
    with pytest.raises(UserError, match="contradict"):
        parse_args("test", ["--config", str(TINY), "--resume", "--overwrite"])
    with pytest.raises(UserError, match="contradict"):
        updated(load_config(TINY), {"resume": "auto", "overwrite": True})
    assert load_config(TINY, ["seeds=[3, 1]"])["seeds"] == [3, 1]


def test_retired_keys_say_what_took_their_place(tmp_path):
    for key, hint in (("sft.run_name", "set output_dir"), ("sft.init_adapter", "--arm control"),
                      ("dpo.run_name", "--arm onpolicy")):
        with pytest.raises(UserError, match=f"no longer a config key.*{hint}"):
            load_config(TINY, [f"{key}=x"])
    # a stage folder an earlier version wrote (export.py reads its config.yaml) still loads
    old = tmp_path / "config.yaml"
    old.write_text("sft:\n  run_name: sft_control\n  init_adapter: runs/x/sft\n  learning_rate: 5.0e-05\n")
    with pytest.raises(UserError, match="no longer a config key"):
        load_config(old)
    assert load_config(old, recorded=True)["sft"]["learning_rate"] == 5e-5


def test_the_experiment_section_is_one_switch_per_arm():
    assert set(SCHEMA["experiment"]) == {a.switch for a in arms.ARMS} | {"launcher"}
    assert all(SCHEMA["experiment"][a.switch].help == a.help for a in arms.ARMS)
