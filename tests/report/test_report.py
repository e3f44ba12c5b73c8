"""Tests for dporec.report: files written parse back, PNGs are real images, report/console text
carries the models and the verdict."""
import csv
import json

import numpy as np
import pytest

from dporec import arms
from dporec.analysis import comparison, metrics, seeds
from dporec.files import jsonable
from dporec.report import markdown, numbers, outputs, plots, predictions, sentences, tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_rows(model, n_pairs, p_correct, seed, with_generation=False):
    """Prediction rows for n_pairs test pairs (5 per user) in both orders; correct w.p. p_correct."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        good, bad = f"m{i}-good", f"m{i}-bad"
        for order in ("original", "swapped"):
            label = "AB"[(i + (order == "swapped")) % 2]
            ids = {label: good, ("B" if label == "A" else "A"): bad}
            margin = rng.normal(1.0, 1.5) if rng.random() < p_correct else -abs(rng.normal(0.5, 1.0)) - 1e-3
            lc, lw = -1.0, -1.0 - margin  # log-probs of the correct / wrong answer
            la, lb = (lc, lw) if label == "A" else (lw, lc)
            choice = "A" if la > lb else "B"
            row = {"model": model, "pair_id": f"p{i}", "user_id": str(i // 5), "order": order,
                   "label": label, "option_a_id": ids["A"], "option_b_id": ids["B"],
                   "logp_a": la, "logp_b": lb, "choice": choice, "correct": choice == label,
                   "logp_a_full": la - 30.0, "logp_b_full": lb - 30.0,
                   "choice_full": choice, "correct_full": choice == label}
            if with_generation:
                row["parsed"] = choice if rng.random() < 0.9 else None
                row["generated"] = f'The better recommendation is Option {choice}. "Quoted", two\nlines'
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def rows_by_model():
    return {"sft": fake_rows("sft", 60, 0.7, 1, with_generation=True),
            "dpo": fake_rows("dpo", 60, 0.8, 2, with_generation=True)}


@pytest.fixture(scope="module")
def results(rows_by_model):
    return {"models": {name: metrics.model_metrics(rows) for name, rows in rows_by_model.items()},
            "comparison": comparison.compare(rows_by_model["sft"], rows_by_model["dpo"]),
            "meta": {"test_file": "data/test.jsonl", "n_pairs": 60, "timings": {"scoring_s": 1.5}}}


def test_write_results_parses_back(tmp_path, results):
    path = outputs.write_results(tmp_path / "eval", results)
    assert path == tmp_path / "eval" / "results.json"
    back = json.loads(path.read_text())
    assert back["comparison"]["verdict"] == results["comparison"]["verdict"]
    assert back["models"]["dpo"]["accuracy"] == results["models"]["dpo"]["accuracy"]
    assert back["models"]["sft"]["accuracy_ci"] == list(results["models"]["sft"]["accuracy_ci"])
    assert back["meta"]["timings"] == {"scoring_s": 1.5}


def test_write_results_is_strict_json(tmp_path):
    path = outputs.write_results(tmp_path, {"models": {}, "comparison": None,
                                           "meta": {"x": float("nan"), "y": np.float64(2.5), "z": (1, 2)}})
    assert json.loads(path.read_text())["meta"] == {"x": None, "y": 2.5, "z": [1, 2]}


def test_write_predictions_round_trip(tmp_path, rows_by_model):
    rows = rows_by_model["sft"] + rows_by_model["dpo"]
    extra = [dict(r, zz_note="x") for r in rows[:1]] + rows[1:]
    path = predictions.write_predictions(tmp_path, extra)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(predictions.PREDICTION_COLUMNS) + ["zz_note"]
        back = list(reader)
    assert len(back) == len(rows) == 240
    for orig, got in zip(rows, back):
        assert got["pair_id"] == orig["pair_id"] and got["order"] == orig["order"]
        assert float(got["logp_a"]) == orig["logp_a"]  # full float precision survives
        assert got["generated"] == orig["generated"]  # quotes, commas and newlines survive
        assert got["parsed"] == (orig["parsed"] or "")
        assert got["correct"] == str(orig["correct"])


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01  # not a blank canvas


def test_plots_are_valid_pngs(tmp_path, results, rows_by_model):
    _assert_png(plots.plot_accuracy(tmp_path, results))
    _assert_png(plots.plot_confidence(tmp_path, rows_by_model))
    assert {p.name for p in tmp_path.iterdir()} == {"accuracy.png", "confidence.png"}


def test_report_md_contains_table_and_verdict(tmp_path, results):
    text = markdown.write_report_md(tmp_path, results).read_text(encoding="utf-8")
    assert sentences.verdict_sentence(results["comparison"]) in text
    assert results["comparison"]["verdict"] in text
    for name, m in results["models"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert f"{100 * m['accuracy']:.1f}%" in row
    assert "## Full-answer scores" in text and "## Generation" in text
    assert "test_file: data/test.jsonl" in text


def test_report_without_comparison(tmp_path, results):
    only_sft = {"models": {"sft": results["models"]["sft"]}, "comparison": None, "meta": {}}
    text = markdown.write_report_md(tmp_path, only_sft).read_text(encoding="utf-8")
    assert "No comparison" in text and "SUPPORTED" not in text
    assert "No SFT-vs-DPO comparison" in tables.format_verdict(only_sft)


def test_console_table_and_verdict(results):
    table = tables.format_table(results)
    lines = table.splitlines()
    assert len(lines) == 2 + len(results["models"])
    assert len({len(line) for line in lines}) == 1  # fixed width
    for name in results["models"]:
        assert any(line.startswith(name) for line in lines[2:])
    block = tables.format_verdict(results)
    assert sentences.verdict_sentence(results["comparison"]) in block
    assert "McNemar" not in block


def test_report_names_the_test_the_verdict_uses(tmp_path, results):
    text = markdown.write_report_md(tmp_path, results).read_text(encoding="utf-8")
    c = results["comparison"]
    assert "cluster-robust t interval over users (CR2 variance, Bell-McCaffrey degrees of freedom" in text
    assert numbers.format_p(c["p_value"]) in text and "McNemar" not in text
    assert "bootstrap over users" in text  # each model's own interval
    assert "design effect" in text and f"{c['pairs_for_margin']:,} pairs" in text
    assert f"The label follows the interval: {sentences.LABEL_RULE}." in text


def test_report_without_user_ids_says_pairs(tmp_path, rows_by_model):
    rows = {m: [{k: v for k, v in r.items() if k != "user_id"} for r in rs] for m,
            rs in rows_by_model.items()}
    res = {"models": {m: metrics.model_metrics(r, n_boot=100) for m, r in rows.items()},
           "comparison": comparison.compare(rows["sft"], rows["dpo"]), "meta": {}}
    text = markdown.write_report_md(tmp_path, res).read_text(encoding="utf-8")
    assert "bootstrap over pairs (no user ids)" in text
    assert "no user ids, so every pair is its own cluster" in text
    assert "interval over pairs (no user ids)" in tables.format_verdict(res)
    back = json.loads(outputs.write_results(tmp_path, res).read_text())
    assert back["comparison"]["clustering"] == "pairs (no user ids)"
    assert back["models"]["sft"]["interval"].startswith("percentile bootstrap over pairs (no user ids)")


def test_baselines_are_rendered_beside_the_models(tmp_path, results):
    """The baselines block (dporec.baselines.add_to_results's layout) reaches report.md, the console
    table and the verdict block; the verdict clause follows each model's paired CI against the best rule."""
    res = json.loads(json.dumps(results))
    res["baselines"] = {
        "mean_rating": {"label": "mean rating among training users", "available": True, "accuracy": 0.75,
                        "ci": [0.68, 0.81], "n_pairs": 60},
        "popularity": {"label": "popularity among training users", "available": True, "accuracy": 0.58,
                       "ci": [0.5, 0.66], "n_pairs": 60},
        "genre_overlap": {"label": "genre overlap with the history", "available": False, "accuracy": None,
                          "ci": None, "n_pairs": 60, "reason": "the test file has no history genres"}}
    res["best_baseline"] = {"rule": "mean_rating", "label": "mean rating among training users",
                            "chosen_on": "validation pairs", "validation_accuracy": 0.77,
                            "n_validation_pairs": 50}
    res["models"]["sft"]["vs_best_baseline"] = {"baseline": "mean_rating", "difference": 0.05,
                                                "ci": [0.01, 0.09]}
    res["models"]["dpo"]["vs_best_baseline"] = {"baseline": "mean_rating", "difference": -0.02,
                                                "ci": [-0.08, 0.03]}
    text = markdown.write_report_md(tmp_path, res).read_text(encoding="utf-8")
    assert "| mean rating among training users | 75.0% [68.0, 81.0] |" in text
    assert "| genre overlap with the history | not available: the test file has no history genres |" in text
    verdict = tables.format_verdict(res)
    assert ("Strongest baseline on the validation pairs, rating rules time-cut (only ratings made before "
            "each pair): mean rating among training users (77.0% on the validation pairs, 75.0% on the test "
            "pairs).") in verdict
    assert "sft" in verdict and "beats it (+5.0 points" in verdict
    assert "does not differ clearly from it (\u22122.0 points" in verdict
    table = tables.format_table(res)
    assert "popularity among training users" in table and "n/a" in table
    assert "Strongest baseline" not in tables.format_verdict(results)  # no baselines, no clause


def test_aggregate_of_three_seeds_whose_effects_differ_is_about_the_method(rows_by_model):
    """Each seed's DPO differs from the others (its own training run): the headline interval adds the seeds'
    variance to the test pairs', and the report says which interval is about what."""
    by_seed, results = {}, {}
    for s, strength in ((1, 0.95), (2, 0.8), (3, 0.6)):
        rows = {"sft": rows_by_model["sft"], "dpo": fake_rows("dpo", 60, strength, 2 + s)}
        by_seed[s] = rows
        results[s] = {"models": {m: metrics.model_metrics(r, n_boot=50) for m, r in rows.items()},
                      "comparison": comparison.compare(rows["sft"], rows["dpo"])}
    agg = seeds.aggregate_seeds(results, by_seed, [arms.MAIN], margin=0.02, alpha=0.05)
    pooled = agg["pooled"]
    assert pooled["scope"] == "method" and pooled["seed_spread"]["sd"] > 0.05
    lo, hi = pooled["ci"]
    flo, fhi = pooled["these_models"]["ci"]
    assert lo < flo and hi > fhi  # wider than the interval that holds the three models fixed
    md = markdown.aggregate_markdown(jsonable(agg))
    assert "## Over seeds, about the method: SFT vs DPO (primary)" in md
    assert "seeds' t half-width (2 df" in md and "About these 3 seeds' trained models only" in md


def test_aggregate_markdown_uses_the_pooled_paired_test(rows_by_model):
    res = {"models": {m: metrics.model_metrics(r, n_boot=50) for m, r in rows_by_model.items()},
           "comparison": comparison.compare(rows_by_model["sft"], rows_by_model["dpo"])}
    agg = seeds.aggregate_seeds({s: res for s in (1, 2, 3)}, {s: rows_by_model for s in (1, 2, 3)},
                                [arms.MAIN], margin=0.02, alpha=0.05)
    md = markdown.aggregate_markdown(jsonable(agg))
    assert "averaged over 3 seeds first" in md and agg["pooled"]["n_pairs"] == 60
    assert sentences.verdict_sentence(agg["pooled"]) in md
    assert agg["pooled"]["seed_spread"]["sd"] == 0.0 and "Each seed's difference in points" in md
    assert "Its interval, p and label are about the method" in md
    assert "About these 3 seeds' trained models" in md
    # identical seeds: no seed variance, so the method's interval is the one about these models
    assert agg["pooled"]["ci"] == pytest.approx(agg["pooled"]["these_models"]["ci"])
