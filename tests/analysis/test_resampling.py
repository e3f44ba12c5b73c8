"""Inference over users (dporec.analysis.resampling): the paired interval where it usually breaks (mostly
exact zeros, one big user, identical models, few users), its agreement with its p-value, its coverage by
simulation with dense and with sparse disagreement; the cluster bootstrap; design effect and test size."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from dporec.analysis import resampling


def test_three_better_pairs_among_a_hundred_are_not_pinned_at_zero():
    # 100 single-pair users, DPO better on 3 and never worse: the old sign-flip inversion gave
    # "95% CI +0.0 to +6.4, p = 0.24", rejecting -0.000001 but not 0.
    d = np.r_[np.ones(3), np.zeros(97)]
    r = resampling.paired_interval(d, np.arange(100))
    lo, hi = r["ci"]
    assert r["mean"] == 0.03 and lo < 0 < hi and r["p_value"] >= 0.05
    assert lo < -0.005 and hi > 0.06  # room on both sides, not an edge at exactly 0


def test_identical_models_get_an_interval_of_honest_width():
    r = resampling.paired_interval(np.zeros(100), np.arange(100))
    lo, hi = r["ci"]
    assert r["mean"] == 0 and r["p_value"] == 1.0 and lo == pytest.approx(-hi) and 0.01 < hi < 0.05
    wide = resampling.paired_interval(np.zeros(20), np.arange(20))["ci"]
    assert wide[1] > hi  # fewer pairs, less certainty


def test_one_user_with_many_pairs_does_not_decide_alone():
    # 90 pairs of one user all favour DPO, 100 other users tie: a pair-level view would call it
    # certain; a user-level one sees one user.
    d, users = np.r_[np.ones(90), np.zeros(100)], np.r_[np.zeros(90), np.arange(1, 101)]
    by_user = resampling.paired_interval(d, users)
    by_pair = resampling.paired_interval(d, np.arange(190))
    assert by_pair["p_value"] < 1e-6 and by_user["p_value"] > 0.05
    assert by_user["df"] < 5 and by_user["ci"][0] < 0


def test_few_users_all_better():
    for n, significant in ((3, False), (12, True)):
        r = resampling.paired_interval(np.ones(n), np.arange(n))
        assert (r["p_value"] < 0.05) == significant, (n, r)
        assert r["ci"][1] == 1.0  # clipped at the largest possible difference


@pytest.mark.parametrize("users", [6, 40])
def test_p_value_and_interval_agree(users):
    rng = np.random.default_rng(users)
    seen = set()
    for trial in range(200):
        shift = rng.uniform(-0.3, 0.3)
        n = 3 * users
        d = np.clip(np.round(2 * rng.normal(shift, 0.6, size=n)) / 2, -1, 1)
        d[rng.random(n) < rng.uniform(0, 0.95)] = 0  # from dense to mostly exact zeros
        r = resampling.paired_interval(d, np.arange(n) % users)
        lo, hi = r["ci"]
        assert (r["p_value"] < 0.05) == (not lo <= 0 <= hi), (trial, r)
        assert lo != 0 and hi != 0  # never an end pinned at exactly 0
        if r["p_value"] < 0.05:
            assert np.sign(lo) == np.sign(hi) == np.sign(d.mean())
        seen.add(r["p_value"] < 0.05)
    assert seen == {True, False}


def _coverage(draw, truth, reps, seed):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(reps):
        d, users = draw(rng)
        lo, hi = resampling.paired_interval(d, users)["ci"]
        hits += lo <= truth <= hi
    return hits / reps


VALUES = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])


def _single(n, p):
    return lambda rng: (rng.choice(VALUES, size=n, p=p), np.arange(n))


def _clustered(users, per, p):
    """Each user's pairs drawn from a user-specific distribution around p (a random effect)."""
    def draw(rng):
        d = [rng.choice(VALUES, size=per, p=rng.dirichlet(np.asarray(p) * 20 + 1e-3)) for _ in range(users)]
        return np.concatenate(d), np.repeat(np.arange(users), per)
    return draw


DENSE, SPARSE = [.10, .10, .50, .15, .15], [0, .02, .94, .03, .01]
SCENARIOS = {  # name: (draw, distribution of one pair's difference)
    "dense, 100 single-pair users": (_single(100, DENSE), DENSE),
    "dense, 50 users x 3 pairs": (_clustered(50, 3, DENSE), DENSE),
    "sparse: 3% better, 100 single-pair users": (_single(100, [0, 0, .97, 0, .03]), [0, 0, .97, 0, .03]),
    "sparse: 1% better, 1000 single-pair users": (_single(1000, [0, 0, .99, 0, .01]), [0, 0, .99, 0, .01]),
    "sparse: 6% differ, 100 users x 3 pairs": (_clustered(100, 3, SPARSE), SPARSE),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_coverage_is_at_least_94_percent(name):
    draw, p = SCENARIOS[name]
    assert _coverage(draw, float(np.dot(p, VALUES)), reps=1500, seed=7) >= 0.94, name


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


def test_required_pairs_matches_the_known_range():
    # docs/statistics.md: +2 points at ~80% accuracy needs ~1,200-2,900 pairs when the models
    # disagree on 6-15% of pairs. With binary per-pair outcomes the per-pair difference has variance
    # p_d - delta^2.
    sd = lambda p_d, delta: math.sqrt(p_d - delta ** 2)  # noqa: E731
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


# --------------------------------------------------------------------------------------------
# The ranking line: per-user Kendall tau differences, continuous and far narrower than their range

def _tau_draw(users, delta, sd, equal=0.0):
    """Per-user tau-b differences on 8 candidates (28 pairs: a grid of 1/28), a share `equal` of users
    ranked identically by both models (exactly 0), the others spread around delta / (1 - equal)."""
    def draw(rng):
        d = rng.normal(delta / (1 - equal), sd, users)
        d[rng.random(users) < equal] = 0.0
        return np.clip(np.round(d * 28) / 28, -2, 2), np.arange(users)
    return draw


TAU_SCENARIOS = {  # name: (users, true mean difference, sd, share of users with no difference)
    "93 users, no difference": (93, 0.0, 0.12, 0.0),
    "93 users, +0.052, sd 0.07": (93, 0.052, 0.07, 0.0),
    "93 users, +0.052, sd 0.17": (93, 0.052, 0.17, 0.0),
    "sparse: DPO = SFT on half of 93 users": (93, 0.03, 0.12, 0.5),
    "sparse: 95% of 93 users alike": (93, 0.01, 0.1, 0.95),
    "small: 5 users": (5, 0.05, 0.15, 0.0),
    "small and sparse: 10 users, half alike": (10, 0.05, 0.15, 0.5),
    "small and sparse: 20 users, 70% alike": (20, 0.02, 0.1, 0.7),
    "150 users, sd 0.07": (150, 0.02, 0.07, 0.0),
}


def _tau_interval(d, users):
    return resampling.paired_interval(d, users, bound=resampling.observed_bound(d, 2.0))["ci"]


@pytest.mark.parametrize("name", list(TAU_SCENARIOS))
def test_the_ranking_interval_covers_at_the_nominal_level(name):
    users, delta, sd, equal = TAU_SCENARIOS[name]
    draw, rng = _tau_draw(users, delta, sd, equal), np.random.default_rng(11)
    hits, reps = 0, 2000
    for _ in range(reps):
        lo, hi = _tau_interval(*draw(rng))
        hits += lo <= delta <= hi
    assert hits / reps >= 0.935, (name, hits / reps)


def test_the_ranking_interval_can_decide_where_pseudo_users_at_2_could_not():
    """True delta +0.052 tau at 93 users, per-user sd 0.12 (the review's case; margin 0.04): the interval
    says the difference is above 0 most of the time; pseudo-users at +-2 set a half-width floor near 0.06
    alone, so that line was INCONCLUSIVE by construction. Without pseudo-users the interval under-covers
    where few users differ."""
    draw, rng = _tau_draw(93, 0.052, 0.12), np.random.default_rng(5)
    scaled = old = 0
    for _ in range(500):
        d, u = draw(rng)
        scaled += _tau_interval(d, u)[0] > 0
        old += resampling.paired_interval(d, u, bound=2.0)["ci"][0] > 0
    assert scaled / 500 > 0.9 and old / 500 < 0.5
    floor = resampling.paired_interval(np.zeros(93), np.arange(93), bound=2.0)["ci"][1]
    assert floor > 0.05  # wider than the 0.04 margin with no spread in the data at all
    # no difference observed: the metric's whole range bounds the pseudo-users, an honest width
    assert resampling.observed_bound(np.zeros(93), 2.0) == 2.0
    assert resampling.observed_bound([0.1, -0.3, 0.0], 2.0) == 0.3


def test_without_pseudo_users_the_sparse_small_case_under_covers():
    """Why the ranking keeps pseudo-users at all: the plain CR2 interval covers ~90% at 20 users of whom
    70% are ranked alike by both models."""
    draw, rng = _tau_draw(20, 0.02, 0.1, 0.7), np.random.default_rng(11)
    hits = 0
    for _ in range(2000):
        d, _u = draw(rng)
        r = resampling._cr2(d, np.ones(d.size), 0.05)
        hits += r["center"] - r["half"] <= 0.02 <= r["center"] + r["half"]
    assert hits / 2000 < 0.93
