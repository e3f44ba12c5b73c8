"""Baselines (dporec.evaluation.baselines): values checked by hand on a small fixture, with and without
the time cut (a rule reads only ratings made before the pair's time), the training ratings the builder
writes, the strongest rule chosen on validation pairs, "not available" on thesis-layout records."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from dporec.analysis import metrics
from dporec.data import pairs, ratings, records, sources, task
from dporec.evaluation import baselines
from dporec.report import markdown, sentences, tables

# Training users 1-3, (user, item, rating, time). By hand, with every rating (time 100 comes after all):
# mean 10: 4.5, 11: 4.5, 20: 2.0, 30: 4.5, 40: 3.5; counts 10: 2, 11: 2, 20: 3, 30: 2, 40: 2; liked
# (>= 4) by 10: {1, 2}, 11: {1, 3}, 30: {1, 2}, 40: {2}, 20: nobody.
TRAIN = [(1, 10, 5, 1), (1, 11, 4, 2), (1, 20, 2, 3), (1, 30, 5, 4), (2, 10, 4, 1), (2, 20, 1, 2),
         (2, 30, 4, 3), (2, 40, 5, 4), (3, 11, 5, 1), (3, 20, 3, 2), (3, 40, 2, 3)]
MOVIES = {10: ("Synthetic Movie 10 (1960)", ["Comedy"]),
          11: ("Synthetic Movie 11 (1961)", ["Drama", "Comedy"]),
          20: ("Synthetic Movie 20 (1980)", ["Horror"]), 30: ("Synthetic Movie 30 (1990)", ["Comedy"]),
          40: ("Synthetic Movie 40 (1960)", ["War"]), 50: ("Synthetic Movie 50 (1970)", ["War"])}


def record(pid, user, history, a, b, label, t=100) -> records.Example:
    disp = lambda i: f"{MOVIES[i][0]} ({'|'.join(MOVIES[i][1])})"  # noqa: E731
    field = lambda i: {"item_id": i, "title": MOVIES[i][0], "year": int(MOVIES[i][0][-5:-1]),  # noqa: E731
                       "genres": MOVIES[i][1]}
    obj = {"instruction": task.INSTRUCTION, "id": pid, "user_id": user, "label": label,
           "input": f"History: {', '.join(disp(h) for h in history)}\nOption "
                    f"A: {disp(a)}.\nOption B: {disp(b)}.",
           "output": task.answer_text(label), "history": [field(h) for h in history],
           "option_a": field(a), "option_b": field(b), "target_timestamp": t}
    return records.parse_record(obj, f"test.jsonl:{pid}", pid)


EXAMPLES = [
    # mean 4.5 > 2.0 right; popularity 2 < 3 wrong; genre Comedy 2 > 0 right; item-CF
    # cos(10,30) + cos(11,30) = 1 + 1/2 > 0 right; year 1990 is not older than 1980: wrong
    record("p1", "9", [10, 11], 30, 20, "A"),
    # mean: 50 unrated -> global 40/11 < 4.5 right; popularity 0 < 2 right; genre War 1 > 0 wrong;
    # item-CF 0 = 0 tie; year 1961 older than 1970: right
    record("p2", "8", [40], 50, 11, "B"),
    # mean 3.5 < 4.5 wrong (the personalised pair); popularity 2 = 2 tie; genre War 0 < Comedy 1
    # wrong; item-CF cos(11,40) = 0 < cos(11,30) = 1/2 wrong; year 1960 older than 1990 right
    record("p3", "8", [11], 40, 30, "A"),
]
EXPECTED = {"mean_rating": 2 / 3, "popularity": 0.5, "genre_overlap": 1 / 3, "item_cf": 0.5,
            "older_year": 2 / 3}


@pytest.fixture
def fixture_dir(tmp_path):
    table = pd.DataFrame(TRAIN, columns=["user_id", "item_id", "rating", "timestamp"])
    ratings.write_train_ratings(tmp_path, table, like_threshold=4)
    (tmp_path / "train.jsonl").write_text("")
    return tmp_path


def test_rule_values_match_the_hand_computed_ones(fixture_dir):
    side, why = baselines.find_side(fixture_dir / "train.jsonl")
    assert why == "" and side.global_mean(100) == pytest.approx(40 / 11)
    assert side.cosine(11, 30, 100) == pytest.approx(0.5) and side.cosine(10, 30, 100) == pytest.approx(1.0)
    scores = baselines.pair_scores(EXAMPLES, side)
    assert scores["mean_rating"] == {"p1": 1.0, "p2": 1.0, "p3": 0.0}
    assert scores["popularity"] == {"p1": 0.0, "p2": 1.0, "p3": 0.5}
    assert scores["genre_overlap"] == {"p1": 1.0, "p2": 0.0, "p3": 0.0}
    assert scores["item_cf"] == {"p1": 1.0, "p2": 0.5, "p3": 0.0}
    assert scores["older_year"] == {"p1": 0.0, "p2": 1.0, "p3": 1.0}


def test_rules_read_only_ratings_made_before_the_pair(fixture_dir):
    # Before time 3 only these count: (1,10,5,1) (1,11,4,2) (2,10,4,1) (2,20,1,2) (3,11,5,1) (3,20,3,2).
    side, _ = baselines.find_side(fixture_dir / "train.jsonl")
    assert side.global_mean(3) == pytest.approx(22 / 6) and side.global_mean(1) == 3.0  # nothing yet
    assert (side.count(30, 3), side.count(30, 4), side.count(30, 5)) == (0, 1, 2)
    assert side.mean(30, 3) == pytest.approx(22 / 6) and side.mean(30, 4) == 4.0 and side.mean(20, 3) == 2.0
    assert side.cosine(10, 30, 3) == 0.0  # user 2 liked 30 at time 3, user 1 at time 4
    assert side.cosine(10, 30, 4) == pytest.approx(1 / 2 ** 0.5) and side.cosine(10, 30, 5) == 1.0
    # p1 (liked 30 against 20, history 10 and 11) asked at time 3: 30 was not rated yet
    early = record("p1", "9", [10, 11], 30, 20, "A", t=3)
    scores = baselines.pair_scores([early], side)
    assert scores["mean_rating"] == {"p1": 1.0}   # overall mean before 3, 3.67 > 2.0
    assert scores["popularity"] == {"p1": 0.0}    # 0 ratings < 2 ratings
    assert scores["item_cf"] == {"p1": 0.5}       # nobody had liked either yet: a tie (with the future: 1.0)
    # the information-matched comparator reads the whole period, later ratings included
    whole = baselines.pair_scores([early], side, whole_period=True)
    assert whole["popularity"] == {"p1": 0.0}     # 2 ratings < 3 ratings, over the whole period
    assert whole["item_cf"] == {"p1": 1.0}        # cos(10,30) + cos(11,30) = 1.5 > 0: the future decides
    assert whole["genre_overlap"] == scores["genre_overlap"]  # the prompt's rules do not change
    untimed = record("p1", "9", [10, 11], 30, 20, "A")
    del untimed.extra["target_timestamp"]
    for rule in baselines.RATING_RULES:
        assert baselines.pair_scores([untimed], side)[rule] == baselines.NO_TIME


def test_a_rule_chooses_the_same_movie_in_both_orders(fixture_dir):
    side, _ = baselines.find_side(fixture_dir / "train.jsonl")
    swapped = [records.swap(e) for e in EXAMPLES]
    assert baselines.pair_scores(swapped, side) == baselines.pair_scores(EXAMPLES, side)


def rows_for(model: str, right: dict[str, tuple[bool, bool]]) -> list[dict]:
    """Prediction rows of a model that is right in the (original, swapped) orders as given."""
    rows = []
    for e in EXAMPLES:
        for order, ex, ok in (("original", e, right[e.pair_id][0]), ("swapped", records.swap(e),
                                                                     right[e.pair_id][1])):
            choice = ex.label if ok else ex.other
            rows.append({"model": model, "pair_id": e.pair_id, "user_id": e.user_id, "order": order,
                         "label": ex.label, "logp_a": -1.0 if choice == "A" else -2.0,
                         "logp_b": -1.0 if choice == "B" else -2.0,
                         "option_a_id": str(ex.extra["option_a"]["item_id"]),
                         "option_b_id": str(ex.extra["option_b"]["item_id"])})
    return rows


def test_results_fields_and_the_strongest_rule_chosen_on_validation(fixture_dir):
    rows = {"sft": rows_for("sft", {"p1": (True, True), "p2": (True, False), "p3": (True, True)}),
            "dpo": rows_for("dpo", {"p1": (False, False), "p2": (False, False), "p3": (False, True)})}
    results = {"models": {m: metrics.model_metrics(r) for m, r in rows.items()}}
    # validation pairs on which release year is right and the mean-rating rule wrong
    val = [record("v1", "7", [11], 40, 30, "A"), record("v2", "7", [10], 11, 30, "A")]
    baselines.add_to_results(results, EXAMPLES, fixture_dir / "train.jsonl", rows, val_examples=val,
                             n_boot=200)
    for name, acc in EXPECTED.items():
        b = results["baselines"][name]
        assert b["available"] and b["accuracy"] == pytest.approx(acc) and b["n_pairs"] == 3
        assert b["ci"][0] <= acc <= b["ci"][1]
    best = results["best_baseline"]
    assert best["rule"] == "older_year" and best["validation_accuracy"] == 1.0  # not the test set's choice
    sft, dpo = results["models"]["sft"], results["models"]["dpo"]
    assert sft["vs_best_baseline"]["difference"] == pytest.approx(5 / 6 - 2 / 3)
    assert dpo["vs_best_baseline"]["difference"] == pytest.approx(1 / 6 - 2 / 3)
    assert "accuracy_personalised" not in sft
    # beside them, the rating rules over the whole period (here every pair is asked after all ratings)
    assert set(results["baselines_whole_period"]) == set(baselines.RATING_RULES)
    assert results["best_baseline_whole_period"]["rule"] == "older_year"
    assert sft["vs_best_baseline_whole_period"] == sft["vs_best_baseline"]
    text = "\n".join(tables.baseline_lines(results))
    assert "mean rating among training users" in text and "66.7%" in text
    clause = sentences.baseline_clause(results)
    assert clause.startswith("Strongest baseline on the validation pairs, rating rules time-cut (only "
                             "ratings made before each pair): older release year (100.0% on the validation "
                             "pairs, 66.7% on the test pairs).")
    assert "sft 83.3%" in clause and "dpo 16.7%" in clause
    assert "Information-matched comparator, rating rules over the training users' whole period" in clause
    assert "## Baselines on the same test pairs" in markdown.baselines_section(results)
    json.dumps(results)  # results.json must be able to hold it


@pytest.mark.parametrize("layout", ["inline", "own-line"])
def test_thesis_layout_records_say_which_rules_are_not_available(tmp_path, layout):
    # The thesis's one-line input holds both options on the 'History:' line: their genres must not
    # count as history genres.
    text = ("History: Night River, The (1990), Signal Garden (1957). Option A: Garden Letter (1930) "
            "(Crime|Drama). Option B: Winter Machine (1954) (Comedy|Romance).")
    thesis = records.parse_record({
        "instruction": task.INSTRUCTION,
        "input": text if layout == "inline" else text.replace(". Option", ".\nOption"),
        "output": "The better recommendation is Option A."}, "thesis.jsonl:1", "t1")
    (tmp_path / "train.jsonl").write_text("")
    results = {"models": {}}
    baselines.add_to_results(results, [thesis], tmp_path / "train.jsonl", {}, n_boot=50)
    b = results["baselines"]
    for rule in ("mean_rating", "popularity", "item_cf"):
        assert not b[rule]["available"] and "no baselines.json beside" in b[rule]["reason"]
    assert b["genre_overlap"]["reason"] == "the history in the prompt shows no genres"
    assert b["older_year"]["available"] and b["older_year"]["accuracy"] == 1.0  # Garden Letter is older
    assert "not available" in "\n".join(markdown.baselines_section(results))


def test_builder_writes_training_users_ratings_only(tmp_path):
    sources.build("synthetic:60", tmp_path, seed=0)
    meta = json.loads((tmp_path / ratings.META_FILE).read_text())
    rated = pd.read_csv(tmp_path / meta["ratings_file"])
    split_users = {s: {json.loads(line)["user_id"]
                       for line in (tmp_path / f"{s}.jsonl").read_text().splitlines()}
                   for s in pairs.SPLITS}
    assert {str(u) for u in rated["user_id"].unique()} == split_users["train"]
    assert meta["ratings"] == len(rated) and meta["like_threshold"] == 4


def test_synthetic_ratings_follow_genre_tastes_strongly(tmp_path):
    """The synthetic data's ground truth shows through the rules: genre overlap with the history
    picks the liked movie far more often than chance (87-89% at 600 users), and better than the
    movie's mean rating, which knows only which films are generally liked."""
    sources.build("synthetic:300", tmp_path, seed=0)
    exs = [e for s in ("val", "test") for e in records.load_examples(tmp_path / f"{s}.jsonl")]
    side, _ = baselines.find_side(tmp_path / "train.jsonl")
    acc = {rule: sum(s.values()) / len(s) for rule, s in baselines.pair_scores(exs, side).items()}
    assert acc["genre_overlap"] >= 0.82 and acc["genre_overlap"] > acc["mean_rating"] + 0.05, acc


def test_the_whole_period_rules_need_no_pair_time(fixture_dir):
    """The information-matched comparator reads every training rating, so a record without a target time
    still has it (the time-cut rules do not)."""
    side, _ = baselines.find_side(fixture_dir / "train.jsonl")
    untimed = record("p1", "9", [10, 11], 30, 20, "A")
    del untimed.extra["target_timestamp"]
    assert baselines.pair_scores([untimed], side)["mean_rating"] == baselines.NO_TIME
    assert baselines.pair_scores([untimed], side, whole_period=True)["mean_rating"] == {"p1": 1.0}
