"""The personal-taste task (negatives="matched"): each liked target against a disliked movie of the same
user that training users, before the target's time, rated about as well and as often. Its invariants
(balance, user-disjointness, time order, a disliked negative within the match) and the general-appeal
rules at chance while the personal rule is not."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dporec.data import pairs, ratings, records, sources
from dporec.data.sources import recbole
from dporec.evaluation import baselines


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    out = tmp_path_factory.mktemp("matched")
    # 800 users: matching on year as well leaves about a hundred val and test pairs to measure rules on
    summary = sources.build("synthetic:800", out, seed=0, negatives="matched", ranking_candidates=0)
    return out, summary


def _records(out):
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()]
            for s in pairs.SPLITS}


def test_matched_pairs_keep_balance_users_and_time_order(matched):
    out, summary = matched
    recs = _records(out)
    assert summary["negatives"] == "matched" and summary["task"] == pairs.TASKS["matched"]
    users = {s: {r["user_id"] for r in rs} for s, rs in recs.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["val"]
    for s, rs in recs.items():
        assert rs, s
        n_a = sum(r["label"] == "A" for r in rs)
        assert abs(2 * n_a - len(rs)) <= 1, s
        assert max(pd.Series([r["user_id"] for r in rs]).value_counts()) <= 3
        for r in rs:
            assert r["negative_kind"] == "matched"
            assert all(h["timestamp"] < r["target_timestamp"] for h in r["history"])
    assert records.load_examples(out / "test.jsonl")  # valid records


def test_a_matched_negative_is_disliked_and_alike_in_general_appeal(matched):
    out, _ = matched
    meta = json.loads((out / ratings.META_FILE).read_text())
    train = pd.read_csv(out / meta["ratings_file"])
    appeal = ratings.TrainRatings(train, meta["like_threshold"])
    higher = 0
    checked = 0
    for split in ("val", "test"):
        for r in _records(out)[split]:
            liked = r["option_a" if r["label"] == "A" else "option_b"]["item_id"]
            other = r["option_b" if r["label"] == "A" else "option_a"]["item_id"]
            t = r["target_timestamp"]
            m0, m = appeal.mean(liked, t), appeal.mean(other, t)
            n0, n = appeal.count(liked, t), appeal.count(other, t)
            assert abs(m - m0) <= pairs.MATCH_STARS + 1e-9
            assert 1 / pairs.MATCH_FACTOR <= (n + 1) / (n0 + 1) <= pairs.MATCH_FACTOR
            y0 = r["option_a" if r["label"] == "A" else "option_b"]["year"]
            y = r["option_b" if r["label"] == "A" else "option_a"]["year"]
            assert y is None or y0 is None or abs(y - y0) <= pairs.MATCH_YEARS
            higher += m >= m0
            checked += 1
    assert checked > 40 and 0.3 < higher / checked < 0.7  # the side is a coin flip


def _rule_accuracy(out):
    exs = [e for s in ("val", "test") for e in records.load_examples(out / f"{s}.jsonl")]
    side, why = baselines.find_side(out / "train.jsonl")
    scores = baselines.pair_scores(exs, side, why)
    return {r: float(np.mean(list(v.values()))) for r, v in scores.items() if isinstance(v, dict)}


def test_general_appeal_rules_score_near_chance_on_synthetic_data(matched):
    out, _ = matched
    acc = _rule_accuracy(out)
    assert acc["mean_rating"] <= 0.6 and acc["popularity"] <= 0.6, acc
    assert acc["genre_overlap"] >= 0.65, acc  # the synthetic users' own tastes still show


@pytest.mark.skipif(recbole.ml100k_dir() is None, reason="the recbole package is not installed")
def test_general_appeal_rules_score_near_chance_on_ml100k(tmp_path):
    disliked = _rule_accuracy_built(tmp_path / "d", "disliked")
    matched = _rule_accuracy_built(tmp_path / "m", "matched")
    assert disliked["mean_rating"] > 0.68  # the usual task: knowing which films are good answers most
    assert matched["mean_rating"] <= 0.6 and matched["popularity"] <= 0.6, matched
    assert matched["item_cf"] >= 0.6, matched  # a personal signal remains
    assert matched["older_year"] <= 0.6, matched  # matched on release year too


def _rule_accuracy_built(out, negatives):
    sources.build("recbole:ml-100k", out, seed=0, negatives=negatives, ranking_candidates=0)
    return _rule_accuracy(out)


def test_the_default_build_writes_the_personal_tasks_test_pairs_beside_it(tmp_path):
    """The second verdict's pairs: the default task's test users only, matched negatives, time order kept;
    a matched build has none (its test pairs are the personal task), and a rebuild removes a stale one."""
    out = tmp_path / "data"
    summary = sources.build("synthetic:400", out, seed=0, ranking_candidates=0)
    personal = records.load_examples(out / pairs.PERSONAL_FILE)
    test_users = {e.user_id for e in records.load_examples(out / "test.jsonl")}
    assert personal and {e.user_id for e in personal} <= test_users
    assert summary["personal_test"]["examples"] == len(personal)
    assert all(e.extra["negative_kind"] == "matched" for e in personal)
    assert all(h["timestamp"] < e.extra["target_timestamp"] for e in personal for h in e.extra["history"])
    assert abs(2 * sum(e.label == "A" for e in personal) - len(personal)) <= 1
    assert not {e.pair_id for e in personal} & {e.pair_id for e in records.load_examples(out / "test.jsonl")}
    from dporec.data import built
    assert built.personal_test_file(out / "test.jsonl") == out / pairs.PERSONAL_FILE
    summary = sources.build("synthetic:400", out, seed=0, negatives="matched", ranking_candidates=0)
    assert summary["personal_test"] is None and not (out / pairs.PERSONAL_FILE).exists()
