"""No stage runs in a process another backend has patched (modeling.patches, modeling.runtime), proven on
CPU with a stand-in for Unsloth: it replaces LlamaModel.forward at class level, as
`FastLlamaModel.pre_patch` does, and in training drops a 4D attention mask, as Unsloth's forward does.
Under it:

- run_experiment.py runs every hf stage in a fresh child process, so the shared-prompt DPO trains with its
  mask (the parent's patched forward never runs a training step);
- the hf DPO trainer refuses a model whose decoder runs the patched forward;
- the shared-prompt check runs in training mode, so an attention kernel that ignores the mask only in
  training is caught even when the first batch is the (eval-mode) reference precompute.
"""
from __future__ import annotations

import json

import pytest
import torch

from dporec import UserError
from dporec.config import load_config
from dporec.data import records
from dporec.modeling import patches, runtime
from dporec.modeling.backends import load_for_training
from dporec.training import arguments, dpo_trainer, stages
from tests.helpers import TINY_CONFIG, experiment_main, tiny_overrides


def test_the_patch_is_seen_and_an_hf_stage_refused_here(standin_unsloth, tiny_data, tiny_model, tmp_path):
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path / "run"))
    rt = runtime.setup(cfg, "sft")  # setting up is allowed; starting an hf stage here is not
    assert any("LlamaModel.forward (standin_unsloth" in p for p in patches.process_patches())
    assert not rt.runs_here("dpo") and not rt.runs_here("sft")
    with pytest.raises(UserError, match="patched by another backend.*fresh process"):
        rt.check("dpo", "train_dpo.py")


def test_no_patch_no_refusal(tiny_data, tiny_model, tmp_path):
    from transformers.models.llama import modeling_llama  # noqa: F401 - loaded, unpatched
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path / "run"))
    assert patches.process_patches() == []
    assert runtime.setup(cfg, "sft").check("dpo", "train_dpo.py") == "hf"


def test_run_experiment_never_trains_the_shared_prompt_dpo_under_the_patch(
        standin_unsloth, capsys, tiny_data, tiny_model, tmp_path):
    out = tmp_path / "run"
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, out),
            "sft.max_steps=2", "dpo.max_steps=2", "data.max_train_examples=8", "data.max_val_examples=4",
            "data.max_test_examples=4", "eval.bootstrap_samples=100", "train.eval_steps=100"]
    assert experiment_main(argv) == 0
    console = capsys.readouterr().out
    for script in ("train_sft.py", "train_dpo.py", "evaluate_dpo.py"):  # each in a fresh process
        assert f"{script} --config" in console and "[launch]" in console
    assert not any(training for training, _ in standin_unsloth)  # the patched forward trained nothing
    metrics = json.loads((out / "dpo" / "metrics.json").read_text())
    assert metrics["shared_prompt"] == "on"  # the child's unpatched Llama honoured the mask


def _rows_and_model(cfg, tiny_data):
    model, tok = load_for_training(cfg, "hf")
    rows = records.to_dpo_rows(records.load_examples(tiny_data / "train.jsonl", 4), "alpaca", tok)
    return model, tok, rows


def _trainer(cls, cfg, out, model, tok, rows):
    ds = stages.to_dataset(rows)
    return cls(model=model, ref_model=None, args=arguments.dpo_config(cfg, out, "hf"), train_dataset=ds,
               eval_dataset=ds, processing_class=tok)


def test_the_hf_dpo_trainer_refuses_a_patched_decoder(standin_unsloth, tiny_data, tiny_model, tmp_path):
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path))
    model, tok, rows = _rows_and_model(cfg, tiny_data)
    assert patches.model_patches(model) == ["LlamaModel.forward (standin_unsloth.models.llama)"]
    for shared in (True, False):
        with pytest.raises(UserError, match="refuses a model whose forward another library replaced"):
            _trainer(dpo_trainer.answer_only_trainer_class(shared), cfg, tmp_path / "t", model, tok, rows)
    assert standin_unsloth == []  # refused before any forward ran


def test_the_shared_prompt_check_runs_in_training_mode(tiny_data, tiny_model, tmp_path, monkeypatch):
    """An attention kernel that ignores the 4D mask in training only (what Unsloth's forward does to it):
    the first batch here is the reference precompute, in eval mode and without gradients, where the kernel
    behaves; the check must still see the training-mode leak, and leave every module's mode as it was."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    modes_seen = []

    def leaky(module, query, key, value, attention_mask, **kwargs):
        modes_seen.append(module.training)
        if module.training and attention_mask is not None:
            attention_mask, kwargs["is_causal"] = None, True  # causal only: the rejected sees the chosen
        return sdpa(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", leaky)
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path)
                      + ["dpo.precompute_ref_log_probs=true"])
    model, tok, rows = _rows_and_model(cfg, tiny_data)
    assert model.config._attn_implementation == "sdpa"
    model.eval()
    before = {n: m.training for n, m in model.named_modules()}
    trainer = _trainer(dpo_trainer.answer_only_trainer_class(True), cfg, tmp_path / "t", model, tok, rows)
    assert trainer.shared_prompt.startswith("off: the rejected answer sees the chosen one")
    assert True in modes_seen  # the check ran the decoder in training mode ...
    after = {n: m.training for n, m in model.named_modules()}
    assert {n: after[n] for n in before} == before  # ... and restored every mode (TRL added 'ref' since)
    assert all(p.grad is None for p in model.parameters())  # without gradients


def test_the_shared_prompt_check_passes_an_honest_model_in_training_mode(tiny_data, tiny_model, tmp_path):
    """The check with dropout active on a LoRA that changes the output (lora_B != 0, as after SFT): TRL
    turns dropout off by default (DPOConfig.disable_dropout), but where it is on, the check holds it off,
    so an honest model is not turned off by chance. The check runs at the first training step here."""
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path)
                      + ["dpo.precompute_ref_log_probs=false", "lora.dropout=0.1"])
    model, tok, rows = _rows_and_model(cfg, tiny_data)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    trainer = _trainer(dpo_trainer.answer_only_trainer_class(True), cfg, tmp_path / "t", model, tok, rows)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0 for m in dropouts)  # TRL's default
    for m in dropouts:
        m.p = 0.5
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    model.train()
    trainer.compute_loss(model, batch)
    assert trainer.shared_prompt == "on"
    assert all(m.training for m in dropouts)  # back in training mode after the check


def test_scoring_reads_the_kept_logits_in_fp32(tiny_model):
    """A bf16 model's letter margin from fp32 logits, computed from the decoder's hidden state: also when
    the model's own forward casts its logits back to 16 bits (as Unsloth's causal-LM forward does), so the
    margin is not rounded to bf16's ~0.06 steps at logit 15."""
    from transformers import AutoModelForCausalLM

    from dporec.evaluation import logprobs
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.bfloat16)
    ids = torch.randint(3, 100, (2, 12))
    mask, pos = torch.ones_like(ids), torch.arange(12).repeat(2, 1)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        want = hidden[:, -3:].float() @ model.lm_head.weight.float().T
        plain = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=3).logits
        forward = model.forward

        def cast_back(*args, **kwargs):  # the causal-LM forward returns 16-bit logits, whatever it computed
            out = forward(*args, **kwargs)
            out.logits = out.logits.float().to(torch.bfloat16)
            return out

        model.forward = cast_back
        _, logits = logprobs._forward(model, ids, mask, pos, 3, use_cache=False)
    assert logits.dtype == torch.float32 and plain.dtype == torch.bfloat16
    assert torch.allclose(logits, want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(logits, plain.float())  # bf16's rounding is gone
