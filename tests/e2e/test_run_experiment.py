"""run_experiment.py: the whole pipeline on the tiny config over two seeds with the control arm,
a rerun that skips everything, and the pieces (stage skipping/resuming, predictions round trip,
data building) on their own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dporec import UserError, arms, experiment
from dporec.analysis import comparison, metrics, seeds
from dporec.modeling import runtime
from dporec.report import predictions
from tests.helpers import FIXTURES, TINY_CONFIG, experiment_main, sft_main, tiny_overrides

# Fewer steps and test pairs than configs/tiny.yaml: two seeds x (SFT, DPO, control, eval) must stay quick.
FAST = ["sft.max_steps=2", "dpo.max_steps=3", "data.max_train_examples=12", "data.max_val_examples=4",
        "data.max_test_examples=8", "eval.bootstrap_samples=100", "train.eval_steps=100"]


def _finished_files(root: Path) -> dict[Path, int]:
    names = ("metrics.json", "results.json", "predictions.csv", "comparison_control.json",
             "aggregate.json", "aggregate.md", "adapter_model.safetensors")
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.name in names}


def test_seeds_and_control_arm_end_to_end_then_skipped(capsys, tiny_data, tiny_model, tmp_path):
    out = tmp_path / "run"
    argv = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, out), *FAST,
            "seeds=[1, 2]", "experiment.control_arm=true", "dpo.learning_rate=5e-4",
            "eval.generate=true", "eval.reasoning_pairs=3", "eval.max_new_tokens=4"]
    assert experiment_main(argv) == 0
    first = capsys.readouterr().out

    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["seeds"] == [1, 2]
    assert set(agg["per_seed"]) == {"1", "2"}
    assert set(agg["models"]) == {"base", "sft", "dpo", "sft_control"}
    for s in ("1", "2"):
        c = agg["per_seed"][s]["comparison"]
        assert c["verdict"] in ("SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE")
        assert agg["per_seed"][s]["comparison_control"]["verdict"] in ("SUPPORTED", "NOT SUPPORTED",
                                                                        "INCONCLUSIVE")
    acc = agg["metrics"]["dpo"]["accuracy"]
    assert len(acc["values"]) == 2 and acc["mean"] == pytest.approx(sum(acc["values"]) / 2)
    per_seed = json.loads((out / "seed-1" / "eval" / "results.json").read_text())
    # Pooled: each test pair averaged over the seeds first, so n counts distinct pairs and users.
    assert agg["pooled"]["n_pairs"] == per_seed["comparison"]["n_pairs"]
    assert agg["pooled"]["n_users"] == per_seed["comparison"]["n_users"]
    assert agg["pooled"]["n_runs"] == 2
    assert agg["pooled_control"]["n_pairs"] == agg["pooled"]["n_pairs"]
    assert "Over seeds, about the method: SFT vs DPO (primary)" in (out / "aggregate.md").read_text()
    # the second verdict over seeds: the personal task's pairs, pooled the same way
    assert agg["personal"]["pooled"]["scope"] == "method" and agg["personal"]["pooled"]["n_runs"] == 2
    assert "Over seeds, personal taste alone: SFT vs DPO (secondary)" in (out / "aggregate.md").read_text()
    assert agg["pooled"]["seed_spread"]["differences"] == [agg["per_seed"][s]["comparison"]["difference"]
                                                          for s in ("1", "2")]
    # the reasoning figures over seeds: every seed judged the same 3 pairs, pooled the same way
    reasoned = agg["reasoning"]
    assert set(reasoned["metrics"]) == {"base", "sft", "dpo", "sft_control"}
    assert len(reasoned["metrics"]["dpo"]["right_and_truthful_rate"]["values"]) == 2
    assert reasoned["pooled"]["n_pairs"] == 3 and reasoned["pooled"]["n_runs"] == 2
    assert reasoned["pooled"]["measure"] == "right_and_truthful_rate"
    assert "Reasoning quality over seeds (secondary)" in (out / "aggregate.md").read_text()
    assert agg["pooled"]["verdict"] == comparison.verdict(agg["pooled"]["ci"], 0.02)

    # The control arm continues the SFT adapter for as many optimizer steps as DPO took, at DPO's
    # learning rate (set apart from SFT's by the dpo.learning_rate override above).
    for s in (1, 2):
        run = out / f"seed-{s}"
        dpo_steps = json.loads((run / "dpo" / "metrics.json").read_text())["steps"]
        control = json.loads((run / "sft_control" / "metrics.json").read_text())
        assert control["steps"] == dpo_steps == 3
        assert control["init_adapter"] == str(run / "sft")
        spec = json.loads((run / "sft_control" / "run_info.json").read_text())["spec"]
        assert spec["learning_rate"] == 0.0005 and spec["max_steps"] == 3 and spec["arm"] == "control"
        # the config the stage saved is the user's, as given: SFT's own rate and steps are untouched
        saved = yaml.safe_load((run / "sft_control" / "config.yaml").read_text())
        assert saved["sft"]["learning_rate"] == 1e-3 and saved["sft"]["max_steps"] == 2
        assert (run / "sft_control" / "adapter_config.json").is_file()
        res = json.loads((run / "eval" / "results.json").read_text())
        assert "sft_control" in res["models"] and res["comparison_control"]["names"] == ["SFT control", "DPO"]
        matched = res["control_arm"]["matched"]
        for what in ("optimizer steps", "examples seen", "learning rate", "schedule", "warmup ratio", "seed"):
            assert what in matched, what
        assert res["control_arm"]["not_matched"] == []
        report_md = (run / "eval" / "report.md").read_text()
        assert "compute-matched SFT control" in report_md
        for stage in ("sft", "dpo", "sft_control"):  # each trained model's curves, linked from the report
            assert f"![{stage}](../{stage}/training_curves.png)" in report_md
            assert (run / stage / "training_curves.png").is_file()
        assert "| learning rate | 0.0005 | 0.0005 | yes |" in report_md
        assert (run / "eval" / "comparison_control.json").is_file()
        assert json.loads((run / "sft" / "run_info.json").read_text())["seed"] == s
    assert "SFT vs DPO" in first and "aggregate:" in first

    before = _finished_files(out)
    assert experiment_main(argv) == 0
    second = capsys.readouterr().out
    assert "stages run: none" in second
    for stage in ("sft", "dpo", "sft_control", "eval"):
        for s in (1, 2):
            assert f"[{stage}] skipped: {out / f'seed-{s}' / stage}" in second
    assert _finished_files(out) == before

    # SFT of seed 1 retrained by hand with another seed: it is stale itself (its recipe says seed 7) and is
    # trained again with the run's seed, which gives back the same adapter bit for bit, so every stage
    # built on it is current again; seed 2 is untouched. (A changed SFT making its dependents stale:
    # tests/e2e/test_faults_round_two.py, test_5_in_a_copy_a_retrained_sft_makes_its_dpo_stale.)
    seed1 = out / "seed-1"
    old_sft = (seed1 / "sft" / "adapter_model.safetensors").read_bytes()
    old_dpo = (seed1 / "dpo" / "adapter_model.safetensors").read_bytes()
    assert sft_main(["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, seed1), *FAST,
                     "seed=7", "--overwrite"]) == 0
    assert (seed1 / "sft" / "adapter_model.safetensors").read_bytes() != old_sft
    capsys.readouterr()
    assert experiment_main(argv) == 0
    third = capsys.readouterr().out
    assert "[sft] stale: built from other inputs or settings (seed: 7 -> 1)" in third
    assert (seed1 / "sft" / "adapter_model.safetensors").read_bytes() == old_sft
    for stage in ("dpo", "sft_control", "eval"):
        for s in (1, 2):
            assert f"[{stage}] skipped: {out / f'seed-{s}' / stage}" in third
    assert (seed1 / "dpo" / "adapter_model.safetensors").read_bytes() == old_dpo
    inputs = json.loads((seed1 / "dpo" / "run_info.json").read_text())["inputs"]
    assert inputs["sft"]["path"] == str(seed1 / "sft") and inputs["sft"]["relative"] == "sft"


def test_run_stage_skips_finished_and_resumes_unfinished(tmp_path):
    """The orchestrator hands a stage its lifecycle decision in the spec (continue what is there; rerun
    when asked) and never rewrites the user's config: resume and overwrite stay as given."""
    from dataclasses import replace

    from dporec.config import load_config
    calls = []

    def fake_run(cfg, spec):
        calls.append({"resume": spec.resume, "overwrite": spec.overwrite, "config": (cfg["resume"],
                                                                                     cfg["overwrite"])})
        (tmp_path / "sft" / "metrics.json").write_text("{}")
        return 0

    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path}"])
    spec = arms.StageSpec(arms.SFT)
    (tmp_path / "sft" / "checkpoint-4").mkdir(parents=True)
    assert experiment.run_stage(cfg, spec, fake_run) == "done"
    assert calls == [{"resume": "auto", "overwrite": False, "config": (False, False)}]
    assert experiment.run_stage(cfg, spec, fake_run) == "skipped"
    assert experiment.run_stage(cfg, spec, fake_run, rerun=True) == "done"
    assert calls[-1] == {"resume": False, "overwrite": True, "config": (False, False)}
    assert cfg["resume"] is False and cfg["overwrite"] is False  # the user's config, as given
    with pytest.raises(UserError, match="stage dpo failed"):
        experiment.run_stage(cfg, replace(spec, stage=arms.DPO), lambda cfg, spec: 3)


def _rows(model: str, correct_by_pair: dict[str, tuple[bool, bool]]) -> list[dict]:
    rows = []
    for pid, (ok_orig, ok_swap) in correct_by_pair.items():
        for order, ok, (a, b) in (("original", ok_orig, ("m1", "m2")), ("swapped", ok_swap, ("m2", "m1"))):
            label = "A" if a == "m1" else "B"
            wins = -0.5 if ok else -3.0
            la, lb = (wins, -1.0) if label == "A" else (-1.0, wins)
            choice = "A" if la > lb else "B"
            rows.append({"model": model, "pair_id": pid, "user_id": f"u{pid[-1]}", "order": order,
                         "label": label, "option_a_id": a, "option_b_id": b, "logp_a": la, "logp_b": lb,
                         "choice": choice, "correct": choice == label})
    return rows


def test_predictions_round_trip_through_the_csv(tmp_path):
    sft = _rows("sft", {"p1": (True, False), "p2": (False, False), "p3": (True, True)})
    dpo = _rows("dpo", {"p1": (True, True), "p2": (True, False), "p3": (True, True)})
    predictions.write_predictions(tmp_path, sft + dpo)
    back = predictions.read_predictions(tmp_path / "predictions.csv")
    assert back["sft"][1]["correct"] is False and isinstance(back["sft"][0]["logp_a"], float)
    assert comparison.compare(back["sft"], back["dpo"]) == comparison.compare(sft, dpo)


def test_identical_seeds_pool_to_one_seed(tmp_path):
    # seeds [1, 1]: the same predictions twice must give the n and p of one seed, not a smaller p.
    sft = _rows("sft", {f"p{i}": (i % 3 > 0, i % 4 > 0) for i in range(10)})
    dpo = _rows("dpo", {f"p{i}": (True, i % 5 > 0) for i in range(10)})
    one = comparison.compare(sft, dpo)
    res = {"models": {m: metrics.model_metrics(r, n_boot=50) for m, r in (("sft", sft), ("dpo", dpo))},
           "comparison": one}
    for k in (2, 3):
        agg = seeds.aggregate_seeds({s: res for s in range(k)},
                                    {s: {"sft": sft, "dpo": dpo} for s in range(k)},
                                    arms.comparisons(), margin=0.02, alpha=0.05)
        assert agg["pooled"]["n_pairs"] == one["n_pairs"] and agg["pooled"]["p_value"] == one["p_value"]
        assert agg["pooled"]["ci"] == one["ci"] and agg["pooled_control"] is None
        assert agg["metrics"]["dpo"]["accuracy"]["sd"] == 0.0


def test_results_from_the_previous_version_are_reanalysed_not_rescored(tmp_path, capsys):
    # A run folder finished by the previous version: stages are skipped, and the evaluation's own
    # predictions.csv is re-analysed (no model) so the verdict uses the paired permutation test.
    legacy = FIXTURES / "legacy_eval"
    out = tmp_path / "run"
    for stage in ("sft", "dpo"):
        (out / stage).mkdir(parents=True)
        (out / stage / "metrics.json").write_text("{}")
    (out / "eval").mkdir()
    for name in ("predictions.csv", "results.json"):
        (out / "eval" / name).write_bytes((legacy / name).read_bytes())
    from dporec.config import load_config
    cfg = load_config(TINY_CONFIG, [f"output_dir={out}"])
    results, status = experiment.run_once(cfg, runtime.setup(cfg, "sft"))
    assert status == {"sft": "skipped", "dpo": "skipped", "eval": "re-analysed"}
    assert "a_accuracy" in results["comparison"] and "earlier version" in capsys.readouterr().out
    assert "ci" in results["comparison"] and results["alpha"] == 0.05  # the layout every report reads now
    previous = json.loads((out / "eval" / "results.previous.json").read_text())
    assert previous == json.loads((legacy / "results.json").read_text())


def test_data_is_built_from_source_when_missing(tmp_path):
    from dporec.config import load_config
    folder = tmp_path / "gen"
    cfg = load_config(TINY_CONFIG, ["data.source=synthetic:30", *(f"data.{s}_file={folder / f'{s}.jsonl'}"
                                                                  for s in ("train", "val", "test"))])
    assert experiment.ensure_data(cfg) == "built"
    assert all((folder / f"{s}.jsonl").is_file() for s in ("train", "val", "test"))
    assert experiment.ensure_data(cfg) == "skipped"
    cfg["data"]["source"] = None
    cfg["data"]["test_file"] = str(tmp_path / "elsewhere" / "test.jsonl")
    with pytest.raises(UserError, match="data.source is not set"):
        experiment.ensure_data(cfg)


def test_data_built_with_other_settings_is_refused_by_every_stage(tmp_path, tiny_model, capsys):
    """A config whose build settings differ from the folder it points at: the orchestrator, the stage
    scripts, the evaluation and the preflight all refuse it, naming the key (data.built)."""
    from dporec.config import load_config
    from dporec.evaluation.stage import evaluate
    from dporec.training.stages import run_sft
    from tests.helpers import verify_main
    folder = tmp_path / "gen"
    files_ = [f"data.{s}_file={folder / f'{s}.jsonl'}" for s in ("train", "val", "test")]
    over = ["data.source=synthetic:30", *files_, f"model.name={tiny_model}", f"output_dir={tmp_path / 'run'}"]
    assert experiment.ensure_data(load_config(TINY_CONFIG, over)) == "built"
    other = load_config(TINY_CONFIG, [*over, "data.history_len=4"])
    why = "data.history_len=4 but .* was built with history_len=5"
    for stage in (experiment.ensure_data, run_sft, evaluate):
        with pytest.raises(UserError, match=why):
            stage(other)
    assert verify_main(["--config", str(TINY_CONFIG), *over, "data.history_len=4"]) == 1
    assert "data: built" in capsys.readouterr().out
