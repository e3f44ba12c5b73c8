"""Tests for dporec.stats: known values for Wilson/McNemar/power, bootstrap behaviour, verdict edges,
and the position-bias metrics on hand-built prediction rows."""
import math

import numpy as np
import pytest
from scipy import special
from scipy import stats as sps

from dporec import stats

OTHER = {"A": "B", "B": "A"}


def make_pair(model, pair_id, user_id, label="A", picks=("good", "good"), strength=1.0,
              full_picks=None, parsed=None):
    """Two prediction rows (original, swapped) for one test pair.

    label: correct letter in the ORIGINAL order (the swapped order has the other letter).
    picks: what the model chooses in (original, swapped): "good"/"bad" (by movie), "A"/"B" (by
    position) or "tie". strength: log-prob gap between the chosen and the other answer.
    full_picks: same for the full-answer scores (defaults to picks). parsed: optional pair of
    generation-mode letters (or None) per order.
    """
    good, bad = f"{pair_id}-good", f"{pair_id}-bad"
    rows = []
    for i, order in enumerate(("original", "swapped")):
        lab = label if order == "original" else OTHER[label]
        ids = {lab: good, OTHER[lab]: bad}
        row = {"model": model, "pair_id": pair_id, "user_id": user_id, "order": order, "label": lab,
               "option_a_id": ids["A"], "option_b_id": ids["B"]}
        for suffix, pick in (("", picks[i]), ("_full", (full_picks or picks)[i])):
            if pick == "good":
                pick = lab
            elif pick == "bad":
                pick = OTHER[lab]
            base = -2.0 if suffix == "" else -20.0
            la = lb = base
            if pick == "A":
                lb = base - strength
            elif pick == "B":
                la = base - strength
            row["logp_a" + suffix], row["logp_b" + suffix] = la, lb
            row["choice" + suffix] = pick
            row["correct" + suffix] = pick == lab
        if parsed is not None:
            row["parsed"] = parsed[i]
        rows.append(row)
    return rows


def rows_from(model, spec):
    """spec: list of (pair_id, user_id, label, picks)."""
    out = []
    for pid, uid, label, picks in spec:
        out += make_pair(model, pid, uid, label, picks)
    return out


def balanced_spec(n, picks, users=None):
    return [(f"p{i}", str(i % users if users else i), "AB"[i % 2], picks) for i in range(n)]


# ---------------------------------------------------------------- Wilson

def test_wilson_textbook_value():
    lo, hi = stats.wilson_ci(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4)
    assert hi == pytest.approx(0.3662, abs=1e-4)


@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (37, 120), (800, 1000)])
def test_wilson_matches_scipy(k, n):
    ref = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert stats.wilson_ci(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_wilson_bounds_and_errors():
    assert stats.wilson_ci(0, 5)[0] == 0.0
    assert stats.wilson_ci(5, 5)[1] == 1.0
    assert stats.wilson_ci(5, 10, alpha=0.01)[0] < stats.wilson_ci(5, 10, alpha=0.05)[0]
    with pytest.raises(ValueError):
        stats.wilson_ci(0, 0)
    with pytest.raises(ValueError):
        stats.wilson_ci(11, 10)


# ---------------------------------------------------------------- per-model metrics

def test_always_a_on_balanced_pairs():
    m = stats.model_metrics(rows_from("sft", balanced_spec(10, ("A", "A"))))
    assert m["n_pairs"] == 10
    assert m["accuracy"] == 0.5
    assert m["first_option_rate"] == 1.0
    assert m["consistency"] == 0.0
    assert m["accuracy_both_orders"] == 0.0
    assert m["accuracy_original_order"] == 0.5 and m["accuracy_swapped_order"] == 0.5


def test_perfect_model():
    m = stats.model_metrics(rows_from("dpo", balanced_spec(10, ("good", "good"))))
    assert (m["accuracy"], m["first_option_rate"], m["consistency"]) == (1.0, 0.5, 1.0)
    assert m["accuracy_both_orders"] == 1.0
    assert m["counts"] == {"decisions": 20, "correct": 20, "ties": 0}
    assert m["accuracy_ci95"] == stats.wilson_ci(20, 20)


def test_consistent_but_wrong_model_is_consistent():
    m = stats.model_metrics(rows_from("sft", balanced_spec(6, ("bad", "bad"))))
    assert (m["accuracy"], m["consistency"]) == (0.0, 1.0)


def test_ties_count_wrong_and_not_first_option():
    spec = balanced_spec(4, ("tie", "tie")) + [("x", "9", "A", ("good", "good"))]
    m = stats.model_metrics(rows_from("sft", spec))
    assert m["counts"] == {"decisions": 10, "correct": 2, "ties": 8}
    assert m["accuracy"] == pytest.approx(0.2)
    assert m["first_option_rate"] == pytest.approx(0.1)  # only the real pair's "A" decision
    assert m["consistency"] == pytest.approx(0.2)


def test_tie_stored_as_a_letter_is_rejected():
    rows = make_pair("sft", "p0", "u", "A", ("tie", "good"))
    rows[0]["choice"] = "A"  # a scorer that breaks ties towards A would inflate first-option rate
    with pytest.raises(ValueError, match="tie"):
        stats.model_metrics(rows)


def test_mixed_orders_and_confidence():
    # pair 1 right in both orders, pair 2 right only in original, pair 3 wrong in both
    spec = [("p1", "u1", "A", ("good", "good")), ("p2", "u1", "B", ("good", "bad")),
            ("p3", "u2", "A", ("bad", "bad"))]
    m = stats.model_metrics(rows_from("sft", spec))
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
    assert sorted(stats.margins(rows_from("sft", spec))) == [-1, -1, -1, 1, 1, 1]


def test_full_answer_block_uses_full_scores():
    rows = []
    for i in range(4):
        rows += make_pair("dpo", f"p{i}", "u", "AB"[i % 2], ("good", "good"), full_picks=("A", "A"))
    m = stats.model_metrics(rows)
    assert m["accuracy"] == 1.0
    assert m["full_answer"]["accuracy"] == 0.5
    assert m["full_answer"]["first_option_rate"] == 1.0
    assert m["full_answer"]["consistency"] == 0.0
    for r in rows:
        del r["logp_a_full"], r["logp_b_full"]
    assert stats.model_metrics(rows)["full_answer"] is None


def test_generation_block_counts_invalid_as_wrong():
    rows = make_pair("sft", "p0", "u", "A", parsed=("A", "B"))  # right, right
    rows += make_pair("sft", "p1", "u", "A", parsed=(None, "B"))  # invalid, right
    rows += make_pair("sft", "p2", "u", "B", parsed=("A", None))  # wrong, invalid
    g = stats.model_metrics(rows)["generation"]
    assert g["valid_rate"] == pytest.approx(4 / 6)
    assert g["accuracy"] == pytest.approx(3 / 6)
    assert g["accuracy_among_valid"] == pytest.approx(3 / 4)
    assert g["consistency"] == pytest.approx(1 / 3)
    assert stats.model_metrics(make_pair("sft", "p0", "u"))["generation"] is None


def test_missing_order_duplicate_and_bad_swap_are_errors():
    rows = make_pair("sft", "p0", "u") + make_pair("sft", "p1", "u")
    with pytest.raises(ValueError, match=r"pair 'p1'.*missing the 'swapped' order"):
        stats.model_metrics(rows[:-1])
    with pytest.raises(ValueError, match="duplicate"):
        stats.model_metrics(rows + rows[:1])
    bad = [dict(r) for r in rows]
    bad[1]["option_a_id"] = "other-movie"
    with pytest.raises(ValueError, match="exchange the two movies"):
        stats.model_metrics(bad)
    with pytest.raises(ValueError, match="one model"):
        stats.model_metrics(rows + make_pair("dpo", "p0", "u"))
    with pytest.raises(ValueError, match="lacks field"):
        stats.model_metrics([{k: v for k, v in r.items() if k != "logp_b"} for r in rows])


def test_per_pair_scores():
    spec = [("p1", "u1", "A", ("good", "good")), ("p2", "u2", "B", ("good", "bad")),
            ("p3", "u2", "A", ("bad", "tie"))]
    scores, users = stats.per_pair_scores(rows_from("sft", spec))
    assert scores == {"p1": 1.0, "p2": 0.5, "p3": 0.0}
    assert users == {"p1": "u1", "p2": "u2", "p3": "u2"}


# ---------------------------------------------------------------- comparison

def test_mcnemar_hand_computed_b1_c9():
    # 1 pair DPO-only right, 9 pairs SFT-only right, 20 concordant pairs (binary per-pair outcomes)
    sft_spec, dpo_spec = [], []
    for i in range(30):
        pid, uid, lab = f"p{i}", f"u{i}", "AB"[i % 2]
        s, d = ("good", "good"), ("good", "good")
        if i == 0:
            s = ("bad", "bad")
        elif i <= 9:
            d = ("bad", "bad")
        elif i >= 25:
            s = d = ("bad", "bad")
        sft_spec.append((pid, uid, lab, s))
        dpo_spec.append((pid, uid, lab, d))
    c = stats.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec), n_boot=300)
    assert c["n_discordant"] == {"dpo_better": 1, "sft_better": 9}
    hand = 2 * (math.comb(10, 0) + math.comb(10, 1)) / 2 ** 10
    assert hand == 0.021484375
    assert c["mcnemar_p"] == pytest.approx(hand, abs=1e-12)
    assert c["mcnemar_p"] == pytest.approx(sps.binomtest(1, 10, 0.5).pvalue)
    assert c["significant"] is True
    assert c["difference"] == pytest.approx((16 - 24) / 30)
    assert c["verdict"] == "NOT SUPPORTED"


def test_mcnemar_helper_on_2x2():
    # 2x2 table [[a, b], [c, d]]: only the off-diagonal b, c matter
    assert stats.mcnemar_exact_p(1, 9) == pytest.approx(0.021484375)
    assert stats.mcnemar_exact_p(5, 5) == pytest.approx(1.0)
    assert stats.mcnemar_exact_p(0, 0) == 1.0
    assert stats.mcnemar_exact_p(12, 3) == pytest.approx(sps.binomtest(12, 15).pvalue)


def test_identical_models_give_degenerate_ci():
    rng = np.random.default_rng(1)
    spec = [(f"p{i}", f"u{i % 7}", "AB"[i % 2], tuple(rng.choice(["good", "bad", "A"], 2)))
            for i in range(40)]
    c = stats.compare(rows_from("sft", spec), rows_from("dpo", spec), n_boot=500)
    assert c["difference"] == 0 and c["ci95"] == (0.0, 0.0)
    assert c["mcnemar_p"] == 1.0 and c["min_pairs_for_power80"] is None
    assert c["verdict"] == "NOT SUPPORTED"
    assert "identically" in c["sentence"]


def test_compare_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(2)
    sft_spec, dpo_spec = [], []
    for i in range(120):
        pid, uid, lab = f"p{i}", f"u{i % 30}", "AB"[i % 2]
        sft_spec.append((pid, uid, lab, ("good" if rng.random() < .7 else "bad",) * 2))
        dpo_spec.append((pid, uid, lab, ("good" if rng.random() < .8 else "bad",) * 2))
    a = stats.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec), n_boot=1000, seed=5)
    b = stats.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec), n_boot=1000, seed=5)
    assert a == b
    lo, hi = a["ci95"]
    assert lo < a["difference"] < hi
    assert a["n_pairs"] == 120 and a["n_users"] == 30
    assert a["dpo_accuracy"] - a["sft_accuracy"] == pytest.approx(a["difference"])


def test_cluster_bootstrap_coverage():
    # Per-pair differences with a user random effect; the true mean is 0.05.
    rng = np.random.default_rng(3)
    hits = pair_hits = 0
    for _ in range(100):
        users = np.repeat(np.arange(40), 5)
        effect = rng.normal(0, 0.3, 40)[users]
        values = 0.05 + effect + rng.normal(0, 0.3, users.size)
        lo, hi = stats.cluster_bootstrap_ci(values, users, n_boot=400, seed=int(rng.integers(1e9)))
        hits += lo <= 0.05 <= hi
        lo, hi = stats.cluster_bootstrap_ci(values, np.arange(users.size), n_boot=400, seed=1)
        pair_hits += lo <= 0.05 <= hi
    assert hits >= 85  # nominal 95
    assert pair_hits < hits - 5  # ignoring the user clustering under-covers (~75% here)


def test_bootstrap_resamples_users_not_pairs():
    # A single user: resampling users always redraws the same pairs -> zero width.
    values = np.array([1.0, 0.0, -1.0, 0.5, 0.0])
    assert stats.cluster_bootstrap_ci(values, ["u"] * 5, n_boot=200) == pytest.approx((0.1, 0.1), abs=1e-15)
    assert np.ptp(stats.cluster_bootstrap_ci(values, range(5), n_boot=200)) > 0
    # One heavy user whose 40 pairs all favour DPO, 40 light users with one concordant pair each:
    # the user bootstrap must be wider than a pair bootstrap would be.
    sft_spec, dpo_spec = [], []
    for i in range(80):
        pid, uid, lab = f"p{i}", ("heavy" if i < 40 else f"u{i}"), "AB"[i % 2]
        sft_spec.append((pid, uid, lab, ("bad", "bad") if i < 40 else ("good", "good")))
        dpo_spec.append((pid, uid, lab, ("good", "good")))
    c = stats.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec), n_boot=1000)
    diffs = np.array([1.0] * 40 + [0.0] * 40)
    pair_ci = stats.cluster_bootstrap_ci(diffs, [f"p{i}" for i in range(80)], n_boot=1000)
    assert c["ci95"][1] - c["ci95"][0] > 3 * (pair_ci[1] - pair_ci[0])


def test_compare_requires_same_pairs_and_users():
    sft = rows_from("sft", balanced_spec(5, ("good", "good")))
    dpo = rows_from("dpo", balanced_spec(6, ("good", "good")))
    with pytest.raises(ValueError, match="different test pairs"):
        stats.compare(sft, dpo)
    dpo = rows_from("dpo", balanced_spec(5, ("good", "good"), users=2))
    with pytest.raises(ValueError, match="user_id"):
        stats.compare(sft, dpo)


def test_power_matches_notes_range():
    # NOTES: +2 points at ~80% accuracy needs ~1,200-2,900 pairs for 6-15% discordance.
    assert 1150 <= stats.required_pairs_mcnemar(0.06, 0.02) <= 1200
    assert 2900 <= stats.required_pairs_mcnemar(0.15, 0.02) <= 2960
    assert stats.required_pairs_mcnemar(0.15, -0.02) == stats.required_pairs_mcnemar(0.15, 0.02)
    assert stats.required_pairs_mcnemar(0.1, 0.0) is None
    # Connor's formula by hand for p_d=0.1, delta=0.05
    z1, z2 = sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    assert stats.required_pairs_mcnemar(0.1, 0.05) == math.ceil(
        (z1 * math.sqrt(0.1) + z2 * math.sqrt(0.1 - 0.0025)) ** 2 / 0.0025)


def test_power_none_when_wins_balanced():
    sft = rows_from("sft", [("p0", "u", "A", ("good",) * 2), ("p1", "u", "B", ("bad",) * 2)])
    dpo = rows_from("dpo", [("p0", "u", "A", ("bad",) * 2), ("p1", "u", "B", ("good",) * 2)])
    c = stats.compare(sft, dpo, n_boot=100)
    assert c["min_pairs_for_power80"] is None and c["discordant_fraction"] == 1.0
    assert "equally many" in c["sentence"]


# ---------------------------------------------------------------- verdict

@pytest.mark.parametrize("sft,dpo,expected", [
    (0.80, 0.82, "PARTIALLY SUPPORTED"),       # exactly 2 points despite float error
    (0.70, 0.72, "PARTIALLY SUPPORTED"),
    (160 / 200, 164 / 200, "PARTIALLY SUPPORTED"),
    (0.80, 0.8201, "SUPPORTED"),
    (0.80, 0.85, "SUPPORTED"),
    (0.80, 0.8001, "PARTIALLY SUPPORTED"),
    (0.80, 0.80, "NOT SUPPORTED"),
    (0.80, 0.79, "NOT SUPPORTED"),
    (0.1 + 0.2, 0.3, "NOT SUPPORTED"),         # 0.30000000000000004 vs 0.3: no difference
])
def test_verdict_edges(sft, dpo, expected):
    assert stats.verdict(sft, dpo) == expected


def test_verdict_sentence_example():
    c = {"verdict": "PARTIALLY SUPPORTED", "dpo_accuracy": 0.81, "sft_accuracy": 0.80, "difference": 0.01,
         "ci95": (-0.012, 0.031), "mcnemar_p": 0.41, "significant": False, "alpha": 0.05,
         "n_discordant": {"dpo_better": 60, "sft_better": 50}, "min_pairs_for_power80": 2941, "n_pairs": 1000}
    assert stats.verdict_sentence(c) == (
        "PARTIALLY SUPPORTED: DPO 81.0% vs SFT 80.0% (+1.0 points, 95% CI \u22121.2 to +3.1); "
        "not significant (McNemar p = 0.41); about 2,900 test pairs would be needed to detect a "
        "difference this size with 80% power (this test has 1,000).")
    c.update(min_pairs_for_power80=800, mcnemar_p=0.0004, significant=True, difference=0.0204,
             verdict="SUPPORTED")
    s = stats.verdict_sentence(c)
    assert "(+2.04 points" in s  # one decimal would read "+2.0" next to SUPPORTED
    assert "significant (McNemar p < 0.001)" in s and "not significant" not in s
    assert "the 1,000 test pairs give at least 80% power" in s


def test_format_p():
    assert stats.format_p(0.41) == "p = 0.41"
    assert stats.format_p(0.041234) == "p = 0.041"
    assert stats.format_p(0.0496) == "p = 0.0496"
    assert stats.format_p(0.021484375) == "p = 0.021"
    assert stats.format_p(1.0) == "p = 1.00"
    assert stats.format_p(1e-5) == "p < 0.001"
