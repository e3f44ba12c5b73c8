"""recommend.py: every candidate ranked, by the evaluation's own pairwise both-order decisions."""
from __future__ import annotations

import json
from itertools import combinations

import pytest

from dporec import UserError
from dporec.config import load_config
from dporec.data import candidates
from dporec.evaluation import candidate_ranking, scoring
from dporec.inference.recommend import recommend
from dporec.modeling.adapters import load_with_adapters
from dporec.training import stages
from tests.helpers import TINY_CONFIG, tiny_overrides


@pytest.fixture(scope="module")
def sft_cfg(tiny_data, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, out))
    assert stages.run_sft(cfg) == 0
    return cfg


def requests(tiny_data, tmp_path, n_sets=3, unrated=True):
    sets = candidates.load(tiny_data / "ranking_test.jsonl", limit=n_sets)
    if unrated:  # what a user sends: no ratings
        sets = [{**s, "candidates": [{k: v for k, v in c.items() if k != "rating"} for c in s["candidates"]]}
                for s in sets]
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in sets))
    return path


def test_ranks_every_candidate_as_the_evaluation_decides(sft_cfg, tiny_data, tmp_path, capsys):
    req, out = requests(tiny_data, tmp_path), tmp_path / "rankings.jsonl"
    # no --adapter: the run's SFT adapter (it has no DPO one)
    assert len(recommend(sft_cfg, str(req), None, explain=True, out_file=str(out))) == 3
    got = [json.loads(line) for line in out.read_text().splitlines()]
    sets = candidates.load(req, rated=False)
    assert len(got) == len(sets)
    printed = capsys.readouterr().out
    assert "ranked by sft" in printed and "why (the model's answer" in printed
    # the evaluation's scoring of the same questions, with the same adapter active
    model, tok = load_with_adapters(sft_cfg, "hf", {"sft": sft_cfg["output_dir"] + "/sft"})
    model.set_adapter("sft")
    for cset, result in zip(sets, got):
        n = len(cset["candidates"])
        ranks = {r["index"]: r["rank"] for r in result["ranking"]}
        assert sorted(ranks) == list(range(n)) and sorted(ranks.values()) == list(range(1, n + 1))
        assert result["explanation"]
        rows = scoring.score_decisions(model, tok, candidate_ranking.pair_examples(cset), "alpaca", 8)
        wins = [0.0] * n
        for (i, j), (orig, swapped) in zip(combinations(range(n), 2), zip(rows[0::2], rows[1::2])):
            pref = ((orig["logp_a"] - orig["logp_b"]) - (swapped["logp_a"] - swapped["logp_b"])) / 2
            wins[i] += (pref > 0) + 0.5 * (pref == 0)
            wins[j] += (pref < 0) + 0.5 * (pref == 0)
        by_index = {r["index"]: r["wins"] for r in result["ranking"]}
        assert [by_index[k] for k in range(n)] == pytest.approx(wins)
        order = [r["index"] for r in result["ranking"]]
        assert all(wins[a] >= wins[b] for a, b in zip(order, order[1:]))


def test_rated_request_reports_tau_and_base_model(sft_cfg, tiny_data, tmp_path, capsys):
    req = requests(tiny_data, tmp_path, n_sets=1, unrated=False)
    assert len(recommend(sft_cfg, str(req), "none")) == 1
    printed = capsys.readouterr().out
    assert "ranked by the base model" in printed and "Kendall tau-b" in printed


def test_bad_requests_are_named(sft_cfg, tiny_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_id": "1", "history": [{"title": "Y (1991)", "genres": []}], '
                   '"candidates": [{"title": "X (1990)", "genres": []}]}\n')
    with pytest.raises(UserError, match=rf"{bad}:1: 'candidates' needs at least 2 movies"):
        recommend(sft_cfg, str(bad), None)
    out = tmp_path / "mine.jsonl"
    out.write_text("keep me")
    with pytest.raises(UserError, match="pass --overwrite"):
        recommend(sft_cfg, str(requests(tiny_data, tmp_path)), None, out_file=str(out))
    assert out.read_text() == "keep me"


def test_a_documented_request_without_id_with_genre_strings_ranks(sft_cfg, tmp_path, capsys):
    """The README's request form: no "id", genres as MovieLens writes them ("Comedy|Family"); an empty
    history and a missing adapter are named before any model loads."""
    req = tmp_path / "req.jsonl"
    req.write_text(json.dumps({"user_id": "u1", "history": [{"title": "Heat (1995)", "genres": "Crime"}],
                               "candidates": [{"title": "Casper (1995)", "genres": "Comedy|Family"},
                                              {"title": "Speed (1994)", "genres": ["Action"]}]}) + "\n")
    [result] = recommend(sft_cfg, str(req), None)
    assert result["id"] == "req.jsonl:1"
    assert {tuple(r["genres"]) for r in result["ranking"]} == {("Comedy", "Family"), ("Action",)}
    empty = tmp_path / "empty.jsonl"
    empty.write_text(req.read_text().replace('[{"title": "Heat (1995)", "genres": "Crime"}]', "[]"))
    with pytest.raises(UserError, match=rf"{empty}:1: 'history' needs at least one movie"):
        recommend(sft_cfg, str(empty), None)
    with pytest.raises(UserError, match="adapter not found"):
        recommend(sft_cfg, str(req), str(tmp_path / "no-adapter"))
