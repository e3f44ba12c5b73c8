"""run_experiment.py: the whole pipeline on the tiny config over two seeds with the control arm,
a rerun that skips everything, and the pieces (stage skipping/resuming, predictions round trip,
data building) on their own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import run_experiment as rx
from conftest import TINY_CONFIG, tiny_overrides
from dporec import UserError, report, stats

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
            "seeds=[1, 2]", "experiment.control_arm=true"]
    assert rx.main(argv) == 0
    first = capsys.readouterr().out

    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["seeds"] == [1, 2]
    assert set(agg["per_seed"]) == {"1", "2"}
    assert set(agg["models"]) == {"base", "sft", "dpo", "sft_control"}
    for s in ("1", "2"):
        c = agg["per_seed"][s]["comparison"]
        assert c["verdict"] in ("SUPPORTED", "PARTIALLY SUPPORTED", "NOT SUPPORTED")
        assert agg["per_seed"][s]["comparison_control"]["verdict"] in ("SUPPORTED", "PARTIALLY SUPPORTED",
                                                                        "NOT SUPPORTED")
    acc = agg["metrics"]["dpo"]["accuracy"]
    assert len(acc["values"]) == 2 and acc["mean"] == pytest.approx(sum(acc["values"]) / 2)
    per_seed = json.loads((out / "seed-1" / "eval" / "results.json").read_text())
    # Pooled: every seed's pairs, each user still one bootstrap cluster across seeds.
    assert agg["pooled"]["n_pairs"] == 2 * per_seed["comparison"]["n_pairs"]
    assert agg["pooled"]["n_users"] == per_seed["comparison"]["n_users"]
    assert agg["pooled_control"]["n_pairs"] == agg["pooled"]["n_pairs"]
    assert "Pooled over seeds" in (out / "aggregate.md").read_text()

    # The control arm continues the SFT adapter for exactly as many optimizer steps as DPO took.
    for s in (1, 2):
        run = out / f"seed-{s}"
        dpo_steps = json.loads((run / "dpo" / "metrics.json").read_text())["steps"]
        control = json.loads((run / "sft_control" / "metrics.json").read_text())
        assert control["steps"] == dpo_steps == 3
        assert control["init_adapter"] == str(run / "sft")
        assert (run / "sft_control" / "adapter_config.json").is_file()
        assert "sft_control" in json.loads((run / "eval" / "results.json").read_text())["models"]
        assert (run / "eval" / "comparison_control.json").is_file()
        assert json.loads((run / "sft" / "run_info.json").read_text())["seed"] == s
    assert "SFT vs DPO" in first and "aggregate:" in first

    before = _finished_files(out)
    assert rx.main(argv) == 0
    second = capsys.readouterr().out
    assert "stages run: none" in second
    for stage in ("sft", "dpo", "sft_control", "eval"):
        for s in (1, 2):
            assert f"[{stage}] skipped: {out / f'seed-{s}' / stage}" in second
    assert _finished_files(out) == before


def test_run_stage_skips_finished_and_resumes_unfinished(tmp_path):
    calls = []

    def fake_main(argv):
        calls.append(argv)
        (tmp_path / "stage" / "metrics.json").write_text("{}")
        return 0

    marker = tmp_path / "stage" / "metrics.json"
    (tmp_path / "stage" / "checkpoint-4").mkdir(parents=True)
    assert rx.run_stage("sft", marker, fake_main, ["--config", "c.yaml"], overwrite=False) == "done"
    assert calls == [["--config", "c.yaml", "--resume"]]
    assert rx.run_stage("sft", marker, fake_main, ["--config", "c.yaml"], overwrite=False) == "skipped"
    assert rx.run_stage("sft", marker, fake_main, ["--config", "c.yaml"], overwrite=True) == "done"
    assert calls[-1] == ["--config", "c.yaml", "--overwrite"]
    with pytest.raises(UserError, match="stage dpo failed"):
        rx.run_stage("dpo", tmp_path / "dpo" / "metrics.json", lambda argv: 3, [], overwrite=False)


def _rows(model: str, correct_by_pair: dict[str, tuple[bool, bool]]) -> list[dict]:
    rows = []
    for pid, (ok_orig, ok_swap) in correct_by_pair.items():
        for order, ok, (a, b) in (("original", ok_orig, ("m1", "m2")), ("swapped", ok_swap, ("m2", "m1"))):
            label = "A" if a == "m1" else "B"
            wins = -0.5 if ok else -3.0
            la, lb = (wins, -1.0) if label == "A" else (-1.0, wins)
            choice = "A" if la > lb else "B"
            rows.append({"model": model, "pair_id": pid, "user_id": f"u{pid[-1]}", "order": order, "label": label,
                         "option_a_id": a, "option_b_id": b, "logp_a": la, "logp_b": lb, "choice": choice,
                         "correct": choice == label})
    return rows


def test_predictions_round_trip_through_the_csv(tmp_path):
    sft = _rows("sft", {"p1": (True, False), "p2": (False, False), "p3": (True, True)})
    dpo = _rows("dpo", {"p1": (True, True), "p2": (True, False), "p3": (True, True)})
    report.write_predictions(tmp_path, sft + dpo)
    back = report.read_predictions(tmp_path / "predictions.csv")
    assert back["sft"][1]["correct"] is False and isinstance(back["sft"][0]["logp_a"], float)
    assert stats.compare(back["sft"], back["dpo"], n_boot=50) == stats.compare(sft, dpo, n_boot=50)


def test_pooled_rows_prefix_pairs_but_keep_users():
    runs = {1: {"dpo": _rows("dpo", {"p1": (True, True)})}, 2: {"dpo": _rows("dpo", {"p1": (False, True)})}}
    pooled = rx.pooled_rows(runs, "dpo")
    assert {r["pair_id"] for r in pooled} == {"seed1:p1", "seed2:p1"}
    assert {r["user_id"] for r in pooled} == {"u1"}


def test_data_is_built_from_source_when_missing(tmp_path):
    from dporec.config import load_config
    folder = tmp_path / "gen"
    cfg = load_config(TINY_CONFIG, ["data.source=synthetic:30", f"data.train_file={folder / 'train.jsonl'}",
                                    f"data.val_file={folder / 'val.jsonl'}", f"data.test_file={folder / 'test.jsonl'}"])
    assert rx.ensure_data(cfg) == "built"
    assert all((folder / f"{s}.jsonl").is_file() for s in ("train", "val", "test"))
    assert rx.ensure_data(cfg) == "skipped"
    cfg["data"]["source"] = None
    cfg["data"]["test_file"] = str(tmp_path / "elsewhere" / "test.jsonl")
    with pytest.raises(UserError, match="data.source is not set"):
        rx.ensure_data(cfg)
