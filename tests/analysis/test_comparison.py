"""The paired comparison and its verdict (dporec.analysis.comparison) on hand-built prediction rows: the
label follows the interval, never the point estimate; ties, identical and opposite models, one big
user, pooled seeds, pairs without user ids; and the sentences that report it."""
import numpy as np
import pytest

from dporec.analysis import comparison, seeds
from dporec.report import numbers, sentences
from tests.analysis.rows import balanced_spec, rows_from


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


@pytest.mark.parametrize("ci,label,status", [
    ((0.001, 0.05), "SUPPORTED", "open"),
    ((0.03, 0.05), "SUPPORTED", "shown"),
    ((0.02, 0.05), "SUPPORTED", "shown"),
    ((-0.01, 0.019), "NOT SUPPORTED", "ruled out"),
    ((0.0, 0.001), "NOT SUPPORTED", "ruled out"),      # +0.0 to +0.1 points: below the margin
    ((-0.05, -0.01), "NOT SUPPORTED", "ruled out"),
    ((-0.01, 0.02), "INCONCLUSIVE", "open"),
    ((-0.111, 0.214), "INCONCLUSIVE", "open"),
])
def test_the_label_follows_the_interval(ci, label, status):
    assert comparison.verdict(ci, 0.02) == label
    assert comparison.margin_status(ci, 0.02) == status


def test_a_position_locked_model_is_not_supported_by_its_point_estimate():
    # DPO always answers "A" (50.0% two-order, never right in both orders); SFT right in both orders on
    # 18 of 40 pairs, wrong in both on the rest (45.0%): +5 points, an interval far across 0.
    sft = rows_from("sft", [(f"p{i}", f"u{i}", "AB"[i % 2], ("good",) * 2 if i < 18 else ("bad",) * 2)
                            for i in range(40)])
    dpo = rows_from("dpo", [(f"p{i}", f"u{i}", "AB"[i % 2], ("A", "A")) for i in range(40)])
    c = comparison.compare(sft, dpo)
    assert (c["a_accuracy"], c["b_accuracy"]) == (0.45, 0.5) and c["difference"] == pytest.approx(0.05)
    lo, hi = c["ci"]
    assert lo < 0 < hi and c["verdict"] == "INCONCLUSIVE" and not c["significant"]
    s = sentences.verdict_sentence(c)
    assert s.startswith("INCONCLUSIVE: DPO 50.0% vs SFT 45.0% (+5.0 points, 95% CI \u2212")
    assert "the interval reaches both 0 and the 2-point margin" in s


def test_issue10_counterexample():
    # The old sign test counted 34 DPO "wins" of half a pair against 18 SFT wins of a whole pair and
    # called DPO significantly better while the estimate favoured SFT.
    sft, dpo = issue10_counterexample()
    c = comparison.compare(sft, dpo)
    assert (c["a_accuracy"], c["b_accuracy"]) == (0.79, 0.785) and c["difference"] == pytest.approx(-0.005)
    assert c["n_pairs"] == 200 and c["n_users"] == 100 and c["clustering"] == "users"
    assert not c["significant"] and c["p_value"] > 0.5
    lo, hi = c["ci"]
    assert lo < c["difference"] < hi and lo < 0 < hi
    assert c["verdict"] == comparison.verdict((lo, hi), 0.02) != "SUPPORTED"
    assert (c["pairs_b_higher"], c["pairs_a_higher"]) == (34, 18)
    assert "McNemar" not in "\n".join(sentences.comparison_lines(c))  # it ignored users: gone


def test_identical_models_and_opposite_position_locked_models():
    rng = np.random.default_rng(1)
    spec = [(f"p{i}", f"u{i % 7}", "AB"[i % 2], tuple(rng.choice(["good", "bad", "A"], 2)))
            for i in range(40)]
    same = comparison.compare(rows_from("sft", spec), rows_from("dpo", spec))
    lo, hi = same["ci"]
    assert same["difference"] == 0 and lo < 0 < hi and same["p_value"] == 1.0
    assert same["decisions_differ"] == 0 and same["pairs_for_margin"] is None
    s = sentences.verdict_sentence(same)
    assert "the two models make the same choice on all 80 decisions" in s and "identically" not in s
    # always-A vs always-B: every pair scores 0.5 for both, yet they never choose the same option
    always_a, always_b = balanced_spec(40, ("A", "A")), balanced_spec(40, ("B", "B"))
    a = comparison.compare(rows_from("sft", always_a), rows_from("dpo", always_b))
    assert a["difference"] == 0 and a["decisions_differ"] == a["decisions"] == 80
    assert "although they choose differently on 80 of 80 decisions" in sentences.verdict_sentence(a)


def test_enough_pairs_rule_out_the_margin():
    # 2,000 pairs, the models differ on one: +0.0 points with a narrow interval below 2 points.
    spec = balanced_spec(2000, ("good", "good"), users=500)
    other = list(spec)
    other[0] = (*spec[0][:3], ("good", "bad"))
    c = comparison.compare(rows_from("sft", spec), rows_from("dpo", other))
    assert c["ci"][1] < 0.02 and c["verdict"] == "NOT SUPPORTED" and c["margin_status"] == "ruled out"
    assert "the whole interval is below the 2-point margin" in sentences.verdict_sentence(c)


def test_a_real_gain_is_supported_and_the_margin_judged_separately():
    rng = np.random.default_rng(2)
    sft_spec, dpo_spec = [], []
    for i in range(600):
        pid, uid, lab = f"p{i}", f"u{i % 200}", "AB"[i % 2]
        s_ok = rng.random() < 0.7
        sft_spec.append((pid, uid, lab, ("good" if s_ok else "bad",) * 2))
        dpo_spec.append((pid, uid, lab, ("good" if s_ok or rng.random() < 0.4 else "bad",) * 2))
    c = comparison.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec))
    assert c["ci"][0] > 0.02 and c["verdict"] == "SUPPORTED" and c["margin_status"] == "shown"
    assert "better by at least the 2-point margin" in sentences.verdict_sentence(c)
    again = comparison.compare(rows_from("sft", sft_spec), rows_from("dpo", dpo_spec))
    assert again == c  # no resampling: the same rows give the same numbers


def test_compare_requires_same_pairs_and_users():
    sft = rows_from("sft", balanced_spec(5, ("good", "good")))
    with pytest.raises(ValueError, match="different test pairs"):
        comparison.compare(sft, rows_from("dpo", balanced_spec(6, ("good", "good"))))
    with pytest.raises(ValueError, match="user_id"):
        comparison.compare(sft, rows_from("dpo", balanced_spec(5, ("good", "good"), users=2)))


def test_test_size_is_for_the_prespecified_margin():
    sft, dpo = issue10_counterexample()
    c = comparison.compare(sft, dpo)
    d = np.array([0.5] * 34 + [-1.0] * 18 + [0.0] * 148)
    assert c["sd_pair_difference"] == pytest.approx(d.std(ddof=1)) and c["design_effect"] >= 1
    from dporec.analysis.resampling import required_pairs
    assert c["pairs_for_margin"] == required_pairs(d.std(ddof=1), 0.02, c["design_effect"])
    s = sentences.verdict_sentence(c)
    need = numbers.about(c["pairs_for_margin"])
    assert f"about {need} test pairs give 80% power for the 2-point margin" in s
    assert "power for a difference this size" not in s  # no post-hoc power


# ---------------------------------------------------------------- seeds and missing user ids

def test_pooling_identical_seeds_changes_nothing_and_the_spread_is_reported():
    rng = np.random.default_rng(9)
    spec_s = [(f"p{i}", f"u{i % 25}", "AB"[i % 2], ("good" if rng.random() < .7 else "bad", "good"))
              for i in range(100)]
    spec_d = [(f"p{i}", f"u{i % 25}", "AB"[i % 2], ("good" if rng.random() < .8 else "bad", "good"))
              for i in range(100)]
    sft, dpo = rows_from("sft", spec_s), rows_from("dpo", spec_d)
    one = comparison.compare(sft, dpo)
    for k in (2, 3):
        pooled = comparison.compare_runs([sft] * k, [dpo] * k)
        assert pooled["n_pairs"] == one["n_pairs"] == 100 and pooled["n_users"] == 25
        assert pooled["p_value"] == one["p_value"] and pooled["ci"] == one["ci"] and pooled["n_runs"] == k
    spread = seeds.seed_spread([0.01, 0.03, 0.02], alpha=0.05)
    assert spread["mean"] == pytest.approx(0.02) and spread["sd"] == pytest.approx(0.01)
    assert spread["ci"][0] < 0.02 < spread["ci"][1]
    assert seeds.seed_spread([0.01, 0.03], alpha=0.05)["ci"] is None  # too few seeds for an interval


def test_pooling_averages_each_pair_over_seeds():
    s1 = rows_from("sft", [("p0", "u0", "A", ("good",) * 2), ("p1", "u1", "A", ("bad",) * 2)])
    s2 = rows_from("sft", [("p0", "u0", "A", ("bad",) * 2), ("p1", "u1", "A", ("bad",) * 2)])
    d = rows_from("dpo", [("p0", "u0", "A", ("good",) * 2), ("p1", "u1", "A", ("good",) * 2)])
    c = comparison.compare_runs([s1, s2], [d, d])
    assert c["n_pairs"] == 2 and c["a_accuracy"] == 0.25 and c["b_accuracy"] == 1.0
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
    c = comparison.compare(sft, dpo)
    assert c["clustering"] == "pairs (no user ids)" and c["n_users"] == 0 and c["n_pairs"] == 200
    text = "\n".join(sentences.comparison_lines(c))
    assert "interval over pairs (no user ids)" in text
    assert "no user ids, so every pair is its own cluster" in text
    by_user = comparison.compare(*issue10_counterexample())
    assert c["design_effect"] != by_user["design_effect"]  # 2 pairs per user: clustering matters


# ---------------------------------------------------------------- wording

def test_verdict_sentence_example():
    c = {"verdict": "INCONCLUSIVE", "b_accuracy": 0.81, "a_accuracy": 0.80, "difference": 0.01,
         "ci": (-0.012, 0.031), "p_value": 0.41, "alpha": 0.05, "margin": 0.02, "margin_status": "open",
         "names": ["SFT", "DPO"], "pairs_b_higher": 60, "pairs_a_higher": 50, "pairs_for_margin": 2941,
         "n_pairs": 1000, "power": 0.8}
    assert sentences.verdict_sentence(c) == (
        "INCONCLUSIVE: DPO 81.0% vs SFT 80.0% (+1.0 points, 95% CI \u22121.2 to +3.1, p = 0.41; the interval "
        "reaches both 0 and the 2-point margin); about 2,900 test pairs give 80% power for the 2-point "
        "margin (this test has 1,000).")
    c.update(p_value=0.0004, difference=0.0204, ci=(0.004, 0.037), verdict="SUPPORTED",
             names=["SFT control", "DPO"])
    s = sentences.verdict_sentence(c)
    assert "(+2.04 points" in s  # one decimal would read "+2.0" next to the margin
    assert "p < 0.001; the whole interval is above 0; whether by the 2-point margin is not settled" in s
    assert "vs SFT control 80.0%" in s


def test_a_small_effect_with_a_narrow_interval_says_the_margin_is_ruled_out():
    """The review's case: +1.0 point, CI +0.9 to +1.2. The label tests superiority, so it is SUPPORTED, but
    the label and its reason say it is by less than the 2-point margin."""
    ci = (0.009, 0.012)
    c = {"verdict": comparison.verdict(ci, 0.02), "margin_status": comparison.margin_status(ci, 0.02),
         "b_accuracy": 0.81, "a_accuracy": 0.80, "difference": 0.0104, "ci": ci, "p_value": 1e-9,
         "alpha": 0.05, "margin": 0.02, "names": ["SFT", "DPO"], "pairs_b_higher": 900, "pairs_a_higher": 0,
         "pairs_for_margin": 400, "n_pairs": 90000, "power": 0.8}
    assert (c["verdict"], c["margin_status"]) == ("SUPPORTED", "ruled out")
    s = sentences.verdict_sentence(c)
    assert s.startswith("SUPPORTED (by less than the 2-point margin): DPO 81.0% vs SFT 80.0%")
    assert ("the whole interval is above 0; better, but by less than the 2-point margin (the whole interval "
            "is below it: the margin is ruled out)") in s
    assert "The label tests superiority" in sentences.HYPOTHESIS
    assert sentences.HYPOTHESIS in "\n".join(sentences.comparison_lines({**c, "n_users": 900, "decisions": 2,
                                                                         "decisions_differ": 1,
                                                                         "interval": {"df": 99.0},
                                                                         "sd_pair_difference": 0.1,
                                                                         "design_effect": 1.0}))


def test_the_control_is_read_together_with_the_main_comparison():
    base = {"margin": 0.02, "margin_status": "open"}
    main, control = {**base, "verdict": "SUPPORTED"}, {**base, "verdict": "INCONCLUSIVE"}
    text = sentences.control_conclusion({"comparison": main, "comparison_control": control})
    assert "DPO beats SFT but not clearly the control, so more training alone may explain its gain" in text
    control["verdict"] = "SUPPORTED"
    text = sentences.control_conclusion({"comparison": main, "comparison_control": control})
    assert "more training alone does not explain its gain" in text
    main["verdict"] = "NOT SUPPORTED"
    assert "no gain for the control to explain" in sentences.control_conclusion(
        {"comparison": main, "comparison_control": control})
    assert sentences.control_conclusion({"comparison": main}) is None


def test_format_p():
    assert numbers.format_p(0.41) == "p = 0.41"
    assert numbers.format_p(0.041234) == "p = 0.041"
    assert numbers.format_p(0.0496) == "p = 0.0496"
    assert numbers.format_p(0.021484375) == "p = 0.021"
    assert numbers.format_p(1.0) == "p = 1.00"
    assert numbers.format_p(1e-5) == "p < 0.001"


def test_exact_ties_on_one_model_do_not_make_identical_models_differ():
    """The review's case: DPO the same as SFT except for exact ties on 5% of decisions, where SFT was right
    half the time. A tie scored 0 made DPO "worse" by 2.5 points; scored 0.5 (as a rule's tie) the
    difference is 0."""
    spec = balanced_spec(200, ("good", "good"), users=100)
    sft = rows_from("sft", [(p, u, lab, ("good", "bad") if i < 20 else picks)
                            for i, (p, u, lab, picks) in enumerate(spec)])
    dpo = rows_from("dpo", [(p, u, lab, ("tie", "bad") if i < 10 else ("good", "tie") if i < 20 else picks)
                            for i, (p, u, lab, picks) in enumerate(spec)])
    # 20 of 400 decisions tie in DPO; SFT is right on 10 of those and wrong on the other 10
    c = comparison.compare(sft, dpo)
    assert c["difference"] == pytest.approx(0.0) and c["ci"][0] < 0 < c["ci"][1]



# --------------------------------------------------------------------------------------------
# Over seeds: the interval about the method, each seed training its own models

def _seed_draw(rng, mu, sigma, k, n, prone):
    """Per-pair DPO - SFT differences of k seeds on the same n single-pair test users: a share `prone` of
    pairs can differ (each seed differs on 80% of them, by 0.5 or 1); seed s's effect is mu + e_s,
    e_s ~ N(0, sigma)."""
    is_prone = rng.random(n) < prone
    d = np.zeros((k, n))
    for s, e in enumerate(rng.normal(0, sigma, k)):
        q = np.clip(0.5 + (mu + e) / (2 * prone * 0.8 * 0.75), 0, 1)
        differ = is_prone & (rng.random(n) < 0.8)
        size = np.where(rng.random(n) < 0.5, 0.5, 1.0)
        d[s] = np.where(differ, size * np.where(rng.random(n) < q, 1, -1), 0)
    return d


SEED_SCENARIOS = {  # name: (method effect, seed sd of the effect, seeds, test pairs, share that can differ)
    "3 seeds, 1,500 pairs, 10% differ, seed sd 1 point": (0.0, 0.01, 3, 1500, 0.125),
    "3 seeds, seed sd 2 points": (0.0, 0.02, 3, 1500, 0.125),
    "3 seeds, seed sd 2 points, effect +2": (0.02, 0.02, 3, 1500, 0.125),
    "2 seeds, seed sd 2 points": (0.0, 0.02, 2, 1500, 0.125),
    "sparse and small: 3 seeds, 300 pairs, 3% differ": (0.005, 0.005, 3, 300, 0.04),
}


@pytest.mark.parametrize("name", list(SEED_SCENARIOS))
def test_the_seeds_interval_covers_the_method_effect(name):
    """The review's design: the pooled interval (models held fixed) covers the method's effect in ~73% of
    simulated experiments at a seed sd of 1 point and ~46% at 2; the method interval at 93% or more."""
    from dporec.analysis import resampling
    mu, sigma, k, n, prone = SEED_SCENARIOS[name]
    rng, reps = np.random.default_rng(k * 100 + n), 600
    method = fixed = wrongly_supported = 0
    for _ in range(reps):
        d = _seed_draw(rng, mu, sigma, k, n, prone)
        pooled = resampling.paired_interval(d.mean(0), np.arange(n))
        m = seeds.method_interval(pooled["center"], pooled["se"], pooled["df"], d.mean(1), 0.05, 0.02)
        method += m["ci"][0] <= mu <= m["ci"][1]
        fixed += pooled["ci"][0] <= mu <= pooled["ci"][1]
        wrongly_supported += mu == 0 and m["verdict"] == "SUPPORTED"
        assert (m["p_value"] < 0.05) == (not m["ci"][0] <= 0 <= m["ci"][1])
    assert method / reps >= 0.93, (name, method / reps)
    assert wrongly_supported / reps <= 0.05
    if sigma >= 0.01 and n == 1500:
        assert fixed / reps < 0.8  # why the headline is not the pooled interval


def test_three_seeds_whose_effects_differ_read_as_a_method_verdict():
    """The review's hand-made case: three seeds at +4, +1 and -2 points on the same pairs. The pooled
    interval about these models is narrow; the headline, about the method, is wide and INCONCLUSIVE."""
    m = seeds.method_interval(center=0.01, se=0.004, df=200, differences=[0.04, 0.01, -0.02], alpha=0.05,
                              margin=0.02)
    assert m["verdict"] == "INCONCLUSIVE" and m["ci"][0] < -0.05 and m["ci"][1] > 0.07
    assert m["interval"]["se_seeds"] == pytest.approx(0.03 / np.sqrt(3))
    assert seeds.method_interval(0.01, 0.004, 200, [0.01], 0.05, 0.02) is None  # one seed: no seed variance
