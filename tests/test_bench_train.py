"""The pure parts of benchmarks/bench_train.py and the cost model it shares with the predictor
(dporec/costmodel.py): GPU peak lookup, FLOP/MFU arithmetic, the RTX 3090 extrapolation, steady-state
tokens/s, batch parsing, the model shapes' parameter counts (checked against a model built on the meta
device: nothing allocated), and the utilisation file's way to the prediction. The GPU runs themselves are
in benchmarks/gpu_run.sh."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from dporec import ROOT, UserError, costmodel
from dporec.config import defaults

_spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
bt = importlib.util.module_from_spec(_spec)
sys.modules["bench_train"] = bt
_spec.loader.exec_module(bt)



@pytest.mark.parametrize("name, label, tflops, gbs", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989, 3350),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756, 2000),
    ("NVIDIA H200", "H200 SXM", 989, 4800),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB", 312, 2039),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB", 312, 1555),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 71, 936),
    ("NVIDIA L4", "L4", 121, 300),
    ("Tesla T4", "T4 (fp16)", 65, 320),
])
def test_gpu_spec_known(name, label, tflops, gbs):
    spec = bt.gpu_spec(name)
    assert (spec["label"], spec["bf16_tflops"], spec["bandwidth_gbs"]) == (label, tflops, gbs)


@pytest.mark.parametrize("name", ["NVIDIA L40S", "NVIDIA GeForce RTX 4090", "cpu", "", None])
def test_gpu_spec_unknown_is_none(name):
    assert bt.gpu_spec(name) is None  # L40S must not match the L4 entry


def test_flops_follow_one_convention():
    """matmul-6N: 6N per trained token with checkpointing (4N without); a DPO pair runs its prompt once
    when shared; the reference adds 2N per pair token only when it runs in every step."""
    shape = costmodel.ModelShape.from_config(costmodel.LLAMA3_8B_CONFIG)
    n = shape.matmul
    assert n == shape.params - shape.embedding == 8_030_261_248 - 128256 * 4096  # the LM head counted
    assert costmodel.example_flops("sft", shape, 100, 50, True) == 6 * n * 150
    assert costmodel.example_flops("sft", shape, 100, 50, False) == 4 * n * 150
    assert costmodel.example_flops("dpo", shape, 100, 50, True) == 6 * n * 300
    assert costmodel.example_flops("dpo", shape, 100, 50, True, shared_prompt=True) == 6 * n * 200
    assert costmodel.example_flops("dpo", shape, 100, 50, True, shared_prompt=True,
                                   reference_in_step=True) == 8 * n * 200
    tied = costmodel.ModelShape.from_config(costmodel.SMOLLM2_135M_CONFIG)
    assert tied.tied and tied.matmul == tied.params - tied.embedding + tied.head  # a tied head still runs


def test_mfu_divides_the_predictors_flops():
    """The benchmark measures seen tokens (a DPO pair's prompt twice); its MFU counts what ran."""
    shape = costmodel.LLAMA3_8B
    u = costmodel.utilisation(1000.0, "sft", shape, 100, 50, True, 989.0)
    assert u == pytest.approx(1000.0 / 150 * 6 * shape.matmul * 150 / 989e12)
    shared = costmodel.utilisation(1000.0, "dpo", shape, 100, 50, True, 989.0, shared_prompt=True)
    assert shared == pytest.approx(1000.0 / 300 * 6 * shape.matmul * 200 / 989e12)
    assert costmodel.utilisation(None, "sft", shape, 1, 1, True, 989.0) is None
    assert costmodel.utilisation(1000.0, "sft", shape, 1, 1, True, None) is None


def test_predict_3090_arithmetic():
    h100 = bt.gpu_spec("NVIDIA H100 80GB HBM3")
    p = bt.predict_3090(2000.0, h100, tokens_per_unit=300.0, units=5400, epochs=1.0, peak_mb=20000.0)
    assert p["tokens"] == 1.62e6
    assert p["hours_compute_bound"] == pytest.approx(1.62e6 / (2000 * 71 / 989) / 3600)  # 3.13 h
    assert p["hours_compute_bound"] == pytest.approx(3.1344, rel=1e-3)
    assert p["hours_bandwidth_bound"] == pytest.approx(1.62e6 / (2000 * 936 / 3350) / 3600)  # 0.81 h
    assert p["fits_24gb"] and p["headroom_mb"] == pytest.approx(24576 - 20000)
    dpo = bt.predict_3090(2000.0, h100, 600.0, 5400, 3.0, peak_mb=25000.0)
    assert dpo["hours_compute_bound"] == pytest.approx(6 * p["hours_compute_bound"])  # 2x tokens, 3 epochs
    assert dpo["fits_24gb"] is False
    assert "fits_24gb" not in bt.predict_3090(2000.0, h100, 300.0, 5400, 1.0)


def test_steady_tokens_per_s_skips_warmup():
    steps = [{"step": s, "t": 10.0 + s + (5.0 if s > 1 else 0.0), "num_tokens": 100 * s} for s in (1, 2, 3,
                                                                                                   4)]
    # step 1 ends at 11, then 17, 18, 19: from the end of step 2, 200 tokens in 2 s
    assert bt.steady_tokens_per_s(steps, warmup=2) == pytest.approx(100.0)
    assert bt.steady_tokens_per_s(steps[:2], warmup=2) == pytest.approx(100 / 6)  # shrinks to time step 2
    assert bt.steady_tokens_per_s(steps[:1], warmup=2) is None
    assert bt.steady_tokens_per_s([{"step": 1, "t": 1.0}, {"step": 2, "t": 2.0}], warmup=1) is None


def test_parse_batch_sizes():
    assert bt.parse_batch_sizes("1x8, 4x2") == [(1, 8), (4, 2)]
    for bad in ("8", "0x8", "1x", "ax2"):
        with pytest.raises(UserError):
            bt.parse_batch_sizes(bad)


def _meta_count(config) -> int:
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are yielded once


def test_llama3_8b_shape_has_8_03b_parameters():
    cfg = bt.llama_config("llama3-8b", vocab_size=49152)  # a smaller tokenizer keeps Llama 3's vocab
    assert cfg.vocab_size == 128256 and cfg.num_key_value_heads == 8
    assert cfg.rope_parameters["rope_theta"] == 500000.0
    n = bt.n_params(cfg)
    # embed + lm_head 2*128256*4096, 32 layers of attention (GQA) + MLP + 2 norms, final norm
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert n == 2 * 128256 * 4096 + 32 * layer + 4096 == 8_030_261_248 == _meta_count(cfg)
    assert costmodel.LLAMA3_8B.params == n


def test_small_shape_matches_smollm2_135m():
    cfg = bt.llama_config("small")
    assert bt.n_params(cfg) == _meta_count(cfg) == 134_515_008  # tied embeddings counted once


def test_one_count_serves_the_gpu_rule_the_memory_and_the_benchmark(tiny_model):
    """The GPU rule (hardware.model_params), the preflight (costmodel.ModelShape) and the benchmark count
    the same parameters, and the tiny model's count is what PyTorch builds."""
    import json

    from transformers import AutoConfig

    from dporec.config import load_config
    from dporec.modeling import hardware
    config = json.loads((tiny_model / "config.json").read_text())
    n = costmodel.ModelShape.from_config(config).params
    built = AutoConfig.from_pretrained(tiny_model)
    assert n == _meta_count(built) == bt.n_params(built)
    assert hardware.model_params(load_config(None, [f"model.name={tiny_model}"])) == n


def test_measured_utilisation_reaches_the_time_prediction(tmp_path):
    """bench_train's measured MFU on the 8B shape, per backend, is what verify_setup --utilisation predicts
    from (benchmarks/results/<gpu>.json), and a file of another FLOP convention is refused."""
    from dporec import UserError
    from dporec.preflight import cost
    spec = bt.gpu_spec("NVIDIA H100 80GB HBM3")
    runs = [{"status": "ok", "backend": "hf", "route": "sft", "mfu": 0.10},
            {"status": "ok", "backend": "hf", "route": "dpo-shared", "mfu": 0.30},
            {"status": "ok", "backend": "unsloth", "route": "sft", "mfu": 0.40},
            {"status": "skipped: needs a CUDA GPU", "backend": "unsloth", "route": "dpo-unshared"}]
    summary = {"shape": "llama3-8b", "gpu": {"name": "NVIDIA H100 80GB HBM3", "spec": spec}, "runs": runs,
               "stack": {"facts": {"torch": "2.10.0+cu128"}, "problems": {}}}
    assert bt.save_results({**summary, "shape": "small"}, tmp_path) is None  # a small model says little
    path = bt.save_results(summary, tmp_path)
    assert path == tmp_path / "h100-sxm.json"
    record = json.loads(path.read_text())
    assert record["stack"]["facts"]["torch"] == "2.10.0+cu128" and len(record["runs"]) == 4
    measured_file = cost.read_utilisation(path)
    assert measured_file["H100 SXM"]["hf"]["train"] == pytest.approx(0.20)
    assert measured_file["H100 SXM"]["unsloth"]["train"] == pytest.approx(0.40)
    cfg = defaults()
    backends = {"sft": "unsloth", "dpo": "hf", "sampling": "unsloth", "eval": "unsloth"}
    measured = cost.predict(cfg, costmodel.LLAMA3_8B, cost.ML1M_BUILD, backends, "NVIDIA H100 80GB HBM3",
                            measured_file)
    assert measured.source.startswith("measured")
    assert measured.utilisation["hf"]["train"] == pytest.approx(0.2)
    rows = {s.name: (s, h) for s, h in measured.rows}
    s, h = rows["DPO"]
    assert h == pytest.approx(s.flops / (989e12 * 0.2) / 3600)  # hf's measured figure divides hf's FLOPs
    s, h = rows["SFT"]
    assert h == pytest.approx(s.flops / (989e12 * 0.4) / 3600)
    path.write_text(json.dumps({**record, "convention": "matmul-8N"}))
    with pytest.raises(UserError, match="convention"):
        cost.read_utilisation(path)


def test_dpo_routes_come_from_the_predictors_record():
    """The benchmark runs every DPO route the predictor prices (preflight.cost.DPO_ROUTES), from its own
    backend's SFT adapter, and counts a shared prompt once only where the run really shared it."""
    from dporec.preflight import cost
    for backend in ("hf", "unsloth"):
        dpo = [("dpo", s) for b, s in cost.DPO_ROUTES if b == backend]
        assert bt.routes(backend) == [("sft", False), *dpo]
    shape = costmodel.LLAMA3_8B
    base = {"status": "ok", "backend": "hf", "batch": "1x8", "batch_size": 1, "grad_accum": 8, "steps": 4,
            "tokens": 4000, "tokens_per_s": 1000.0, "stage": "dpo"}
    summary = {"model": {"config": costmodel.LLAMA3_8B_CONFIG}, "data": {"prompt_tokens": 136,
               "answer_tokens": 52}, "gpu": {"spec": bt.gpu_spec("NVIDIA H100 80GB HBM3")},
               "runs": [{**base, "route": "dpo-shared", "shared_prompt_used": "on"},
                        {**base, "route": "dpo-shared", "shared_prompt_used": "off: the check refused"},
                        {**base, "route": "dpo-unshared", "shared_prompt_used": "off"}]}
    bt.derive(summary)
    on, refused, unshared = (r["mfu"] for r in summary["runs"])
    assert refused == unshared and on == pytest.approx(costmodel.utilisation(
        1000.0, "dpo", shape, 136, 52, True, 989, shared_prompt=True))
    assert on < unshared  # the same tokens/s did fewer FLOPs when the prompt ran once


def test_the_stack_check_names_what_will_not_load():
    """The benchmark's dry run uses verify_setup's rules (preflight.environment): xformers built for another
    torch, bitsandbytes without a library for torch's CUDA (a slimmed wheel), no GPU, no Unsloth."""
    from dporec.preflight import environment as env
    libs = ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda128.so", "libbitsandbytes_cuda130.so"]
    versions = dict.fromkeys(env.STACK_PACKAGES, "1.0")
    build = {"version": {"torch": "2.10.0+cu128", "cuda": 1208}}
    users = {"torch": "2.10.0+cu128", "torch_cuda": "12.8", "cuda_available": True, "versions": versions,
             "xformers_build": build, "bitsandbytes_libraries": libs}
    assert env.stack_problems(users) == {}
    device = {**users, "torch": "2.11.0+cu130", "torch_cuda": "13.0"}
    assert set(env.stack_problems(device)) == {"xformers"}
    assert "Unsloth uses PyTorch attention" in env.stack_problems(device)["xformers"]
    slimmed = {**device, "bitsandbytes_libraries": ["libbitsandbytes_cuda132.so"]}
    problems = env.stack_problems(slimmed)
    assert "libbitsandbytes_cuda130" in problems["bitsandbytes"] and "bitsandbytes" in env.STACK_BLOCKING
    bare = {**users, "cuda_available": False, "versions": {**versions, "unsloth": None}}
    assert set(env.stack_problems(bare)) == {"gpu", "unsloth"}
    here = env.stack_facts()  # this machine: read from files, nothing heavy imported
    assert here["versions"]["torch"] and "libbitsandbytes_cpu.so" in here["bitsandbytes_libraries"]
