"""export.py: the merged model loads with transformers alone and scores like the adapter on its 4-bit base."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dporec import UserError
from dporec.config import load_config
from dporec.data import records
from dporec.evaluation import scoring
from dporec.inference.export import export
from dporec.modeling.adapters import load_with_adapters
from dporec.training import stages
from tests.helpers import TINY_CONFIG, tiny_overrides


@pytest.fixture(scope="module")
def trained(tiny_data, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    cfg = load_config(TINY_CONFIG, [*tiny_overrides(tiny_data, tiny_model, out), "sft.max_steps=4"])
    assert stages.run_sft(cfg) == 0
    return cfg


def test_merged_model_scores_like_the_adapter(trained, tiny_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    adapter = f"{trained['output_dir']}/sft"
    out = export(adapter, tmp_path / "merged", dtype="float32")
    assert not (out / "adapter_config.json").exists()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert type(merged).__name__ == "LlamaForCausalLM"  # no PEFT wrapper, no 4-bit layers
    assert not any("lora" in n for n, _ in merged.named_parameters())
    tok = AutoTokenizer.from_pretrained(out)

    examples = records.load_examples(tiny_data / "test.jsonl", 12)
    model, tok4 = load_with_adapters(trained, "hf", {"sft": adapter})
    model.set_adapter("sft")
    want = scoring.score_answers(model, tok4, examples, "alpaca", 8)
    got = scoring.score_answers(merged, tok, examples, "alpaca", 8)
    assert [r["choice"] for r in got] == [r["choice"] for r in want]
    for key in ("logp_a", "logp_b", "logp_a_full", "logp_b_full"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in want], abs=2e-3), key
    info = json.loads((out / "export_info.json").read_text())
    assert info["base_loaded_in_4bit"] is True and info["dtype"] == "float32"
    assert trained["model"]["name"] in (out / "README.md").read_text()


def test_bfloat16_export_and_no_silent_overwrite(trained, tmp_path):
    from transformers import AutoModelForCausalLM
    adapter = f"{trained['output_dir']}/sft"
    out = export(adapter, tmp_path / "bf16")
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    with pytest.raises(UserError, match="pass --overwrite"):
        export(adapter, out)
    export(adapter, out, overwrite=True)


def test_what_the_unsloth_merge_cannot_honour_is_refused(trained, tiny_model, tmp_path):
    """Under Unsloth the merge loads the base the adapter records and writes its checkpoint's dtype: another
    --base or --dtype is refused before anything loads, naming what it would write; the record reads the
    dtype from what was written."""
    from dporec.inference.export import checkpoint_dtype, unsloth_export_problem
    adapter = Path(f"{trained['output_dir']}/sft")
    base_dtype = checkpoint_dtype(str(tiny_model))
    assert base_dtype == "float32"  # the tiny model is saved in fp32
    assert unsloth_export_problem(adapter, "float32", None, base_dtype) is None
    assert "writes the base checkpoint's dtype (float32)" in unsloth_export_problem(adapter, "bfloat16", None,
                                                                                     base_dtype)
    assert "--backend hf" in unsloth_export_problem(adapter, "float32", "another/base", base_dtype)
    out = export(adapter, tmp_path / "bf16")
    recorded = json.loads((out / "export_info.json").read_text())["dtype"]
    assert checkpoint_dtype(str(out)) == recorded == "bfloat16"
