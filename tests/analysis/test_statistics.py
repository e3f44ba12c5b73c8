"""Tests for dporec.stats and dporec.metrics: the paired test tests the difference the verdict prints
(the issue-10 counterexample), p-value and CI agree, exact values for the sign-flip test, McNemar and
test size, bootstrap behaviour, pooling seeds, pairs without user ids, verdict edges, and the
position-bias metrics on hand-built prediction rows."""
import math

import numpy as np
import pytest
from scipy import special
from scipy import stats as sps

from dporec.analysis import comparison, metrics, resampling
from dporec.report import numbers, sentences

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
    assert m["accuracy_ci95"] == (1.0, 1.0)


def test_always_b_model_gets_a_zero_width_interval():
    # An always-"B" model scores exactly 0.5 on every pair: there is no sampling uncertainty in its
    # two-order accuracy. Wilson on the 180 decisions of 90 pairs claimed [42.8, 57.2].
    m = metrics.model_metrics(rows_from("sft", balanced_spec(90, ("B", "B"), users=30)), n_boot=500)
    assert m["accuracy"] == 0.5
    assert m["accuracy_ci95"] == pytest.approx((0.5, 0.5), abs=1e-12)
    lo, hi = m["accuracy_original_order_ci95"]
    assert hi - lo > 0.1  # 0/1 per pair there
    assert m["clustering"] == "users" and m["n_users"] == 30


def test_consistent_but_wrong_model_is_consistent():
    m = metrics.model_metrics(rows_from("sft", balanced_spec(6, ("bad", "bad"))))
    assert (m["accuracy"], m["consistency"]) == (0.0, 1.0)


def test_ties_count_wrong_and_not_first_option():
    spec = balanced_spec(4, ("tie", "tie")) + [("x", "9", "A", ("good", "good"))]
    m = metrics.model_metrics(rows_from("sft", spec))
    assert m["counts"] == {"decisions": 10, "correct": 2, "ties": 8}
    assert m["accuracy"] == pytest.approx(0.2)
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
    assert scores == {"p1": 1.0, "p2": 0.5, "p3": 0.0}
    assert users == {"p1": "u1", "p2": "u2", "p3": "u2"}


# ---------------------------------------------------------------- comparison

def issue10_counterexample():
    """200 pairs from 100 users: DPO right in one order only where SFT is wrong in both (34 pairs),
    SFT right in both where DPO is wrong in both (18), identical on 148 (140 right, 8 wrong)."""
    sft_spec, dpo_spec = [], []
    for i in range(200):
        pid, uid, lab = f"p{i}", f"u{i // 2}", "AB"[i % 2]
        if i < 34:
            s, d = ("bad", "bad"), ("good", "bad")
        elif i < 52:
            s, d = ("good", "good"), ("bad", "bad")
        else:
            s = d = ("good", "good") if i < 192 else ("bad", "bad")
        sft_spec.append((pid, uid, lab, s))
        dpo_spec.append((pid, uid, lab, d))
    return rows_from("sft", sft_spec), rows_from("dpo", dpo_spec)


def test_issue10_counterexample_is_not_significant_and_not_supported():
    # The old sign test counted 34 DPO "wins" of half a pair against 18 SFT wins of a whole pair and
    # called DPO significantly better (p = 0.036) while the estimate favoured SFT.
    sft, dpo = issue10_counterexample()
    c = comparison.compare(sft, dpo, n_boot=2000)
    assert (c["a_accuracy"], c["b_accuracy"]) == (0.79, 0.785)
    assert c["difference"] == pytest.approx(-0.005)
    assert c["n_pairs"] == 200 and c["n_users"] == 100 and c["clustering"] == "users"
    assert c["verdict"] == "NOT SUPPORTED"
    assert c["significant"] is False and c["p_value"] > 0.5
    lo, hi = c["ci95"]
    assert lo < c["difference"] < hi and lo < 0 < hi
    assert (c["pairs_b_higher"], c["pairs_a_higher"]) == (34, 18)
    # The secondary McNemar on right-in-both-orders tests another quantity, and says so.
    assert c["mcnemar_both_orders"] == {"b_only": 0, "a_only": 18, "p": pytest.approx(2 / 2 ** 18)}
    assert sentences.verdict_sentence(c).startswith("NOT SUPPORTED: DPO 78.5% vs SFT 79.0% "
                                                    "(\u22120.5 points, 95% CI \u2212")
    assert "; not significant (paired permutation test over users, p = " in sentences.verdict_sentence(c)
    assert "McNemar" not in sentences.verdict_sentence(c)


def _brute_sign_flip_p(diff, users, delta=0.0):
    """Exact two-sided sign-flip p by enumerating every user sign vector, for a shift delta."""
    import itertools
    groups = sorted(set(users))
    totals = np.array([sum(d - delta for d, u in zip(diff, users) if u == g) for g in groups])
    obs = abs(totals.sum())
    hits = [abs(np.dot(e, totals)) >= obs - 1e-12 for e in itertools.product((1, -1), repeat=len(groups))]
    return np.mean(hits)


def test_sign_flip_exact_p_and_ci_by_brute_force():
    rng = np.random.default_rng(4)
    for _ in range(20):
        n_users = int(rng.integers(3, 9))
        users = [f"u{u}" for u in rng.integers(0, n_users, size=int(rng.integers(6, 25)))]
        diff = rng.choice([-1, -0.5, 0, 0, 0.5, 1], size=len(users)) + (rng.random() < .5) * 0.5
        diff = np.clip(diff, -1, 1)
        t = resampling.sign_flip_test(diff, users)
        assert t["exact"]
        assert t["p_value"] == pytest.approx(_brute_sign_flip_p(diff, users), abs=1e-12)
        lo, hi = t["ci95"]
        # The CI is the set of shifts the same test does not reject: inside just within, outside just beyond.
        for edge, step in ((lo, -1e-6), (hi, 1e-6)):
            if -1 < edge < 1:
                assert _brute_sign_flip_p(diff, users, edge - step) >= 0.05
                assert _brute_sign_flip_p(diff, users, edge + step) < 0.05


@pytest.mark.parametrize("n_users", [6, 40])  # exact enumeration and random sign vectors
def test_p_value_and_ci_agree(n_users):
    # Whatever the data, p < alpha exactly when the CI excludes 0, and a significant result points
    # the way the estimate does.
    rng = np.random.default_rng(n_users)
    seen = set()
    for trial in range(60):
        shift = rng.uniform(-0.4, 0.4)
        users = [f"u{i % n_users}" for i in range(3 * n_users)]
        diff = np.clip(np.round(2 * (rng.normal(shift, 0.6, size=len(users)))) / 2, -1, 1)
        t = resampling.sign_flip_test(diff, users, n_perm=400, seed=trial)
        lo, hi = t["ci95"]
        assert lo <= diff.mean() <= hi
        assert (t["p_value"] < 0.05) == (not lo <= 0 <= hi), (trial, t, diff.mean())
        if t["p_value"] < 0.05:
            assert np.sign(lo) == np.sign(hi) == np.sign(diff.mean())
        seen.add(t["p_value"] < 0.05)
    assert seen == {True, False}  # both outcomes were exercised


def test_mcnemar_helper_on_2x2():
    # 2x2 table [[a, b], [c, d]]: only the off-diagonal b, c matter
    assert resampling.mcnemar_exact_p(1, 9) == pytest.approx(0.021484375)
    assert resampling.mcnemar_exact_p(5, 5) == pytest.approx(1.0)
    assert resampling.mcnemar_exact_p(0, 0) == 1.0
    assert resampling.mcnemar_exact_p(12, 3) == pytest.approx(sps.binomtest(12, 15).pvalue)


def test_identical_models_give_degenerate_ci():
    rng = np.random.default_rng(1)
    spec = [(f"p{i}", f"u{i % 7}", "AB"[i % 2], tuple(rng.choice(["good", "bad", "A"], 2)))
            for i in range(40)]
    c = comparison.compare(rows_from("sft", spec), rows_from("dpo", spec), n_boot=500)
    assert c["difference"] == 0 and c["ci95"] == (0.0, 0.0)
    assert c["p_value"] == 1.0 and c["mcnemar_both_orders"]["p"] == 1.0 and c["min_pairs_for_power80"] is None
    assert c["verdict"] == "NOT SUPPORTED"
    assert "identically" in sentences.verdict_sentence(c)


def test_compare_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(2)
    sft_spec, dpo_spec = [], []
    for i in range(120):
        pid, uid, lab = f"p{i}", f"u{i % 30}", "AB"[i % 2]
        sft_spec.append((pid, uid, lab, ("good" if rng.random() < .7 else "bad",) * 2))
        dpo_spec.append((pid, uid, lab, ("good" if rng.random() < .8 else "bad",) * 2))
    a = comparison.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec), n_boot=1000, seed=5)
    b = comparison.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec), n_boot=1000, seed=5)
    assert a == b
    lo, hi = a["ci95"]
    assert lo < a["difference"] < hi
    assert a["n_pairs"] == 120 and a["n_users"] == 30
    assert a["b_accuracy"] - a["a_accuracy"] == pytest.approx(a["difference"])


def test_cluster_bootstrap_coverage():
    # Per-pair differences with a user random effect; the true mean is 0.05.
    rng = np.random.default_rng(3)
    hits = pair_hits = 0
    for _ in range(100):
        users = np.repeat(np.arange(40), 5)
        effect = rng.normal(0, 0.3, 40)[users]
        values = 0.05 + effect + rng.normal(0, 0.3, users.size)
        lo, hi = resampling.cluster_bootstrap_ci(values, users, n_boot=400, seed=int(rng.integers(1e9)))
        hits += lo <= 0.05 <= hi
        lo, hi = resampling.cluster_bootstrap_ci(values, np.arange(users.size), n_boot=400, seed=1)
        pair_hits += lo <= 0.05 <= hi
    assert hits >= 85  # nominal 95
    assert pair_hits < hits - 5  # ignoring the user clustering under-covers (~75% here)


def test_bootstrap_resamples_users_not_pairs():
    # A single user: resampling users always redraws the same pairs -> zero width.
    values = np.array([1.0, 0.0, -1.0, 0.5, 0.0])
    assert resampling.cluster_bootstrap_ci(values, ["u"] * 5, n_boot=200) == pytest.approx((0.1, 0.1),
                                                                                           abs=1e-15)
    assert np.ptp(resampling.cluster_bootstrap_ci(values, range(5), n_boot=200)) > 0
    # One heavy user whose 40 pairs all favour DPO, 40 light users with one concordant pair each:
    # the user bootstrap must be wider than a pair bootstrap would be.
    sft_spec, dpo_spec = [], []
    for i in range(80):
        pid, uid, lab = f"p{i}", ("heavy" if i < 40 else f"u{i}"), "AB"[i % 2]
        sft_spec.append((pid, uid, lab, ("bad", "bad") if i < 40 else ("good", "good")))
        dpo_spec.append((pid, uid, lab, ("good", "good")))
    c = comparison.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec), n_boot=1000)
    diffs = np.array([1.0] * 40 + [0.0] * 40)
    pair_ci = resampling.cluster_bootstrap_ci(diffs, [f"p{i}" for i in range(80)], n_boot=1000)
    assert c["ci95"][1] - c["ci95"][0] > 3 * (pair_ci[1] - pair_ci[0])


def test_compare_requires_same_pairs_and_users():
    sft = rows_from("sft", balanced_spec(5, ("good", "good")))
    dpo = rows_from("dpo", balanced_spec(6, ("good", "good")))
    with pytest.raises(ValueError, match="different test pairs"):
        comparison.compare(sft, dpo)
    dpo = rows_from("dpo", balanced_spec(5, ("good", "good"), users=2))
    with pytest.raises(ValueError, match="user_id"):
        comparison.compare(sft, dpo)


def test_required_pairs_matches_the_known_range():
    # README "Reading the verdict": +2 points at ~80% accuracy needs ~1,200-2,900 pairs when the models
    # disagree on 6-15% of pairs. With binary per-pair outcomes the per-pair difference has variance
    # p_d - delta^2.
    sd = lambda p_d, delta: math.sqrt(p_d - delta ** 2)
    assert 1150 <= resampling.required_pairs(sd(0.06, 0.02), 0.02) <= 1200
    assert 2900 <= resampling.required_pairs(sd(0.15, 0.02), 0.02) <= 2960
    assert resampling.required_pairs(0.3, -0.02) == resampling.required_pairs(0.3, 0.02)
    assert resampling.required_pairs(0.3, 0.0) is None and resampling.required_pairs(0.0, 0.02) is None
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert resampling.required_pairs(0.4, 0.05, design_effect=1.7) == math.ceil(z * z * 0.16 * 1.7 / 0.0025)


def test_design_effect():
    rng = np.random.default_rng(7)
    values = rng.normal(size=400)
    assert resampling.design_effect(values, range(400)) == pytest.approx(1.0, abs=1e-9)  # one pair per user
    # Every user's 4 pairs identical: a user is one observation counted 4 times -> effect ~4.
    same = np.repeat(rng.normal(size=100), 4)
    assert resampling.design_effect(same, np.repeat(np.arange(100), 4)) == pytest.approx(4.0, rel=0.05)
    assert resampling.design_effect(same, ["u"] * 400) == 1.0  # one user: cannot be estimated


def test_compare_reports_test_size_with_design_effect():
    sft, dpo = issue10_counterexample()
    c = comparison.compare(sft, dpo, n_boot=200)
    d = np.array([0.5] * 34 + [-1.0] * 18 + [0.0] * 148)
    assert c["sd_pair_difference"] == pytest.approx(d.std(ddof=1))
    assert c["design_effect"] >= 1
    assert c["min_pairs_for_2_points"] == resampling.required_pairs(d.std(ddof=1), 0.02, c["design_effect"])
    assert c["min_pairs_for_power80"] == resampling.required_pairs(d.std(ddof=1), -0.005, c["design_effect"])


def test_power_none_when_differences_average_zero():
    sft = rows_from("sft", [("p0", "u", "A", ("good",) * 2), ("p1", "u", "B", ("bad",) * 2)])
    dpo = rows_from("dpo", [("p0", "u", "A", ("bad",) * 2), ("p1", "u", "B", ("good",) * 2)])
    c = comparison.compare(sft, dpo, n_boot=100)
    assert c["min_pairs_for_power80"] is None and c["min_pairs_for_2_points"] is not None
    assert "average exactly 0" in sentences.verdict_sentence(c)


# ---------------------------------------------------------------- seeds and missing user ids

def test_pooling_identical_seeds_changes_nothing():
    # seeds [1, 1]: the same predictions twice carry no new information: same n and same p.
    rng = np.random.default_rng(9)
    spec_s = [(f"p{i}", f"u{i % 25}", "AB"[i % 2], ("good" if rng.random() < .7 else "bad", "good"))
              for i in range(100)]
    spec_d = [(f"p{i}", f"u{i % 25}", "AB"[i % 2], ("good" if rng.random() < .8 else "bad", "good"))
              for i in range(100)]
    sft, dpo = rows_from("sft", spec_s), rows_from("dpo", spec_d)
    one = comparison.compare(sft, dpo, n_boot=500)
    for k in (2, 3):
        pooled = comparison.compare_runs([sft] * k, [dpo] * k, n_boot=500)
        assert pooled["n_pairs"] == one["n_pairs"] == 100 and pooled["n_users"] == 25
        assert pooled["p_value"] == one["p_value"] and pooled["ci95"] == one["ci95"]
        assert pooled["difference"] == one["difference"] and pooled["n_runs"] == k
    assert one["p_value"] < 0.2  # a p-value that pooling copies could have shrunk


def test_pooling_averages_each_pair_over_seeds():
    s1 = rows_from("sft", [("p0", "u0", "A", ("good",) * 2), ("p1", "u1", "A", ("bad",) * 2)])
    s2 = rows_from("sft", [("p0", "u0", "A", ("bad",) * 2), ("p1", "u1", "A", ("bad",) * 2)])
    d = rows_from("dpo", [("p0", "u0", "A", ("good",) * 2), ("p1", "u1", "A", ("good",) * 2)])
    c = comparison.compare_runs([s1, s2], [d, d], n_boot=100)
    assert c["n_pairs"] == 2 and c["a_accuracy"] == 0.25 and c["b_accuracy"] == 1.0
    assert c["mcnemar_both_orders"] is None  # right-in-both-orders is not defined for an average
    with pytest.raises(ValueError, match="other test pairs"):
        comparison.compare_runs([s1, s1[:2]], [d, d])


@pytest.mark.parametrize("missing", ["absent", "empty", "pair_id"])
def test_records_without_user_ids_cluster_by_pair(missing):
    sft, dpo = issue10_counterexample()
    for r in sft + dpo:
        if missing == "absent":
            del r["user_id"]
        else:
            r["user_id"] = "" if missing == "empty" else r["pair_id"]  # the scorer's stand-in
    c = comparison.compare(sft, dpo, n_boot=300)
    assert c["clustering"] == "pairs (no user ids)" and c["n_users"] == 0 and c["n_pairs"] == 200
    assert c["unit"] == "pairs" and "flipping whole pairs" in sentences.test_description(c)
    assert "percentile bootstrap over pairs (no user ids)" in "\n".join(sentences.comparison_lines(c))
    assert "paired permutation test over pairs, no user ids" in sentences.verdict_sentence(c)
    m = metrics.model_metrics(sft, n_boot=100)
    assert m["clustering"] == "pairs (no user ids)" and "bootstrap over pairs (no user ids)" in m["interval"]
    # Pairs as clusters and users as clusters give different answers here (2 pairs per user).
    by_user = comparison.compare(*issue10_counterexample(), n_boot=300)
    assert c["design_effect"] != by_user["design_effect"]


def test_records_without_movie_ids_still_measure_consistency():
    rows = rows_from("sft", [("p0", "u", "A", ("good", "good")), ("p1", "u", "B", ("A", "A"))])
    for r in rows:
        del r["option_a_id"], r["option_b_id"]
    m = metrics.model_metrics(rows, n_boot=50)
    assert m["consistency"] == 0.5 and m["accuracy"] == 0.75


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
    assert comparison.verdict(sft, dpo) == expected


def test_verdict_sentence_example():
    c = {"verdict": "PARTIALLY SUPPORTED", "b_accuracy": 0.81, "a_accuracy": 0.80, "difference": 0.01,
         "ci95": (-0.012, 0.031), "p_value": 0.41, "significant": False, "alpha": 0.05,
         "pairs_b_higher": 60, "pairs_a_higher": 50, "min_pairs_for_power80": 2941, "n_pairs": 1000}
    assert sentences.verdict_sentence(c) == (
        "PARTIALLY SUPPORTED: DPO 81.0% vs SFT 80.0% (+1.0 points, 95% CI \u22121.2 to +3.1); "
        "not significant (paired permutation test over users, p = 0.41); about 2,900 test pairs would be "
        "needed to detect a difference this size with 80% power (this test has 1,000).")
    c.update(min_pairs_for_power80=800, p_value=0.0004, significant=True, difference=0.0204,
             ci95=(0.004, 0.037), verdict="SUPPORTED", names=["SFT control", "DPO"])
    s = sentences.verdict_sentence(c)
    assert "(+2.04 points" in s  # one decimal would read "+2.0" next to SUPPORTED
    assert "; significant (paired permutation test over users, p < 0.001)" in s and "not significant" not in s
    assert "the 1,000 test pairs give at least 80% power" in s
    assert "vs SFT control 80.0%" in s


def test_format_p():
    assert numbers.format_p(0.41) == "p = 0.41"
    assert numbers.format_p(0.041234) == "p = 0.041"
    assert numbers.format_p(0.0496) == "p = 0.0496"
    assert numbers.format_p(0.021484375) == "p = 0.021"
    assert numbers.format_p(1.0) == "p = 1.00"
    assert numbers.format_p(1e-5) == "p < 0.001"


def test_too_few_users_can_never_be_significant_and_the_sentence_says_so():
    # 5 users: the two all-equal sign vectors alone give p >= 2/32 > 0.05, whatever the data.
    sft = rows_from("sft", [(f"p{i}", f"u{i}", "A", ("bad",) * 2) for i in range(5)])
    dpo = rows_from("dpo", [(f"p{i}", f"u{i}", "A", ("good",) * 2) for i in range(5)])
    c = comparison.compare(sft, dpo, n_boot=200)
    assert c["difference"] == 1.0 and c["p_value"] == pytest.approx(2 / 32) and not c["significant"]
    assert c["min_attainable_p"] == pytest.approx(2 / 32) and c["ci95"][0] <= 0
    assert "p = 0.062; 5 users cannot give p < 0.05)" in sentences.verdict_sentence(c)
    six = comparison.compare(sft + rows_from("sft", [("p5", "u5", "A", ("bad",) * 2)]),
                        dpo + rows_from("dpo", [("p5", "u5", "A", ("good",) * 2)]), n_boot=200)
    assert six["significant"] and six["p_value"] == pytest.approx(2 / 64) and six["ci95"][0] > 0
    assert "cannot give" not in sentences.verdict_sentence(six)
