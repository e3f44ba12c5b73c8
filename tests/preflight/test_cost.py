"""The predicted cost of a run (dporec/preflight/cost.py on dporec/costmodel.py): the FLOP count by hand on
a small case, every switched-on arm's stages, the thesis run within its 3-hour budget on an RTX 3090, what
each saving is worth, and the inputs it reads."""
from __future__ import annotations

import json

import pytest

from dporec import ROOT, UserError, arms
from dporec.config import load_config
from dporec.costmodel import LLAMA3_8B, RTX_3090, ModelShape
from dporec.modeling import runtime
from dporec.preflight import cost

THESIS = ROOT / "configs" / "llama3_8b.yaml"
# auto on a CUDA GPU with unsloth: the process setup's own plan
GPU_BACKENDS = {k: b for k, (b, _) in runtime.plan(load_config(THESIS), True, True).items()}
HF = dict.fromkeys(runtime.KINDS, "hf")
SMALL = ModelShape(params=int(1e9 + 1e8), embedding=int(1e8), head=512 * 1000, tied=False, hidden=512,
                   layers=4, vocab=1000, projections={})


def test_llama3_8b_shape_by_arithmetic():
    config = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "tie_word_embeddings": False}
    shape = ModelShape.from_config(config)
    assert shape.params == LLAMA3_8B.params == 8_030_261_248
    assert shape.matmul == pytest.approx(7.5e9, rel=0.01)
    assert GPU_BACKENDS == {"sft": "unsloth", "dpo": "hf", "sampling": "unsloth", "eval": "unsloth"}


def test_flop_count_by_hand():
    """10 training pairs of a 100-token prompt and 20-token answers, batch 2, one epoch each, eval every
    step: every stage's tokens written out."""
    cfg = load_config(None, ["train.batch_size=2", "train.grad_accum=1", "train.eval_steps=1",
                             "sft.epochs=1", "dpo.epochs=1", "data.max_val_examples=4", "eval.ranking=false"])
    model = SMALL
    data = cost.DataShape(train=10, val=4, test=6, prompt=100, answer=20)
    got = {s.name: s for s in cost.stages(cfg, model, data, HF)}
    n = 1e9
    # SFT: 5 steps x 2 examples x 120 tokens, 6N; 6 validation passes (step 0, then every step) x 4 x 120, 2N
    assert got["SFT"].tokens == 10 * 120
    assert got["SFT"].flops == pytest.approx(6 * n * 1200 + 2 * n * 6 * 4 * 120)
    # DPO with the shared prompt: 100 + 20 + 20 tokens a pair; validation forwards the policy only
    assert got["DPO"].tokens == 10 * 140
    assert got["DPO"].flops == pytest.approx(6 * n * 1400 + 2 * n * 6 * 4 * 140)
    assert got["DPO reference"].tokens == (10 + 4) * 140  # once, training and validation pairs
    # the decision only: 6 pairs x 2 orders x (prompt + 7) x 3 models
    assert got["evaluation"].tokens == 6 * 2 * 107 * 3
    plain = cost.stages(load_config(None, ["dpo.prefix_sharing=false", "dpo.precompute_ref_log_probs=false",
                                           "train.batch_size=2", "train.grad_accum=1", "dpo.epochs=1"]),
                        model, data, HF)
    plain = {s.name: s for s in plain}
    assert plain["DPO"].tokens == 10 * 240 and plain["DPO reference"].tokens == 10 * 240


def test_the_on_policy_arm_by_hand():
    """Sampling: 10 examples x 2 orders x 3 samples of prompt + answer, plus its bandwidth-bound decode
    steps; on-policy DPO as many steps as DPO; one more model to evaluate."""
    over = ["train.batch_size=2", "train.grad_accum=1", "dpo.epochs=1", "eval.ranking=false",
            "experiment.on_policy_arm=true", "onpolicy.samples_per_prompt=3", "onpolicy.batch_size=4",
            "onpolicy.max_new_tokens=30"]
    model = SMALL
    data = cost.DataShape(train=10, val=4, test=6, prompt=100, answer=20)
    got = {s.name: s for s in cost.stages(load_config(None, over), model, data, HF)}
    assert got["on-policy sampling"].tokens == 20 * 3 * 120
    assert got["on-policy sampling"].decode_steps == 5 * 30  # ceil(20 prompts / 4) calls x 30 tokens
    assert got["on-policy DPO"].tokens == got["DPO"].tokens
    assert got["on-policy DPO reference"].tokens == (20 + 4) * 140
    assert got["evaluation"].tokens == 6 * 2 * 107 * 4
    thesis = cost.predict(load_config(THESIS), LLAMA3_8B, cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090)
    with_control = load_config(None, [*over, "experiment.control_arm=true"])
    control = {s.name: s for s in cost.stages(with_control, model, data, HF)}
    assert control["SFT control"].tokens == got["SFT"].tokens  # as many steps as DPO (1 epoch) of SFT rows
    arm = cost.predict(load_config(THESIS, ["experiment.on_policy_arm=true"]), LLAMA3_8B,
                       cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090)
    hours = dict((s.name, h) for s, h in arm.rows)
    assert hours["on-policy sampling"] > 0 and arm.hours > thesis.hours + hours["on-policy DPO"]


def test_the_reasoning_generation_by_hand():
    """Generating the judged answers: eval.reasoning_pairs pairs x 2 orders x 3 models of prompt + answer,
    plus ceil(prompts / eval.batch_size) calls of up to eval.max_new_tokens bandwidth-bound steps; none
    with eval.generate=false."""
    data = cost.DataShape(train=10, val=4, test=6, prompt=100, answer=20)
    over = ["eval.ranking=false", "eval.reasoning_pairs=4", "eval.batch_size=5", "eval.max_new_tokens=30"]
    got = {s.name: s for s in cost.stages(load_config(None, over), SMALL, data, HF)}
    assert got["reasoning (generation)"].tokens == 4 * 2 * 3 * 120
    assert got["reasoning (generation)"].decode_steps == 5 * 30  # ceil(24 prompts / 5) calls x 30 tokens
    every = {s.name: s for s in cost.stages(load_config(None, over[:1]), SMALL, data, HF)}
    assert every["reasoning (generation)"].tokens == 6 * 2 * 3 * 120  # null: every test pair
    off = [s.name for s in cost.stages(load_config(None, [*over, "eval.generate=false"]), SMALL, data, HF)]
    assert "reasoning (generation)" not in off


def test_thesis_run_fits_three_and_a_half_hours_on_an_rtx_3090():
    cfg = load_config(THESIS)
    pred = cost.predict(cfg, LLAMA3_8B, cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090)
    assert 1.5 < pred.hours <= 3.5
    assert {s.name for s, _ in pred.rows} == {"SFT", "DPO", "DPO reference", "evaluation", "personal task",
                                             "reasoning (generation)", "ranking"}
    assert max(pred.peak_gib.values()) < 24
    # what the savings are worth: without them the same run takes much longer
    before = load_config(THESIS, ["dpo.prefix_sharing=false", "dpo.precompute_ref_log_probs=false",
                                  "eval.full_answer=true", "data.train_pairs_per_user=3"])
    slow = cost.predict(before, LLAMA3_8B, cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090)  # same backends
    assert slow.hours > 1.5 * pred.hours
    lines = "\n".join(cost.format_prediction(pred, cost.ML1M_BUILD))
    assert "RTX 3090" in lines and "assumed hf 40%, unsloth 56%" in lines and "not a measurement" in lines


def test_every_arm_stage_is_costed_and_no_other():
    """The rows follow dporec.arms: each switched-on arm's stages by their labels, nothing for the others."""
    data = cost.DataShape(train=10, val=4, test=6, prompt=100, answer=20)
    for switched in ([], ["control_arm"], ["on_policy_arm"], ["control_arm", "on_policy_arm"]):
        cfg = load_config(None, ["eval.ranking=false", *(f"experiment.{k}=true" for k in switched)])
        names = [s.name for s in cost.stages(cfg, SMALL, data, HF)]
        want = ["SFT", "DPO", "DPO reference"]
        for arm in arms.enabled(cfg):
            for st in arm.stages:
                want += [st.label] + ([f"{st.label} reference"] if st.kind == "dpo" else [])
        assert names == want + ["evaluation", "reasoning (generation)"]


def test_a_measured_utilisation_replaces_the_assumption(tmp_path):
    """A results file of benchmarks/bench_train.py: each backend at its measured utilisation, a backend it
    could not measure at the assumed one, and the source line says which is which."""
    measured = tmp_path / "rtx-3090.json"
    half = {b: {k: u / 2 for k, u in v.items()} for b, v in cost.ASSUMED_UTILISATION.items()}
    measured.write_text(json.dumps({"convention": "matmul-6N", "gpu": "RTX 3090", "utilisation": half}))
    cfg = load_config(THESIS)
    slow = cost.predict(cfg, LLAMA3_8B, cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090,
                        cost.read_utilisation(measured))
    assumed = cost.predict(cfg, LLAMA3_8B, cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090)
    assert slow.hours == pytest.approx(2 * assumed.hours) and slow.source.startswith("measured")
    measured.write_text(json.dumps({"convention": "matmul-6N", "gpu": "RTX 3090",
                                    "utilisation": {"hf": half["hf"]}}))
    util, source = cost.utilisation_for("RTX 3090", cost.read_utilisation(measured))
    assert util["hf"] == half["hf"] and util["unsloth"] == cost.ASSUMED_UTILISATION["unsloth"]
    assert "for hf" in source and "assumed unsloth 56%" in source
    measured.write_text(json.dumps({"convention": "matmul-6N", "gpus": {"RTX 3090": {"train": 0.2}}}))
    with pytest.raises(UserError, match="not a results file"):
        cost.read_utilisation(measured)


def test_both_dpo_routes_side_by_side():
    """verify_setup.py's DPO rows: the same stage on hf with the shared prompt, hf without, and Unsloth
    (without: it drops the mask), each at its backend's utilisation; the configured route is marked."""
    cfg = load_config(THESIS)
    routes = cost.dpo_routes(cfg, LLAMA3_8B, cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090)
    by = {(r["backend"], r["shared_prompt"]): r for r in routes}
    assert list(by) == list(cost.DPO_ROUTES) and by["hf", True]["chosen"]
    assert sum(r["chosen"] for r in routes) == 1
    # the same FLOPs on both unshared routes: the hours scale with the utilisations
    u = cost.ASSUMED_UTILISATION
    assert by["unsloth", False]["hours"] == pytest.approx(
        by["hf", False]["hours"] * u["hf"]["train"] / u["unsloth"]["train"])
    assert by["hf", True]["hours"] < by["hf", False]["hours"]
    assert by["hf", True]["peak_gib"] != by["hf", False]["peak_gib"]  # one row per pair, not two
    pred = cost.predict(cfg, LLAMA3_8B, cost.ML1M_BUILD, GPU_BACKENDS, RTX_3090)
    dpo_hours = sum(h for s, h in pred.rows if s.name.startswith("DPO"))
    assert by["hf", True]["hours"] == pytest.approx(dpo_hours)  # the route is the prediction's own row
    unsloth_cfg = load_config(THESIS, ["dpo.prefix_sharing=false"])
    plan = {k: b for k, (b, _) in runtime.plan(unsloth_cfg, True, True).items()}
    chosen = [r for r in cost.dpo_routes(unsloth_cfg, LLAMA3_8B, cost.ML1M_BUILD, plan, RTX_3090)
              if r["chosen"]]
    assert [(r["backend"], r["shared_prompt"]) for r in chosen] == [("unsloth", False)]
    text = "\n".join(cost.format_routes(routes))
    assert "<- this config" in text and "dpo.prefix_sharing=false, with Unsloth" in text


def test_the_t4_is_assumed_to_reach_less_of_its_spec():
    util, source = cost.utilisation_for("T4 (fp16)")
    assert util["hf"]["train"] == pytest.approx(cost.ASSUMED_UTILISATION["hf"]["train"] * 0.6)
    assert cost.utilisation_for("RTX 3090")[0] == cost.ASSUMED_UTILISATION


def test_data_shape_reads_the_files(tiny_cfg, tiny_model):
    from dporec.modeling.backends import load_tokenizer
    shape = cost.data_shape(tiny_cfg, load_tokenizer(str(tiny_model)))
    lines = {s: len((ROOT / tiny_cfg["data"][f"{s}_file"]).read_text().splitlines()) for s in ("train",
                                                                                               "val", "test")}
    assert (shape.train, shape.val, shape.test) == (lines["train"], lines["val"], lines["test"])
    assert shape.measured == "the model's tokenizer" and 50 < shape.prompt < 600 and shape.answer > 5
    assert cost.data_shape(load_config(None, ["data.train_file=/nonexistent/train.jsonl"])) is None


def test_the_time_row_predicts_from_what_data_max_users_builds(tmp_path):
    """Before the data are built, verify_setup.py's time row prices the build the config's source and user
    cap make: ML-25M capped at ML-1M's 6,040 users costs what an ML-1M run does; all of it ~27 times more."""
    from types import SimpleNamespace

    from dporec.preflight import inputs

    def time_row(*overrides):
        cfg = load_config(THESIS, [f"data.train_file={tmp_path}/none/train.jsonl", *overrides])
        ctx = SimpleNamespace(cfg=cfg, shape=LLAMA3_8B, data_shape=None, utilisation=None, gpu_name=RTX_3090,
                              cuda=False, has_unsloth=False)
        return inputs.check_time(ctx)

    ml1m = time_row()
    capped = time_row("data.source=data/ml-25m.zip", "data.max_users=6040")
    whole = time_row("data.source=data/ml-25m.zip")
    assert "scaled to the 6,040 users" in capped[2] and "scaled to the 162,541 users" in whole[2]

    def hours(row):  # the table's total line: "  total   PFLOP  hours"
        return float(next(x for x in row[2].splitlines() if x.split()[:1] == ["total"]).split()[-1])
    assert hours(capped) == pytest.approx(hours(ml1m), rel=0.01)
    assert hours(whole) > 20 * hours(capped)
    assert "build the data first" in time_row("data.source=thesis:x.jsonl")[2]
