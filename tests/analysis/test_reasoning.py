"""Reasoning quality (dporec/analysis/reasoning.py): hand-written answers through the judge into the per-model
figures, the comparison's interval and label, generations.csv re-judged without a model, the report's
section, and the coverage of the comparison's interval on simulated answers (dense, sparse and small)."""
from __future__ import annotations

import numpy as np
import pytest

from dporec import arms
from dporec.analysis import reasoning
from dporec.analysis.comparison import compare_tables
from dporec.analysis.metrics import model_metrics
from dporec.analysis.resampling import paired_interval
from dporec.data import records, task
from dporec.report import markdown
from dporec.report.predictions import read_generations, write_generations
from tests.analysis.rows import balanced_spec, rows_from

HEAT = "Heat (1995) (Action|Crime|Thriller)"
CASPER = "Casper (1995) (Adventure|Children's)"
HISTORY = ["Se7en (1995) (Crime|Thriller)", "Speed (1994) (Action|Romance|Thriller)"]
TRUE_A = ("The better recommendation is Option A. Reasoning: Of the genres in the history, Heat (1995) "
          "(Action|Crime|Thriller) has Action, Crime and Thriller; Casper (1995) (Adventure|Children's) has "
          "none of them.")
HEAT_G, CASPER_G = "Action|Crime|Thriller", "Adventure|Children's"
TRUE_B = TRUE_A.replace("Option A.", "Option B.", 1)  # the swapped order: Heat is Option B


def _example(pid, user, history=HISTORY, layout=task.own_line_input):
    return records.parse_record({"instruction": task.INSTRUCTION, "input": layout(history, HEAT, CASPER),
                                 "output": task.answer_text("A"), "id": pid, "user_id": user}, "x:1", pid)


def rows_for(model, answers, n_pairs=4, history=HISTORY, layout=task.own_line_input):
    """Generation rows for n_pairs copies of the Heat/Casper pair (Heat liked), two users; `answers`
    (original, swapped) -> the texts the model gave."""
    rows = []
    for i in range(n_pairs):
        ex = _example(f"p{i}", f"u{i % 2}", history, layout)
        for (order, e), text in zip(records.orders(ex), answers(i)):
            rows.append({"model": model, "pair_id": ex.pair_id, "user_id": ex.user_id, "order": order,
                         "label": e.label, "input": e.input, "history": "", "generated": text,
                         "reference": records.sft_output(e)})
    return rows


def test_per_model_figures_follow_the_judgements():
    good = reasoning.judge_rows(rows_for("sft", lambda i: (TRUE_A, TRUE_B)))
    b = reasoning.model_block(good, n_boot=200)
    assert (b["answers"], b["n_pairs"], b["n_users"]) == (8, 4, 2)
    for k in ("parseable_rate", "accuracy", "coherence_rate", "all_claims_true_rate",
              "right_and_truthful_rate"):
        assert b[k] == 1.0, k
    assert b["false_claims_per_answer"] == 0.0
    # the base model: half unparseable, half right with a false claim, praising the other movie
    bad = ("The better recommendation is Option A. Reasoning: Of the genres in the history, Casper (1995) "
           "has Action; Heat (1995) has none of them.")
    mixed = reasoning.judge_rows(rows_for("base", lambda i: ("I like films.", bad) if i % 2 else (bad, "")))
    m = reasoning.model_block(mixed, n_boot=200)
    assert m["parseable_rate"] == 0.5
    assert m["accuracy"] == 0.25  # `bad` names A: right in the original order only
    # in the original order it praises Casper (B) under Option A: incoherent; in the swapped order Casper
    # is Option A, so the same words argue for what they chose: coherent, but wrong
    assert m["coherence_rate"] == 0.25 and m["right_and_truthful_rate"] == 0.0
    assert m["false_claims_per_answer"] == 1.0  # two false claims in each of the 4 parseable answers
    lo, hi = m["accuracy_ci"]
    assert lo <= 0.25 <= hi


def test_claims_without_history_genres_are_unchecked_and_the_rates_not_reported():
    titles = ["Se7en (1995)", "Speed (1994)"]
    thesis = task.answer_text("A", task.thesis_reasoning(HEAT_G, "B", CASPER_G))
    mirrored = task.answer_text("B", task.thesis_reasoning(HEAT_G, "A", CASPER_G))
    judged = reasoning.judge_rows(rows_for("sft", lambda i: (thesis, mirrored), history=titles,
                                           layout=task.inline_input))
    b = reasoning.model_block(judged, n_boot=200)
    assert b["checkable"] is False and b["answers_with_history_genres"] == 0
    assert b["right_and_truthful_rate"] is None and b["all_claims_true_rate"] is None
    assert b["coherence_rate"] == 1.0 and b["accuracy"] == 1.0  # decided and argued without genres
    assert b["counts"]["unchecked_claims"] == 16
    out = reasoning.reasoning_results({"sft": judged, "dpo": judged}, arms.comparisons(), 0.02, 0.05, 200, 0)
    assert out[arms.MAIN.key] is None  # nothing checkable to compare
    md = markdown.report_md({"alpha": 0.05, "reasoning": out} | _minimal_models())
    assert "no claim can be checked" in md and "n/a" in md


def _minimal_models() -> dict:
    """A results.json's models block (report_md needs one): two pairs of prediction rows."""
    rows = rows_from("sft", balanced_spec(2, ("good", "good")))
    return {"models": {"sft": model_metrics(rows, n_boot=100)}}


def test_the_comparison_uses_the_main_verdicts_interval_and_label():
    sft = reasoning.judge_rows(rows_for("sft", lambda i: (TRUE_A, TRUE_B) if i < 2 else (TRUE_A, "")))
    dpo = reasoning.judge_rows(rows_for("dpo", lambda i: (TRUE_A, TRUE_B)))
    out = reasoning.reasoning_results({"sft": sft, "dpo": dpo}, arms.comparisons(), 0.02, 0.05, 200, 0)
    c = out[arms.MAIN.key]
    assert c["measure"] == reasoning.HEADLINE and c["names"] == ["SFT", "DPO"]
    assert c["a_accuracy"] == 0.75 and c["b_accuracy"] == 1.0 and c["difference"] == 0.25
    scores_a, users = reasoning.pair_table(sft)
    scores_b, _ = reasoning.pair_table(dpo)
    pids = sorted(scores_a)
    direct = paired_interval([scores_b[p] - scores_a[p] for p in pids], [users[p] for p in pids])
    assert c["ci"] == list(direct["ci"]) and c["p_value"] == direct["p_value"]
    # these hand-made records' own answers are the decision alone: right, but they argue nothing
    ref = out["reference"]
    assert ref["accuracy"] == 1.0 and ref["coherence_rate"] == 0.0 and ref["right_and_truthful_rate"] == 0.0
    assert len(out["examples"]["sft"]) == 3


def test_generations_csv_is_rejudged_to_the_same_figures(tmp_path):
    none_b = "The better recommendation is Option A. Reasoning: Option B has none of them."
    answers = lambda i: (TRUE_A, none_b)
    judged = reasoning.judge_rows(rows_for("dpo", answers))
    write_generations(tmp_path, judged)
    back = read_generations(tmp_path / "generations.csv")
    again = reasoning.judge_rows(back["dpo"])
    assert reasoning.model_block(again, n_boot=200) == reasoning.model_block(judged, n_boot=200)
    # stored judgements are never trusted: an edited answer is judged anew
    text = (tmp_path / "generations.csv").read_text(encoding="utf-8")
    (tmp_path / "generations.csv").write_text(text.replace("Option B has none of them", "Option B has Drama"),
                                              encoding="utf-8")
    edited = reasoning.judge_rows(read_generations(tmp_path / "generations.csv")["dpo"])
    # the edited answers are the swapped order's, where Option B is Heat: it has no Drama
    assert sum(r["false_claims"] for r in edited) == 4


def test_a_pair_generated_in_one_order_only_is_refused():
    rows = reasoning.judge_rows(rows_for("sft", lambda i: (TRUE_A, TRUE_B)))
    with pytest.raises(ValueError, match="both option orders"):
        reasoning.model_block(rows[:-1])


def test_the_report_shows_the_table_and_highlighted_examples():
    sft = reasoning.judge_rows(rows_for("sft", lambda i: (TRUE_A, TRUE_B)))
    base = reasoning.judge_rows(rows_for("base", lambda i: (TRUE_A.replace("none of them", "Action"), "")))
    out = reasoning.reasoning_results({"base": base, "sft": sft}, arms.comparisons(), 0.02, 0.05, 200, 0,
                                      subset={"pairs": 4, "of": 10, "max_new_tokens": 96})
    md = markdown.report_md({"alpha": 0.05, "reasoning": out} | _minimal_models())
    assert "## Reasoning quality (secondary)" in md and "a seeded sample of 4 of the 10 test pairs" in md
    assert "| base | 8 |" in md and "| sft | 8 |" in md and "| data's own answers | 8 |" in md
    assert "**Heat (1995) (Action|Crime|Thriller) has Action, Crime and Thriller** (true)" in md
    assert "~~Casper (1995) (Adventure|Children's) has Action~~ (false: " in md


# ---------------------------------------------------------------------------------------------
# Coverage of the comparison's interval (the labelled line's device) on simulated answers

def _simulate(rng, n_users, pairs_per_user, p, share_differ, shift, same_order):
    """Per-pair differences (b - a) of the headline over both orders, and user labels. Model a's answer is
    right and truthful with a user-level probability around p; b answers as a does, except on a share of
    answers where it draws anew with that probability + shift (so the true difference is share * shift)."""
    users = np.repeat(np.arange(n_users), pairs_per_user)
    pu = np.clip(p + rng.normal(0, 0.15, n_users), 0.02, 0.98)[users]
    n = users.size
    a1 = rng.random(n) < pu
    a2 = np.where(rng.random(n) < same_order, a1, rng.random(n) < pu)  # orders agree often
    a = np.column_stack([a1, a2]).astype(float)
    redraw = rng.random((n, 2)) < share_differ
    fresh = rng.random((n, 2)) < np.clip(pu + shift, 0, 1)[:, None]
    b = np.where(redraw, fresh, a).astype(float)
    truth = share_differ * (np.clip(pu + shift, 0, 1) - pu).mean()
    return (b - a).mean(axis=1), users, truth


@pytest.mark.parametrize("n_users, per_user, p, share, shift", [
    (150, 3, 0.5, 0.3, 0.1),    # dense, the thesis's size
    (100, 3, 0.2, 0.05, 0.2),   # sparse: 5% of answers differ
    (30, 2, 0.5, 0.1, 0.0),     # small, no effect
    (10, 1, 0.7, 0.3, -0.1),    # very small
    (60, 3, 0.05, 0.1, 0.1),    # rare successes (a weak model's right-and-truthful rate)
])
def test_the_comparison_interval_covers_the_true_difference(n_users, per_user, p, share, shift):
    rng = np.random.default_rng(7)
    reps, hits = 600, 0
    for _ in range(reps):
        diff, users, truth = _simulate(rng, n_users, per_user, p, share, shift, same_order=0.7)
        lo, hi = paired_interval(diff, users)["ci"]
        hits += lo <= truth <= hi
    assert hits / reps >= 0.93, hits / reps
    # and the comparison reports that interval
    scores_a = {str(i): 0.5 for i in range(len(diff))}
    scores_b = {str(i): 0.5 + d for i, d in enumerate(diff)}
    labels = {str(i): str(u) for i, u in enumerate(users)}
    c = compare_tables([(scores_a, labels)], [(scores_b, labels)])
    pids = sorted(scores_a)
    assert c["ci"] == list(paired_interval([scores_b[q] - scores_a[q] for q in pids],
                                           [labels[q] for q in pids])["ci"])
