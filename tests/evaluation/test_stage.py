"""evaluate_dpo.py end to end on the tiny config: base + SFT + DPO adapters trained by the real
training scripts, results.json / predictions.csv / plots / report.md, its input errors, and
--from-predictions (re-analysis without a model) on that evaluation and on a predictions.csv
written by the previous version (tests/fixtures/legacy_eval, from a tiny synthetic run)."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys

import pytest

from dporec import ROOT, UserError
from dporec.analysis import comparison
from tests.helpers import FIXTURES, TINY_CONFIG, dpo_main, evaluate_main, sft_main, tiny_overrides

LEGACY = FIXTURES / "legacy_eval"

FAST = ["sft.max_steps=2", "dpo.max_steps=2", "train.eval_steps=1000", "train.save_steps=1000",
        "data.max_train_examples=8", "data.max_val_examples=4", "data.max_test_examples=8"]
MODEL_KEYS = ("n_pairs", "accuracy", "accuracy_original_order", "accuracy_swapped_order",
              "accuracy_both_orders", "consistency", "first_option_rate", "confidence")
COMPARISON_KEYS = ("a_accuracy", "b_accuracy", "difference", "ci", "p_value", "verdict", "margin_status",
                   "significant", "interval", "pairs_for_margin", "clustering", "decisions_differ")


@pytest.fixture(scope="module")
def trained_run(tiny_data, tiny_model, tmp_path_factory):
    """A run folder holding sft/ and dpo/ adapters (DPO started from SFT, so dpo/ also has ref/)."""
    run = tmp_path_factory.mktemp("run")
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, run), *FAST]
    assert sft_main(args) == 0
    assert dpo_main(args) == 0
    assert (run / "dpo" / "ref" / "adapter_config.json").is_file()
    return run, args


@pytest.fixture(scope="module")
def evaluated(trained_run):
    run, args = trained_run
    rc = evaluate_main([*args, "eval.generate=true", "eval.max_new_tokens=6", "eval.stability=true",
                            "eval.ranking=true", "eval.ranking_max_users=3", "eval.full_answer=true"])
    assert rc == 0
    return run / "eval"


def test_results_json(evaluated):
    res = json.loads((evaluated / "results.json").read_text())
    assert list(res["models"]) == ["base", "sft", "dpo"]
    n = res["meta"]["n_pairs"]
    assert "the decision and both full answers" in res["meta"]["scoring"]
    for name, m in res["models"].items():
        for key in MODEL_KEYS:
            assert key in m, (name, key)
        assert m["n_pairs"] == n
        assert 0.0 <= m["accuracy"] <= 1.0
        both = (m["accuracy_original_order"] + m["accuracy_swapped_order"]) / 2
        assert m["accuracy"] == pytest.approx(both)
        # every test pair generated and judged in both orders (eval.reasoning_pairs: null)
        r = res["reasoning"]["models"][name]
        assert r["answers"] == 2 * n and r["n_pairs"] == n and 0 <= r["parseable_rate"] <= 1
    c = res["comparison"]
    for key in COMPARISON_KEYS:
        assert key in c, key
    assert c["difference"] == pytest.approx(c["b_accuracy"] - c["a_accuracy"])
    assert c["a_accuracy"] == res["models"]["sft"]["accuracy"] and c["names"] == ["SFT", "DPO"]
    assert c["verdict"] == comparison.verdict(c["ci"], c["margin"]) and c["margin"] == 0.02
    lo, hi = c["ci"]
    assert (c["p_value"] < c["alpha"]) == (not lo <= 0 <= hi)
    assert c["clustering"] == "users" and c["n_users"] > 1
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
    rk = res["ranking"]
    assert rk["n_users"] == 3 and rk["candidates_per_user"] == [8]
    assert set(rk["models"]) == {"base", "sft", "dpo"} and set(rk["comparison"]) >= {"kendall_tau_b",
                                                                                     "ndcg@3", "hit@1"}
    for m in rk["models"].values():
        assert -1 <= m["kendall_tau_b"]["mean"] <= 1 and 0 <= m["hit@1"]["mean"] <= 1
    assert rk["comparison"]["ndcg@3"]["difference"] == pytest.approx(
        rk["models"]["dpo"]["ndcg@3"]["mean"] - rk["models"]["sft"]["ndcg@3"]["mean"])
    assert rk["baselines"]["mean_rating"]["kendall_tau_b"]["mean"] is not None
    with open(evaluated / "ranking.csv", newline="") as f:
        ranked = list(csv.DictReader(f))
    assert {r["ranker"] for r in ranked} >= {"base", "sft", "dpo", "mean_rating"}
    assert "Ranking adherence" in (evaluated / "report.md").read_text()
    for png in ("accuracy.png", "confidence.png", "ranking.png"):
        assert (evaluated / png).read_bytes()[:4] == b"\x89PNG"
    md = (evaluated / "report.md").read_text()
    assert res["comparison"]["verdict"] in md
    assert (evaluated / "run_info.json").is_file()
    # the second verdict: the same models on the personal task's pairs (the build wrote them beside test)
    personal = res["personal"]
    assert personal["test_file"].endswith("test_matched.jsonl") and set(personal["models"]) == {"base", "sft",
                                                                                                  "dpo"}
    with open(evaluated / "predictions_personal.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2 * personal["n_pairs"] * 3
    assert personal["comparison"]["sentence"] in md and "## Personal taste alone (secondary)" in md
    assert personal["baselines"]["mean_rating"]["available"] and personal["best_baseline"] is None
    assert all(p.startswith("u") and "-m" in p for p in
               {r["pair_id"] for r in csv.DictReader(open(evaluated / "predictions_personal.csv"))})

    # The DPO policy was evaluated, not the frozen ref/ copy of the SFT adapter it was trained from.
    full = {(r["model"], r["pair_id"], r["order"]): float(r["logp_a_full"]) for r in rows}
    diffs = [abs(full[("dpo", p, o)] - full[("sft", p, o)]) for (m, p, o) in full if m == "sft"]
    assert max(diffs) > 1e-4


def test_refuses_to_overwrite_a_finished_eval(evaluated, trained_run):
    _, args = trained_run
    with pytest.raises(UserError, match="already holds a finished run"):
        evaluate_main(args)


def test_missing_adapter_is_a_clear_error(tiny_data, tiny_model, tmp_path):
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, tmp_path / "empty")]
    with pytest.raises(UserError, match=r"'sft'.*empty/sft.*train_sft\.py"):
        evaluate_main(args)
    with pytest.raises(UserError, match=r"'dpo'.*train_dpo\.py"):
        evaluate_main([*args, "eval.models=[base, dpo]"])


def test_unknown_model_name(tiny_data, tiny_model, tmp_path):
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, tmp_path / "r"),
            "eval.models=[base, sfft]"]
    with pytest.raises(UserError, match="unknown model 'sfft'"):
        evaluate_main(args)


def test_malformed_test_file_names_file_and_line(tiny_data, tiny_model, tmp_path):
    bad = tmp_path / "test.jsonl"
    lines = (tiny_data / "test.jsonl").read_text().splitlines()
    lines[2] = lines[2][:40]  # truncated JSON
    bad.write_text("\n".join(lines) + "\n")
    args = ["--config", str(TINY_CONFIG), *tiny_overrides(tiny_data, tiny_model, tmp_path / "r"),
            f"data.test_file={bad}"]
    with pytest.raises(UserError, match=re.escape(f"{bad}:3: not valid JSON")):
        evaluate_main(args)


# ---------------------------------------------------------------- --from-predictions

def _stats_part(res: dict) -> dict:
    return {k: res[k] for k in ("models", "comparison", "comparison_control", "control_arm", "personal",
                                "reasoning")}


def test_from_predictions_reproduces_the_evaluation(evaluated, trained_run, tmp_path, capsys):
    _, args = trained_run
    original = json.loads((evaluated / "results.json").read_text())
    # Into another run folder: the CSV is copied there, every number recomputed, no model loaded.
    assert evaluate_main([*args, f"output_dir={tmp_path / 're'}", "--from-predictions",
                              str(evaluated / "predictions.csv")]) == 0
    out = tmp_path / "re" / "eval"
    again = json.loads((out / "results.json").read_text())
    assert _stats_part(again) == _stats_part(original)
    assert again["meta"]["reanalysed_from"] == str(evaluated / "predictions.csv")
    assert (out / "predictions.csv").read_bytes() == (evaluated / "predictions.csv").read_bytes()
    assert (out / "predictions_personal.csv").read_bytes() == \
        (evaluated / "predictions_personal.csv").read_bytes()  # the second verdict re-analysed too
    # the generated answers re-judged from generations.csv alone: the same reasoning figures and file
    assert (out / "generations.csv").read_bytes() == (evaluated / "generations.csv").read_bytes()
    assert "## Reasoning quality (secondary)" in (out / "report.md").read_text()
    for name in ("report.md", "accuracy.png", "confidence.png", "config.yaml"):
        assert (out / name).is_file(), name
    assert original["comparison"]["sentence"] in (out / "report.md").read_text()
    assert original["comparison"]["sentence"] in capsys.readouterr().out

    # A finished evaluation is not replaced by another file's analysis without --overwrite ...
    with pytest.raises(UserError, match="already holds a finished run"):
        evaluate_main([*args, f"output_dir={tmp_path / 're'}", "--from-predictions",
                       str(LEGACY / "predictions.csv")])
    # ... but re-analysing its own predictions.csv in place is what the flag is for: the scored CSV stays,
    # the previous results.json is kept, and what a CSV cannot give back (stability, timings) carries over.
    run2 = tmp_path / "run2"
    shutil.copytree(evaluated, run2 / "eval")
    csv_before = (run2 / "eval" / "predictions.csv").read_bytes()
    assert evaluate_main([*args, f"output_dir={run2}", "eval.bootstrap_samples=300",
                              "--from-predictions", str(run2 / "eval" / "predictions.csv")]) == 0
    inplace = json.loads((run2 / "eval" / "results.json").read_text())
    assert (run2 / "eval" / "predictions.csv").read_bytes() == csv_before
    assert json.loads((run2 / "eval" / "results.previous.json").read_text()) == original
    assert inplace["stability"] == original["stability"]
    assert inplace["meta"]["seconds_per_model"] == original["meta"]["seconds_per_model"]
    assert "300 resamples" in inplace["models"]["sft"]["interval"]  # the statistics follow this config
    assert inplace["models"]["sft"]["accuracy"] == original["models"]["sft"]["accuracy"]


def test_from_predictions_reads_the_previous_versions_file_without_the_ml_stack(tmp_path):
    # A predictions.csv written by the previous version (before this analysis existed), re-analysed
    # in a fresh interpreter: no torch/transformers/peft/trl may be imported on this path.
    code = ("import sys; from dporec.config import load_config; from dporec.evaluation.stage import "
            f"evaluate; cfg = load_config({str(TINY_CONFIG)!r}, ['output_dir={tmp_path / 'legacy'}']); "
            f"rc = 0 if evaluate(cfg, from_predictions={str(LEGACY / 'predictions.csv')!r}) else 1; "
            "heavy = sorted({'torch', 'transformers', 'peft', 'trl', 'bitsandbytes'} & set(sys.modules)); "
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    # the script itself, as a user runs it
    proc = subprocess.run([sys.executable, "evaluate_dpo.py", "--config", str(TINY_CONFIG),
                           f"output_dir={tmp_path / 'cli'}", "--from-predictions",
                           str(LEGACY / "predictions.csv")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    old = json.loads((LEGACY / "results.json").read_text())
    new = json.loads((tmp_path / "legacy" / "eval" / "results.json").read_text())
    assert list(new["models"]) == list(old["models"]) == ["base", "sft", "dpo"]
    for name, m in old["models"].items():
        for key in ("n_pairs", "accuracy", "accuracy_original_order", "accuracy_swapped_order",
                    "accuracy_both_orders", "consistency", "first_option_rate", "confidence"):
            assert new["models"][name][key] == pytest.approx(m[key]), (name, key)
        assert new["models"][name]["generation"]["valid_rate"] == m["generation"]["valid_rate"]
    for key in ("n_pairs", "n_users", "difference"):
        assert new["comparison"][key] == old["comparison"][key], key
    assert new["comparison"]["verdict"] in ("SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE")
    assert (new["comparison"]["a_accuracy"], new["comparison"]["b_accuracy"]) == (
        old["comparison"]["sft_accuracy"], old["comparison"]["dpo_accuracy"])
    assert "p_value" in new["comparison"] and "p_value" not in old["comparison"]


def test_from_predictions_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "predictions.csv"
    lines = (LEGACY / "predictions.csv").read_text(encoding="utf-8").splitlines()
    bad.write_text("\n".join(lines[:3] + [lines[3].replace(",-", ",oops-", 1)] + lines[4:]) + "\n",
                   encoding="utf-8")
    args = ["--config", str(TINY_CONFIG), f"output_dir={tmp_path / 'r'}", "--from-predictions"]
    with pytest.raises(UserError, match=re.escape(f"{bad}:4: column 'logp_a' must be a number")):
        evaluate_main([*args, str(bad)])
    one_order = tmp_path / "one_order.csv"
    one_order.write_text("\n".join(x for x in lines if ",swapped," not in x) + "\n", encoding="utf-8")
    with pytest.raises(UserError,
                       match=re.escape(f"{one_order}: model 'base', pair") + ".*both option orders"):
        evaluate_main([*args, str(one_order)])
    with pytest.raises(UserError, match="cannot read"):
        evaluate_main([*args, str(tmp_path / "missing.csv")])


def _csv(path, rows):
    """A predictions.csv in the layout the evaluation writes, from (model, pair, user, order, label,
    choice) tuples."""
    header = "model,pair_id,user_id,order,label,logp_a,logp_b,choice,correct\n"
    lines = [f"{m},{p},{u},{o},{lab},{-1.0 if ch == 'A' else -2.0},{-1.0 if ch == 'B' else -2.0},{ch},"
             f"{ch == lab}" for m, p, u, o, lab, ch in rows]
    path.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pair(model, i, right_in):
    """Both orders of pair i (label A in the original order) for a model right in the given orders."""
    out = []
    for order, label in (("original", "A"), ("swapped", "B")):
        ok = order in right_in
        out.append((model, f"p{i}", f"u{i}", order, label, label if ok else ("B" if label == "A" else "A")))
    return out


def test_a_position_locked_dpo_is_not_supported_through_from_predictions(tmp_path, capsys):
    # DPO always answers "A" (50.0%, never right in both orders); SFT right in both orders on 18 of 40 pairs
    # (45.0%). The old rule printed "SUPPORTED ... (+5.0 points, 95% CI -11.1 to +21.4); not significant".
    rows = []
    for i in range(40):
        rows += _pair("sft", i, ("original", "swapped") if i < 18 else ())
        rows += [(m, p, u, o, lab, "A") for m, p, u, o, lab, _ in _pair("dpo", i, ())]
    src = _csv(tmp_path / "locked.csv", rows)
    args = ["--config", str(TINY_CONFIG), f"output_dir={tmp_path / 'r'}", "--from-predictions", str(src)]
    assert evaluate_main(args) == 0
    c = json.loads((tmp_path / "r" / "eval" / "results.json").read_text())["comparison"]
    assert (c["a_accuracy"], c["b_accuracy"]) == (0.45, 0.5) and c["verdict"] == "INCONCLUSIVE"
    out = capsys.readouterr().out
    assert "INCONCLUSIVE: DPO 50.0% vs SFT 45.0% (+5.0 points" in out and "SUPPORTED:" not in out


def test_a_negligible_difference_is_not_supported_through_from_predictions(tmp_path):
    # 600 pairs, DPO right in one more order of one pair: "+0.1 points" with an interval below the margin.
    rows = []
    for i in range(600):
        both = ("original", "swapped") if i % 4 else ()
        rows += _pair("sft", i, both)
        rows += _pair("dpo", i, ("original",) if i == 0 else both)
    src = _csv(tmp_path / "tiny_gain.csv", rows)
    args = ["--config", str(TINY_CONFIG), f"output_dir={tmp_path / 'r'}", "--from-predictions", str(src)]
    assert evaluate_main(args) == 0
    c = json.loads((tmp_path / "r" / "eval" / "results.json").read_text())["comparison"]
    assert 0 < c["difference"] < 0.001 and c["ci"][1] < 0.02
    assert c["verdict"] == "NOT SUPPORTED" and c["margin_status"] == "ruled out"


def test_an_earlier_versions_finished_evaluation_is_reanalysed_not_misread(tmp_path, capsys):
    """evaluate_dpo.py resume=auto on an evaluation written before the level was recorded (ci95 keys): its
    predictions.csv is analysed again instead of the old results.json being read into today's tables."""
    import shutil
    eval_dir = tmp_path / "run" / "eval"
    eval_dir.mkdir(parents=True)
    for name in ("predictions.csv", "results.json"):
        shutil.copy(LEGACY / name, eval_dir / name)
    assert "ci95" in (eval_dir / "results.json").read_text()
    assert evaluate_main(["--config", str(TINY_CONFIG), f"output_dir={tmp_path / 'run'}", "resume=auto",
                          "eval.ranking=false"]) == 0
    out = capsys.readouterr().out
    assert "earlier version" in out and "95% CI" in out
    assert '"ci"' in (eval_dir / "results.json").read_text()
