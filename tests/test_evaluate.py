"""evaluate_dpo.py end to end on the tiny config: base + SFT + DPO adapters trained by the real
training scripts, results.json / predictions.csv / plots / report.md, and its input errors."""
from __future__ import annotations

import csv
import json
import re

import pytest

import evaluate_dpo
import train_dpo
import train_sft
from dporec import UserError

from conftest import TINY_CONFIG, tiny_overrides

FAST = ["sft.max_steps=2", "dpo.max_steps=2", "train.eval_steps=1000", "train.save_steps=1000",
        "data.max_train_examples=8", "data.max_val_examples=4", "data.max_test_examples=8"]
MODEL_KEYS = ("n_pairs", "accuracy", "accuracy_original_order", "accuracy_swapped_order", "accuracy_both_orders",
              "consistency", "first_option_rate", "confidence")
COMPARISON_KEYS = ("sft_accuracy", "dpo_accuracy", "difference", "ci95", "mcnemar_p", "verdict", "significant")


@pytest.fixture(scope="module")
def trained_run(tiny_data, tiny_model, tmp_path_factory):
    """A run folder holding sft/ and dpo/ adapters (DPO started from SFT, so dpo/ also has ref/)."""
    run = tmp_path_factory.mktemp("run")
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, run), *FAST]
    assert train_sft.main(args) == 0
    assert train_dpo.main(args) == 0
    assert (run / "dpo" / "ref" / "adapter_config.json").is_file()
    return run, args


@pytest.fixture(scope="module")
def evaluated(trained_run):
    run, args = trained_run
    rc = evaluate_dpo.main([*args, "eval.generate=true", "eval.max_new_tokens=6", "eval.stability=true"])
    assert rc == 0
    return run / "eval"


def test_results_json(evaluated):
    res = json.loads((evaluated / "results.json").read_text())
    assert list(res["models"]) == ["base", "sft", "dpo"]
    n = res["meta"]["n_pairs"]
    for name, m in res["models"].items():
        for key in MODEL_KEYS:
            assert key in m, (name, key)
        assert m["n_pairs"] == n
        assert 0.0 <= m["accuracy"] <= 1.0
        assert m["accuracy"] == pytest.approx((m["accuracy_original_order"] + m["accuracy_swapped_order"]) / 2)
        assert m["generation"]["counts"]["decisions"] == 2 * n
    c = res["comparison"]
    for key in COMPARISON_KEYS:
        assert key in c, key
    assert c["difference"] == pytest.approx(c["dpo_accuracy"] - c["sft_accuracy"])
    assert c["sft_accuracy"] == res["models"]["sft"]["accuracy"]
    assert c["verdict"] in ("SUPPORTED", "PARTIALLY SUPPORTED", "NOT SUPPORTED")
    stab = res["stability"]
    assert stab["status"] == "done" and stab["precision"] == "float32"
    for name in ("base", "sft", "dpo"):
        assert 0.0 <= stab["models"][name]["choice_agreement"] <= 1.0


def test_predictions_plots_and_report(evaluated):
    res = json.loads((evaluated / "results.json").read_text())
    n = res["meta"]["n_pairs"]
    with open(evaluated / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * n * 3
    assert {r["order"] for r in rows} == {"original", "swapped"}
    for name in ("base", "sft", "dpo"):
        assert sum(r["model"] == name for r in rows) == 2 * n
    for png in ("accuracy.png", "confidence.png"):
        assert (evaluated / png).read_bytes()[:4] == b"\x89PNG"
    md = (evaluated / "report.md").read_text()
    assert res["comparison"]["verdict"] in md
    assert (evaluated / "run_info.json").is_file()

    # The DPO policy was evaluated, not the frozen ref/ copy of the SFT adapter it was trained from.
    full = {(r["model"], r["pair_id"], r["order"]): float(r["logp_a_full"]) for r in rows}
    diffs = [abs(full[("dpo", p, o)] - full[("sft", p, o)]) for (m, p, o) in full if m == "sft"]
    assert max(diffs) > 1e-4


def test_refuses_to_overwrite_a_finished_eval(evaluated, trained_run):
    _, args = trained_run
    with pytest.raises(UserError, match="already holds a finished run"):
        evaluate_dpo.main(args)


def test_missing_adapter_is_a_clear_error(tiny_data, tiny_model, tmp_path):
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, tmp_path / "empty")]
    with pytest.raises(UserError, match=r"'sft'.*empty/sft.*train_sft\.py"):
        evaluate_dpo.main(args)
    with pytest.raises(UserError, match=r"'dpo'.*train_dpo\.py"):
        evaluate_dpo.main([*args, "eval.models=[base, dpo]"])


def test_unknown_model_name(tiny_data, tiny_model, tmp_path):
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, tmp_path / "r"),
            "eval.models=[base, sfft]"]
    with pytest.raises(UserError, match="unknown model 'sfft'"):
        evaluate_dpo.main(args)


def test_malformed_test_file_names_file_and_line(tiny_data, tiny_model, tmp_path):
    bad = tmp_path / "test.jsonl"
    lines = (tiny_data / "test.jsonl").read_text().splitlines()
    lines[2] = lines[2][:40]  # truncated JSON
    bad.write_text("\n".join(lines) + "\n")
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, tmp_path / "r"),
            f"data.test_file={bad}"]
    with pytest.raises(UserError, match=re.escape(f"{bad}:3: not valid JSON")):
        evaluate_dpo.main(args)
