"""Ranking adherence (dporec/analysis/rank_metrics.py, dporec/evaluation/candidate_ranking.py,
dporec/data/candidates.py): candidate sets, Copeland, the metrics,
and the fast decision scoring against the evaluator's own score_decisions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dporec import UserError
from dporec.analysis import rank_metrics as rk
from dporec.data import candidates, records
from dporec.evaluation import baselines, candidate_ranking, scoring, sequences
from dporec.modeling import backends
from tests.helpers import TINY_CONFIG, tiny_overrides


def _sets(folder):
    return candidates.load(folder / candidates.FILE)


def test_candidate_sets_are_test_users_rated_after_their_history(tiny_data):
    sets = _sets(tiny_data)
    split_users = {s: {e.user_id for e in records.load_examples(tiny_data / f"{s}.jsonl")}
                   for s in ("train", "val", "test")}
    assert sets and {s["user_id"] for s in sets} <= split_users["test"]
    summary = json.loads((tiny_data / "summary.json").read_text())["ranking"]
    assert summary["users"] == len(sets) and summary["candidates_per_user"] == 8
    for s in sets:
        cands, hist = s["candidates"], s["history"]
        assert len(cands) == 8 and len({c["rating"] for c in cands}) >= 2
        assert len(hist) == 5 and all(h["timestamp"] < s["cutoff_timestamp"] for h in hist)
        assert not {c["item_id"] for c in cands} & {h["item_id"] for h in hist}


def test_ranking_max_users_keeps_a_seeded_sample_not_the_first_users(tmp_path):
    one = {"history": [{"title": "Heat (1995)", "genres": ["Crime"]}],
           "candidates": [{"title": "Se7en (1995)", "genres": ["Crime"], "rating": 5},
                          {"title": "Casper (1995)", "genres": ["Comedy"], "rating": 1}]}
    path = tmp_path / candidates.FILE
    path.write_text("".join(json.dumps({**one, "id": f"u{k}", "user_id": str(k)}) + "\n" for k in range(40)))
    kept = [s["user_id"] for s in candidates.load(path, limit=10)]
    assert len(kept) == 10 and kept != [str(k) for k in range(10)]
    assert kept == sorted(kept, key=int)  # in file order
    assert kept == [s["user_id"] for s in candidates.load(path, limit=10)]  # the same every time
    assert len(candidates.load(path, limit=100)) == 40


def test_spread_takes_every_rating_level_in_turn():
    rng = np.random.default_rng(0)
    picked = candidates._spread(np.array([5, 5, 5, 5, 5, 1, 3, 3]), 3, rng)
    assert sorted(np.array([5, 5, 5, 5, 5, 1, 3, 3])[picked]) == [1, 3, 5]


def test_load_names_file_line_and_field(tmp_path):
    bad = tmp_path / "r.jsonl"
    one_movie = [{"title": "X (1990)", "genres": []}]
    bad.write_text(json.dumps({"user_id": "1", "history": one_movie, "candidates": one_movie})
                   + "\n")
    with pytest.raises(UserError, match=r"r\.jsonl:1: 'candidates' needs at least 2 movies"):
        candidates.load(bad)
    with pytest.raises(UserError, match="no candidate-set file"):
        candidates.load(tmp_path / "missing.jsonl")


def test_copeland_follows_consistent_preferences_and_ignores_position_bias():
    n = 4
    truth = np.array([3.0, 1.0, 4.0, 2.0])
    # consistent, with a strong pull towards whichever movie is shown as Option A
    margins = [(truth[i] - truth[j] + 5.0, truth[j] - truth[i] + 5.0) for i in range(n)
               for j in range(i + 1, n)]
    scores = rk.copeland(rk.preferences(margins, n))
    assert list(np.argsort(-scores)) == [2, 0, 3, 1]
    always_a = [(5.0, 5.0)] * 6  # says "A" whatever is shown: prefers nothing
    assert np.ptp(rk.copeland(rk.preferences(always_a, n))) == 0


def test_metrics_on_known_orders():
    ratings = [5, 4, 2, 1, 3]
    perfect, reverse, flat = [5, 4, 2, 1, 3], [1, 2, 4, 5, 3], [0, 0, 0, 0, 0]
    assert rk.metrics(perfect, ratings) == {"kendall_tau_b": pytest.approx(1.0), "ndcg@3": pytest.approx(1.0),
                                                 "hit@1": 1.0}
    r = rk.metrics(reverse, ratings)
    assert r["kendall_tau_b"] == pytest.approx(-1.0) and r["hit@1"] == 0.0 and r["ndcg@3"] < 0.6
    # no order at all: tau 0, hit@1 and NDCG@3 equal to their random-order expectations
    r, c = rk.metrics(flat, ratings), rk.chance(ratings)
    assert r["kendall_tau_b"] == 0.0 and r["hit@1"] == pytest.approx(c["hit@1"]) == 0.4
    assert r["ndcg@3"] == pytest.approx(c["ndcg@3"])
    rng = np.random.default_rng(0)  # the chance level is the mean over random orders
    sims = np.mean([rk.ndcg_at_k(rng.permutation(5), ratings) for _ in range(4000)])
    assert sims == pytest.approx(c["ndcg@3"], abs=0.01)


def test_paired_comparison_sign_follows_the_difference():
    a = [{"user_id": str(u), "kendall_tau_b": 0.0, "ndcg@3": 0.5, "hit@1": 0.0} for u in range(40)]
    b = [{**r, "kendall_tau_b": 0.5, "ndcg@3": 0.9, "hit@1": 1.0} for r in a]
    c = rk.compare(a, b, alpha=0.05, margin=0.04)
    assert c["kendall_tau_b"]["difference"] == pytest.approx(0.5) and c["kendall_tau_b"]["p_value"] < 0.01
    assert c["kendall_tau_b"]["ci"][0] > 0 and c["kendall_tau_b"]["verdict"] == "SUPPORTED"
    back = rk.compare(b, a, alpha=0.05, margin=0.04)
    assert back["hit@1"]["ci"][1] < 0 and back["kendall_tau_b"]["verdict"] == "NOT SUPPORTED"
    # identical rankers: 12 users cannot rule out a 0.04 gain
    same = rk.compare(a[:12], a[:12], alpha=0.05, margin=0.04)["kendall_tau_b"]
    assert same["ci"][0] < 0 < same["ci"][1] and same["verdict"] == "INCONCLUSIVE"


def test_ndcg_gain_starts_at_zero():
    # gain = rating - 1: a 1-star movie adds nothing wherever it is ranked
    assert rk.ndcg_at_k([4, 3, 2, 1], [1, 1, 1, 5]) == 0.0
    assert rk.ndcg_at_k([1, 2, 3, 4], [1, 1, 1, 5]) == 1.0
    assert rk.chance([1, 1, 5])["ndcg@3"] == pytest.approx((4 / 3) * sum(1 / np.log2(k + 2)
                                                                         for k in range(3)) / 4)


def test_baselines_rank_by_their_own_numbers(tiny_data):
    sets = _sets(tiny_data)
    rows = candidate_ranking.baseline_rows(sets, tiny_data / "train.jsonl")
    assert set(rows) == set(baselines.RULES)
    for rule in ("mean_rating", "popularity", "genre_overlap"):
        assert isinstance(rows[rule], list) and len(rows[rule]) == len(sets), rule
    assert isinstance(candidate_ranking.baseline_rows(sets, "/nonexistent/train.jsonl")["mean_rating"], str)


def test_fast_decision_margins_equal_score_decisions(tiny_data, tiny_model, tmp_path):
    from dporec.config import load_config

    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path))
    model, tok = backends.load_base(cfg, "hf")
    groups = [candidate_ranking.pair_examples(s)[:9] for s in _sets(tiny_data)[:2]]
    assert sequences.decision_items(groups[0], tok, "alpaca") is not None  # the fast path is the one tested
    fast = scoring.decision_margins(model, tok, groups, "alpaca", 3)
    for group, got in zip(groups, fast):
        rows = scoring.score_decisions(model, tok, group, "alpaca", 4)
        want = [r["logp_a"] - r["logp_b"] for r in rows]
        assert [x for pair in got for x in pair] == pytest.approx(want, abs=1e-4)
