"""Per-model metrics (dporec.analysis.metrics) on hand-built prediction rows: two-order accuracy,
position bias, ties, full-answer and generation blocks, the row contract."""
import pytest
from scipy import special

from dporec.analysis import metrics
from tests.analysis.rows import balanced_spec, make_pair, rows_from

# ---------------------------------------------------------------- per-model metrics

def test_always_a_on_balanced_pairs():
    m = metrics.model_metrics(rows_from("sft", balanced_spec(10, ("A", "A"))))
    assert m["n_pairs"] == 10
    assert m["accuracy"] == 0.5
    assert m["first_option_rate"] == 1.0
    assert m["consistency"] == 0.0
    assert m["accuracy_both_orders"] == 0.0
    assert m["accuracy_original_order"] == 0.5 and m["accuracy_swapped_order"] == 0.5


def test_perfect_model():
    m = metrics.model_metrics(rows_from("dpo", balanced_spec(10, ("good", "good"))))
    assert (m["accuracy"], m["first_option_rate"], m["consistency"]) == (1.0, 0.5, 1.0)
    assert m["accuracy_both_orders"] == 1.0
    assert m["counts"] == {"decisions": 20, "correct": 20, "ties": 0}
    assert m["accuracy_ci"] == (1.0, 1.0)


def test_always_b_model_gets_a_zero_width_interval():
    # An always-"B" model scores exactly 0.5 on every pair: there is no sampling uncertainty in its
    # two-order accuracy. Wilson on the 180 decisions of 90 pairs claimed [42.8, 57.2].
    m = metrics.model_metrics(rows_from("sft", balanced_spec(90, ("B", "B"), users=30)), n_boot=500)
    assert m["accuracy"] == 0.5
    assert m["accuracy_ci"] == pytest.approx((0.5, 0.5), abs=1e-12)
    lo, hi = m["accuracy_original_order_ci"]
    assert hi - lo > 0.1  # 0/1 per pair there
    assert m["clustering"] == "users" and m["n_users"] == 30


def test_consistent_but_wrong_model_is_consistent():
    m = metrics.model_metrics(rows_from("sft", balanced_spec(6, ("bad", "bad"))))
    assert (m["accuracy"], m["consistency"]) == (0.0, 1.0)


def test_ties_count_half_and_not_first_option():
    spec = balanced_spec(4, ("tie", "tie")) + [("x", "9", "A", ("good", "good"))]
    m = metrics.model_metrics(rows_from("sft", spec))
    assert m["counts"] == {"decisions": 10, "correct": 2, "ties": 8}
    assert m["accuracy"] == pytest.approx(0.6)  # a tied order is half right, as a rule's tie is
    assert m["accuracy_original_order"] == pytest.approx(0.6) and m["accuracy_both_orders"] == 0.2
    assert m["first_option_rate"] == pytest.approx(0.1)  # only the real pair's "A" decision
    assert m["consistency"] == pytest.approx(0.2)


def test_tie_stored_as_a_letter_is_rejected():
    rows = make_pair("sft", "p0", "u", "A", ("tie", "good"))
    rows[0]["choice"] = "A"  # a scorer that breaks ties towards A would inflate first-option rate
    with pytest.raises(ValueError, match="tie"):
        metrics.model_metrics(rows)


def test_mixed_orders_and_confidence():
    # pair 1 right in both orders, pair 2 right only in original, pair 3 wrong in both
    spec = [("p1", "u1", "A", ("good", "good")), ("p2", "u1", "B", ("good", "bad")),
            ("p3", "u2", "A", ("bad", "bad"))]
    m = metrics.model_metrics(rows_from("sft", spec))
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["accuracy_original_order"] == pytest.approx(2 / 3)
    assert m["accuracy_swapped_order"] == pytest.approx(1 / 3)
    assert m["accuracy_both_orders"] == pytest.approx(1 / 3)
    assert m["consistency"] == pytest.approx(2 / 3)  # p2 switches movie
    assert m["n_users"] == 2
    conf = m["confidence"]  # margins: +1 x3, -1 x3 (strength 1)
    assert conf["mean_margin"] == pytest.approx(0.0)
    assert conf["median_margin"] == pytest.approx(0.0)
    assert conf["mean_prob_correct"] == pytest.approx((special.expit(1) + special.expit(-1)) / 2)
    assert sorted(metrics.margins(rows_from("sft", spec))) == [-1, -1, -1, 1, 1, 1]


def test_full_answer_block_uses_full_scores():
    rows = []
    for i in range(4):
        rows += make_pair("dpo", f"p{i}", "u", "AB"[i % 2], ("good", "good"), full_picks=("A", "A"))
    m = metrics.model_metrics(rows)
    assert m["accuracy"] == 1.0
    assert m["full_answer"]["accuracy"] == 0.5
    assert m["full_answer"]["first_option_rate"] == 1.0
    assert m["full_answer"]["consistency"] == 0.0
    for r in rows:
        del r["logp_a_full"], r["logp_b_full"]
    assert metrics.model_metrics(rows)["full_answer"] is None


def test_generation_block_counts_invalid_as_wrong():
    rows = make_pair("sft", "p0", "u", "A", parsed=("A", "B"))  # right, right
    rows += make_pair("sft", "p1", "u", "A", parsed=(None, "B"))  # invalid, right
    rows += make_pair("sft", "p2", "u", "B", parsed=("A", None))  # wrong, invalid
    g = metrics.model_metrics(rows)["generation"]
    assert g["valid_rate"] == pytest.approx(4 / 6)
    assert g["accuracy"] == pytest.approx(3 / 6)
    assert g["accuracy_among_valid"] == pytest.approx(3 / 4)
    assert g["consistency"] == pytest.approx(1 / 3)
    assert metrics.model_metrics(make_pair("sft", "p0", "u"))["generation"] is None


def test_missing_order_duplicate_and_bad_swap_are_errors():
    rows = make_pair("sft", "p0", "u") + make_pair("sft", "p1", "u")
    with pytest.raises(ValueError, match=r"pair 'p1'.*missing the 'swapped' order"):
        metrics.model_metrics(rows[:-1])
    with pytest.raises(ValueError, match="duplicate"):
        metrics.model_metrics(rows + rows[:1])
    bad = [dict(r) for r in rows]
    bad[1]["option_a_id"] = "other-movie"
    with pytest.raises(ValueError, match="exchange the two movies"):
        metrics.model_metrics(bad)
    with pytest.raises(ValueError, match="one model"):
        metrics.model_metrics(rows + make_pair("dpo", "p0", "u"))
    with pytest.raises(ValueError, match="lacks field"):
        metrics.model_metrics([{k: v for k, v in r.items() if k != "logp_b"} for r in rows])


def test_per_pair_scores():
    spec = [("p1", "u1", "A", ("good", "good")), ("p2", "u2", "B", ("good", "bad")),
            ("p3", "u2", "A", ("bad", "tie"))]
    scores, users = metrics.per_pair_scores(rows_from("sft", spec))
    assert scores == {"p1": 1.0, "p2": 0.5, "p3": 0.25}  # a tied order counts half
    assert users == {"p1": "u1", "p2": "u2", "p3": "u2"}


def test_records_without_movie_ids_still_measure_consistency():
    rows = rows_from("sft", [("p0", "u", "A", ("good", "good")), ("p1", "u", "B", ("A", "A"))])
    for r in rows:
        del r["option_a_id"], r["option_b_id"]
    m = metrics.model_metrics(rows, n_boot=50)
    assert m["consistency"] == 0.5 and m["accuracy"] == 0.75


def test_position_free_accuracy_cancels_position_bias_before_deciding():
    """A model that says A in both orders, more strongly when A is right: two-order accuracy 0.5, but the
    margin averaged over both orders points at the right movie (position-free accuracy 1)."""
    rows = []
    for i in range(6):
        pair = make_pair("m", f"p{i}", str(i), "A", ("A", "A"))
        pair[0]["logp_b"] = pair[0]["logp_a"] - 3.0  # right in the original order by 3
        pair[1]["logp_b"] = pair[1]["logp_a"] - 1.0  # wrong in the swapped order by 1
        for r in pair:
            r.pop("choice"), r.pop("correct")
        rows += pair
    m = metrics.model_metrics(rows)
    assert m["accuracy"] == 0.5 and m["first_option_rate"] == 1.0
    assert m["position_free_accuracy"] == 1.0
    always_a = metrics.model_metrics(rows_from("a", balanced_spec(6, ("A", "A"))))
    assert always_a["position_free_accuracy"] == 0.5  # equal margins both ways: a tie, half right
