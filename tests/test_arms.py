"""The experiment's arms are one record each (dporec/arms.py): every comparison of every arm reaches
results.json, the aggregate over seeds and report.md; the interval's level is the configured one in every
label; and a new arm, added as one record, flows through the config, the evaluation's models, the reports
and the cost model without another module changing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dporec import arms
from dporec.analysis.seeds import aggregate_seeds
from dporec.config import load_config
from dporec.costmodel import ModelShape
from dporec.evaluation.results import build_results
from dporec.files import jsonable
from dporec.modeling import runtime
from dporec.report import markdown, outputs, tables


def _rows(model: str, n_pairs: int, p_correct: float, seed: int) -> list[dict]:
    """Prediction rows of one model: n_pairs pairs of 5 users each, both orders, right with p_correct."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        right = rng.random() < p_correct
        for order, label in (("original", "AB"[i % 2]), ("swapped", "BA"[i % 2])):
            la, lb = (-0.5, -2.0) if (label == "A") == right else (-2.0, -0.5)
            choice = "A" if la > lb else "B"
            rows.append({"model": model, "pair_id": f"p{i}", "user_id": f"u{i // 5}", "order": order,
                         "label": label, "logp_a": la, "logp_b": lb, "choice": choice,
                         "correct": choice == label})
    return rows


def _all_rows(models, seed=0):
    return {m: _rows(m, 40, 0.6 + 0.05 * k, seed + k) for k, m in enumerate(models)}


def _models(arm_list) -> list[str]:
    return ["base", "sft", "dpo", *(a.model.name for a in arm_list)]


@pytest.fixture
def every_arm(tmp_path):
    switches = [f"experiment.{a.switch}=true" for a in arms.ARMS]
    return load_config(None, [f"output_dir={tmp_path}", "eval.bootstrap_samples=100", *switches])


def test_every_comparison_of_every_arm_reaches_results_the_aggregate_and_the_report(every_arm, tmp_path):
    cfg = every_arm
    rows = _all_rows(_models(arms.ARMS))
    results = build_results(rows, cfg)
    comps = arms.comparisons()
    assert len(comps) == 1 + sum(len(a.comparisons) for a in arms.ARMS) >= 4
    for c in comps:
        assert results[c.key]["names"] == list(c.names), c.key
    eval_dir = tmp_path / "eval"
    written = json.loads(outputs.write_evaluation(eval_dir, results, rows).read_text())
    report = (eval_dir / "report.md").read_text()
    console = tables.format_verdict(results)
    for arm in arms.ARMS:
        assert f"## {arm.title}" in report
        for c in arm.comparisons:
            assert written[c.key]["verdict"] in ("SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE")
            assert (eval_dir / f"{c.key}.json").is_file()  # each arm comparison in a file of its own
            assert f"### {c.title}" in report and results[c.key]["sentence"] in report
            assert c.lead in console and results[c.key]["sentence"] in console

    by_seed = {s: _all_rows(_models(arms.ARMS), seed=10 * s) for s in (1, 2, 3)}
    res_by_seed = {s: build_results(r, cfg) for s, r in by_seed.items()}
    agg = jsonable(aggregate_seeds(res_by_seed, by_seed, comps, margin=0.02, alpha=0.05))
    text = markdown.aggregate_markdown(agg)
    for c in comps:
        pooled = agg[c.pooled_key]
        assert pooled["n_runs"] == 3 and len(pooled["seed_spread"]["differences"]) == 3, c.key
        assert all(agg["per_seed"][str(s)][c.key]["verdict"] for s in (1, 2, 3))
        assert f"Over seeds, about the method: {c.title}" in text and f"### {c.title}" in text
    # the on-policy arm's comparison with off-policy DPO is pooled like every other
    assert agg["pooled_onpolicy_vs_dpo"]["names"] == ["off-policy DPO", "on-policy DPO"]


def test_an_arm_switched_off_leaves_no_trace(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "eval.bootstrap_samples=100"])
    rows = _all_rows(_models([]))
    results = build_results(rows, cfg)
    report = markdown.report_md(results)
    for arm in arms.ARMS:
        assert all(results[c.key] is None for c in arm.comparisons)
        assert f"## {arm.title}" not in report


def test_every_label_states_the_configured_level(tmp_path):
    """eval.alpha=0.1: a 90% interval, so no label may say 95% (console, report.md, aggregate.md)."""
    cfg = load_config(None, [f"output_dir={tmp_path}", "eval.bootstrap_samples=100", "eval.alpha=0.1",
                             *(f"experiment.{a.switch}=true" for a in arms.ARMS)])
    rows = _all_rows(_models(arms.ARMS))
    results = build_results(rows, cfg)
    results["ranking"] = {"n_users": 3, "candidates_per_user": [4], "method": "copeland", "alpha": 0.1,
                          "chance": {"kendall_tau_b": 0.0, "ndcg@3": 0.5, "hit@1": 0.5},
                          "models": {}, "baselines": {},
                          "comparison": {m: {"difference": 0.01, "ci": [-0.1, 0.2], "p_value": 0.5}
                                         for m in ("kendall_tau_b", "ndcg@3", "hit@1")}}
    results["ranking"]["comparison"]["kendall_tau_b"].update(verdict="INCONCLUSIVE", margin=0.04,
                                                             margin_status="open")
    texts = [markdown.report_md(results), tables.format_table(results), tables.format_verdict(results)]
    by_seed = {s: rows for s in (1, 2, 3)}
    agg = jsonable(aggregate_seeds({s: results for s in by_seed}, by_seed, arms.comparisons(), margin=0.02,
                                   alpha=0.1))
    texts.append(markdown.aggregate_markdown(agg))
    for text in texts:
        assert "95%" not in text
    assert all("90% CI" in t for t in texts)
    assert all(results[c.key]["alpha"] == 0.1 and "ci" in results[c.key] for c in arms.comparisons())
    assert results["models"]["sft"]["alpha"] == 0.1 and "accuracy_ci" in results["models"]["sft"]


# ---------------------------------------------------------------------------------------------
# A new arm is one record

IPO = arms.Stage("dpo_ipo", "dpo", "metrics.json", "train_dpo.py", "IPO")


def _ipo_spec(stage, done):
    return arms.StageSpec(stage, init_adapter=done.sft_adapter, max_steps=done.dpo_steps, arm="ipo",
                          settings=(("dpo.loss_type", ["ipo"]),))


IPO_ARM = arms.Arm(
    name="ipo", switch="ipo_arm", help="IPO from SFT", stages=(IPO,), model=IPO, derive=_ipo_spec,
    comparisons=(arms.Comparison("comparison_ipo", "sft", IPO.name, ("SFT", "IPO"), "IPO vs SFT",
                                 "IPO vs SFT:"),
                 arms.Comparison("comparison_ipo_vs_dpo", "dpo", IPO.name, ("DPO", "IPO"), "IPO vs DPO",
                                 "IPO vs DPO:")),
    title="IPO", about="IPO from the SFT adapter with DPO's steps.", card="IPO from the run's SFT adapter",
    matched_to=arms.DPO, unmatched=lambda cfg: "the loss")


def test_a_new_arm_is_one_record(monkeypatch, tmp_path):
    """Put one more Arm in ARMS: the evaluation scores its model, results, report, aggregate and console
    carry its comparisons, the cost model prices its stage, and its stage spec reaches the stage's config."""
    from dporec import config
    from dporec.preflight import cost
    from dporec.runs.adapters import eval_adapters
    monkeypatch.setattr(arms, "ARMS", (*arms.ARMS, IPO_ARM))
    monkeypatch.setitem(config.SCHEMA, "experiment", config.experiment_section())  # as at import
    cfg = load_config(None, [f"output_dir={tmp_path}", "eval.bootstrap_samples=100", "eval.ranking=false",
                             "experiment.ipo_arm=true"])
    assert arms.enabled(cfg) == [IPO_ARM] and list(eval_adapters(cfg)) == ["base", "sft", "dpo", "dpo_ipo"]
    rows = _all_rows(_models(arms.enabled(cfg)))
    results = build_results(rows, cfg)
    assert results["comparison_ipo"]["names"] == ["SFT", "IPO"] and "ipo_arm" in results
    assert "## IPO" in markdown.report_md(results) and "IPO vs DPO:" in tables.format_verdict(results)
    by_seed = {s: rows for s in (1, 2)}
    agg = aggregate_seeds({s: results for s in by_seed}, by_seed, arms.comparisons(), margin=0.02,
                          alpha=0.05)
    assert agg["pooled_ipo_vs_dpo"]["n_runs"] == 2
    data = cost.DataShape(train=10, val=4, test=6, prompt=100, answer=20)
    shape = ModelShape.from_config({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "vocab_size": 512})
    names = [s.name for s in cost.stages(cfg, shape, data, dict.fromkeys(runtime.KINDS, "hf"))]
    assert names == ["SFT", "DPO", "DPO reference", "IPO", "IPO reference", "evaluation",
                     "reasoning (generation)"]
    spec = arms.spec_for(IPO, cfg, arms.Predicted(str(tmp_path), "sft-adapter", 7, 1e-5))
    settings = spec.config_settings(cfg["output_dir"])
    assert settings == {"dpo.max_steps": 7, "dpo.loss_type": ["ipo"]}
    record = spec.record(config.updated(cfg, settings))
    assert (record["arm"], record["max_steps"], record["settings"]) == ("ipo", 7, {"dpo.loss_type": ["ipo"]})


def test_stages_read_their_spec_not_plumbing_keys():
    """The orchestrator's hand-over is a spec; the user's config never carries run names or start adapters."""
    cfg = load_config(None)
    assert not {"run_name", "init_adapter"} & set(cfg["sft"]) and "run_name" not in cfg["dpo"]
    done = arms.Predicted("runs/x", "runs/x/sft", 12, 5e-5)
    control = arms.spec_for(arms.CONTROL, cfg, done)
    assert control.config_settings("runs/x") == {"sft.max_steps": 12, "sft.learning_rate": 5e-5}
    assert control.init_adapter == "runs/x/sft" and control.mode(cfg) == (False, False)
    onpolicy = arms.spec_for(arms.ONPOLICY, cfg, done)
    assert onpolicy.config_settings("runs/x") == {"dpo.max_steps": 12, "data.max_train_examples": None,
                                                  "data.train_file": "runs/x/onpolicy_pairs/pairs.jsonl"}
    assert arms.spec_from_dict(json.loads(json.dumps(arms.spec_to_dict(onpolicy)))) == onpolicy
    assert arms.main_spec(arms.DPO, cfg, done).init_adapter == "runs/x/sft"
    assert arms.main_spec(arms.DPO, load_config(None, ["dpo.init=base"]), done).init_adapter is None


def test_an_arm_run_alone_still_needs_what_its_switch_needs(tmp_path):
    """train_dpo.py --arm onpolicy with dpo.init=base would train from SFT while recording init: base: the
    arm's needs hold for --arm as for its switch (Arm.unmet, one rule)."""
    from dporec import UserError, cli
    with pytest.raises(UserError, match="--arm onpolicy.*dpo.init=sft"):
        cli.train_dpo(["--config", "configs/tiny.yaml", f"output_dir={tmp_path}", "dpo.init=base",
                       "--arm", "onpolicy"])


def test_a_given_sft_adapter_is_neither_trained_nor_costed(tmp_path):
    """dpo.sft_adapter: the run's one SFT adapter comes from elsewhere, so the cost model prices no SFT."""
    from dporec.preflight import cost
    from dporec.runs.adapters import eval_adapters, sft_adapter_given
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"dpo.sft_adapter={tmp_path / 'elsewhere'}",
                             "eval.ranking=false", "experiment.control_arm=true"])
    assert sft_adapter_given(cfg) and eval_adapters(cfg)["sft"] == tmp_path / "elsewhere"
    done = arms.Predicted(cfg["output_dir"], str(tmp_path / "elsewhere"), 5, 1e-5)
    assert arms.spec_for(arms.CONTROL, cfg, done).init_adapter == str(tmp_path / "elsewhere")
    data = cost.DataShape(train=10, val=4, test=6, prompt=100, answer=20)
    shape = ModelShape.from_config({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                    "num_attention_heads": 4, "vocab_size": 512})
    names = [s.name for s in cost.stages(cfg, shape, data, dict.fromkeys(runtime.KINDS, "hf"))]
    assert names == ["DPO", "DPO reference", "SFT control", "evaluation", "reasoning (generation)"]
