"""Building preference pairs from MovieLens-format ratings (dporec.movielens, dporec.synthetic,
data/prepare_movielens.py). Every fixture is synthetic; ML-100K is read from the recbole package."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from dporec import ROOT, UserError
from dporec.data import balance, pairs, records, sources, task
from dporec.data.sources import movielens as ml1m
from dporec.data.sources import recbole, synthetic

PREPARE = ROOT / "data" / "prepare_movielens.py"
FORBIDDEN = re.compile(r"rat(ed|ing)|star|liked|disliked|unseen|popular|never|watched|\bscore", re.IGNORECASE)


def read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    """An independent reader, so the builder is checked against the files and not against itself."""
    rows = [line.split("::") for line in path.read_text(encoding="latin-1").splitlines()]
    return pd.DataFrame(rows, columns=names)


def load_split(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def all_records(out: Path) -> list[dict]:
    return [r for s in pairs.SPLITS for r in load_split(out, s)]


@pytest.fixture(scope="module")
def ml1m_dir(tmp_path_factory) -> Path:
    return synthetic.write_ml1m(tmp_path_factory.mktemp("ml") / "ml-1m", n_users=80, n_movies=400,
                                ratings_per_user=40, seed=3)


@pytest.fixture(scope="module")
def truth(ml1m_dir) -> dict[tuple[str, int], tuple[int, int]]:
    """(user_id, item_id) -> (rating, timestamp) as written by the generator."""
    r = read_dat(ml1m_dir / "ratings.dat", ["user", "item", "rating", "ts"])
    r = r.astype({"item": int, "rating": int, "ts": int})
    return {(u, i): (rt, ts) for u, i, rt, ts in r.itertuples(index=False)}


@pytest.fixture(scope="module")
def built(ml1m_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built")
    sources.build(str(ml1m_dir), out, seed=0)
    return out


# ---------------------------------------------------------------------------------------------
# The synthetic generator

def test_synthetic_files_have_ml1m_format(ml1m_dir):
    ratings = read_dat(ml1m_dir / "ratings.dat", ["user", "item", "rating", "ts"]).astype(int)
    assert ratings["rating"].between(1, 5).all()
    assert ratings.groupby("user").size().min() >= 20
    assert (ratings.groupby("user")["ts"].diff().dropna() >= 0).all()
    assert not ratings.duplicated(["user", "item"]).any()
    movies = read_dat(ml1m_dir / "movies.dat", ["id", "title", "genres"])
    assert movies["title"].str.fullmatch(r"Synthetic Movie \d+ \(\d{4}\)").all()
    assert {g for gs in movies["genres"] for g in gs.split("|")} <= set(synthetic.GENRES)
    users = read_dat(ml1m_dir / "users.dat", ["id", "gender", "age", "occupation", "zip"])
    assert len(users) == 80 and set(users["gender"]) <= {"M", "F"}


def test_synthetic_is_deterministic(ml1m_dir, tmp_path):
    again = synthetic.write_ml1m(tmp_path / "again", n_users=80, n_movies=400, ratings_per_user=40, seed=3)
    assert (again / "ratings.dat").read_bytes() == (ml1m_dir / "ratings.dat").read_bytes()
    other = synthetic.write_ml1m(tmp_path / "other", n_users=80, n_movies=400, ratings_per_user=40, seed=4)
    assert (other / "ratings.dat").read_bytes() != (ml1m_dir / "ratings.dat").read_bytes()


def test_synthetic_users_have_genre_tastes(tmp_path):
    """A user's mean rating per genre strays from the user's overall mean far more than chance."""
    folder = synthetic.write_ml1m(tmp_path, n_users=50, n_movies=400, ratings_per_user=200, seed=3)
    ratings = read_dat(folder / "ratings.dat", ["user", "item", "rating", "ts"]).astype({"rating": int})
    movies = read_dat(folder / "movies.dat", ["item", "title", "genres"])
    rows = ratings.merge(movies,
                         on="item").assign(genre=lambda d: d["genres"].str.split("|")).explode("genre")

    def genre_effect(stars) -> float:
        d = rows.assign(stars=stars)
        cells = d.groupby(["user", "genre"])["stars"].agg(["mean", "size"])
        cells = cells[cells["size"] >= 5]
        return (cells["mean"] - d.groupby("user")["stars"].mean().reindex(cells.index, level=0)).abs().mean()
    shuffled = rows["rating"].sample(frac=1, random_state=0).to_numpy()
    assert genre_effect(rows["rating"].to_numpy()) > 1.6 * genre_effect(shuffled)  # about 2.1x


# ---------------------------------------------------------------------------------------------
# What the built examples promise

def test_each_split_has_answer_in_a_for_half(built):
    for split in pairs.SPLITS:
        labels = Counter(r["label"] for r in load_split(built, split))
        assert labels["A"] + labels["B"] > 0
        assert abs(labels["A"] - labels["B"]) <= 1, (split, labels)


def test_splits_are_user_disjoint_and_bounded_per_user(built):
    users = {s: Counter(r["user_id"] for r in load_split(built, s)) for s in pairs.SPLITS}
    assert not users["train"].keys() & users["val"].keys()
    assert not users["train"].keys() & users["test"].keys()
    assert not users["val"].keys() & users["test"].keys()
    assert max(max(c.values()) for c in users.values()) <= 3


def test_records_load_and_follow_the_thesis_format(built):
    for split in pairs.SPLITS:
        for ex in records.load_examples(built / f"{split}.jsonl"):
            assert ex.instruction == task.INSTRUCTION
            assert ex.output == task.answer_text(ex.label, ex.reasons[ex.label])
            assert records.rejected_output(ex) != records.chosen_output(ex)
            assert re.fullmatch(r"u\d+-\d", ex.pair_id)
            history, a, b = ex.input.split("\n")
            assert history == "History: " + ", ".join(
                f"{h['title']} ({'|'.join(h['genres'])})" for h in ex.extra["history"])
            for letter, line in (("A", a), ("B", b)):
                opt = ex.extra[f"option_{letter.lower()}"]
                assert line == f"Option {letter}: {opt['title']} ({'|'.join(opt['genres'])})."


def test_target_is_liked_and_negative_is_disliked_or_unseen(built, truth):
    kinds = Counter()
    for r in all_records(built):
        user = r["user_id"]
        target = r["option_a" if r["label"] == "A" else "option_b"]["item_id"]
        negative = r["option_b" if r["label"] == "A" else "option_a"]["item_id"]
        assert truth[(user, target)][0] >= 4
        assert truth[(user, target)][1] == r["target_timestamp"]
        kinds[r["negative_kind"]] += 1
        if r["negative_kind"] == "disliked":
            assert truth[(user, negative)][0] <= 2
        else:
            assert (user, negative) not in truth
        assert negative != target and negative not in {h["item_id"] for h in r["history"]}
    assert kinds["disliked"] > 0 and kinds["unseen_popular"] > 0  # the generator has generous users


def test_history_is_the_latest_liked_movies_strictly_before_the_target(built, truth):
    for r in all_records(built):
        user, target_ts = r["user_id"], r["target_timestamp"]
        stamps = [h["timestamp"] for h in r["history"]]
        assert len(stamps) == 5 and stamps == sorted(stamps) and max(stamps) < target_ts
        earlier_liked = [ts for (u, _), (rating, ts) in truth.items()
                         if u == user and rating >= 4 and ts < target_ts]
        assert stamps == sorted(earlier_liked)[-5:]
        for h in r["history"]:
            rating, ts = truth[(user, h["item_id"])]
            assert rating >= 4 and ts == h["timestamp"]


def test_same_second_ratings_never_enter_the_history(tmp_path):
    """Movie 7 is rated in the same second as movie 6: neither may be in the other's history."""
    folder = tmp_path / "ties"
    folder.mkdir()
    lines = [f"1::{m}::5::{100 + m}" for m in range(1, 7)] + ["1::7::4::106", "1::8::1::50"]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (folder / "movies.dat").write_text("".join(f"{m}::Synthetic Movie {m} (1990)::Drama\n"
                                               for m in range(1, 9)),
                                       encoding="latin-1")
    sources.build(str(folder), tmp_path / "out", history_len=5, train_pairs_per_user=5,
                  eval_pairs_per_user=5)
    records = load_split(tmp_path / "out", "train")
    assert sorted(r["target_timestamp"] for r in records) == [106, 106]
    for r in records:
        assert [h["item_id"] for h in r["history"]] == [1, 2, 3, 4, 5]
        assert r["negative_kind"] == "disliked"


def _phrase(genres: list[str]) -> str:
    """An independent spelling of the reasons' genre list, so the test does not trust the builder's."""
    if not genres:
        return "none of them"
    return " and ".join([", ".join(genres[:-1]), genres[-1]]) if len(genres) > 1 else genres[0]


def test_reasons_state_true_genre_overlap_from_one_template(built):
    """Each reason says which history genres each option has, true for every record, and the two
    reasons are the same template with the options exchanged (nothing the options do not show)."""
    n_none = n_some = 0
    for r in all_records(built):
        history_genres = {g for h in r["history"] for g in h["genres"]}
        opts = {"A": r["option_a"], "B": r["option_b"]}
        shown = {L: f"{o['title']} ({'|'.join(o['genres'])})" for L, o in opts.items()}
        shared = {L: [g for g in o["genres"] if g in history_genres] for L, o in opts.items()}
        for L in "AB":
            other = task.other_letter(L)
            assert r["reasons"][L] == (f"Reasoning: Of the genres in the history, {shown[L]} has "
                                       f"{_phrase(shared[L])}; {shown[other]} has {_phrase(shared[other])}.")
            masked = r["reasons"][L].replace(shown[L], "<FOR>").replace(shown[other], "<AGAINST>")
            assert not FORBIDDEN.search(masked), masked
            assert "Option" not in r["reasons"][L]
        n_none += sum(not shared[L] for L in "AB")
        n_some += sum(bool(shared[L]) for L in "AB")
    assert n_none and n_some  # both kinds of claim occur, so both are checked


def test_unseen_popular_negatives_come_from_training_users_earlier_ratings(built):
    """Popularity for the fallback negative never counts a val/test user's ratings, nor ratings
    given after the target: the negative was rated by a training user before the target's time."""
    train = pd.read_csv(built / "train_ratings.csv.gz")
    checked = 0
    for r in all_records(built):
        if r["negative_kind"] != "unseen_popular":
            continue
        negative = r["option_b" if r["label"] == "A" else "option_a"]["item_id"]
        earlier = train[train["timestamp"] < r["target_timestamp"]]
        counts = earlier["item_id"].value_counts()
        assert negative in counts.index
        rank = (counts > counts[negative]).sum()
        assert rank < pairs.POPULAR_POOL + 40  # in the pool, bar movies this user already rated
        checked += 1
    assert checked


def test_same_seed_same_files_other_seed_other_files(ml1m_dir, built, tmp_path):
    sources.build(str(ml1m_dir), tmp_path / "same", seed=0)
    sources.build(str(ml1m_dir), tmp_path / "other", seed=1)
    for split in pairs.SPLITS:
        assert (tmp_path / "same" / f"{split}.jsonl").read_bytes() == (built / f"{split}.jsonl").read_bytes()
    assert (tmp_path / "other" / "train.jsonl").read_bytes() != (built / "train.jsonl").read_bytes()


def test_summary_lists_splits_balance_and_negative_kinds(built):
    summary = json.loads((built / "summary.json").read_text())
    records = {s: load_split(built, s) for s in pairs.SPLITS}
    for s, recs in records.items():
        got = summary["splits"][s]
        assert got["examples"] == len(recs)
        assert got["users"] == len({r["user_id"] for r in recs})
        assert got["A"] == sum(r["label"] == "A" for r in recs)
        assert got["negative_kinds"] == dict(Counter(r["negative_kind"] for r in recs))
    assert summary["seconds"] >= 0


# ---------------------------------------------------------------------------------------------
# Sources: folder, zip, MD5, recbole ML-100K, malformed files

def test_zip_and_folder_give_the_same_output_and_md5_is_checked(ml1m_dir, built, tmp_path):
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("ratings.dat", "movies.dat", "users.dat"):
            z.write(ml1m_dir / name, f"ml-1m/{name}")
    with pytest.raises(UserError, match=re.escape(f"{archive}: MD5 is ") + ".* but the published "
                                                                           "ml-1m.zip has "
                       + sources.release("ml-1m").md5):
        sources.build(str(archive), tmp_path / "refused")
    sources.build(str(archive), tmp_path / "zip", allow_md5_mismatch=True)
    for split in pairs.SPLITS:
        assert (tmp_path / "zip" / f"{split}.jsonl").read_bytes() == (built / f"{split}.jsonl").read_bytes()


@pytest.mark.parametrize("line, problem", [
    ("1::2::3", "expected 4 '::'-separated fields"),
    ("1::2::3::4::5", "expected 4 '::'-separated fields"),
    ("1::x::3::4", "field 'MovieID' is not an integer: 'x'"),
    ("1::2::4.5::4", "field 'Rating' is not an integer: '4.5'"),
    ("1::2::9::4", "field 'Rating' must be 1-5, got 9"),
])
def test_malformed_ratings_line_names_file_and_line(ml1m_dir, tmp_path, line, problem):
    folder = tmp_path / "ml-1m"
    shutil.copytree(ml1m_dir, folder)
    lines = (folder / "ratings.dat").read_text().splitlines()
    lines[2] = line
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=re.escape(f"{folder / 'ratings.dat'}:3: {problem}")):
        ml1m.read(folder)


def test_malformed_movies_line_and_unknown_movie(ml1m_dir, tmp_path):
    folder = tmp_path / "ml-1m"
    shutil.copytree(ml1m_dir, folder)
    movies = folder / "movies.dat"
    good = movies.read_text(encoding="latin-1")
    movies.write_text(good.replace("2::Synthetic Movie 2", "2::Synthetic Movie 2::"), encoding="latin-1")
    with pytest.raises(UserError, match=re.escape(f"{movies}:2: expected 3 '::'-separated fields")):
        ml1m.read(folder)
    movies.write_text("\n".join(good.splitlines()[:10]) + "\n", encoding="latin-1")
    with pytest.raises(UserError, match="is not in movies.dat"):
        ml1m.read(folder)


def test_unknown_sources_are_user_errors(tmp_path):
    for source, message in [(tmp_path / "missing", "data source not found"),
                            ("recbole:ml-1m", "recbole ships only 'recbole:ml-100k'"),
                            ("synthetic:many", "synthetic:N_USERS")]:
        with pytest.raises(UserError, match=message):
            sources.build(str(source), tmp_path / "out")


def test_recbole_ml100k_builds(tmp_path):
    if recbole.ml100k_dir() is None:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1): no ML-100K files")
    summary = sources.build("recbole:ml-100k", tmp_path, seed=0)
    assert summary["ratings"] == 100_000 and summary["rating_users"] == 943
    for split in pairs.SPLITS:
        exs = records.load_examples(tmp_path / f"{split}.jsonl")
        assert abs(balance.balance(exs)["A"] - balance.balance(exs)["B"]) <= 1
    titles = {h["title"] for r in load_split(tmp_path, "train") for h in r["history"]}
    assert "Star Wars (1977)" in titles  # ML-100K's most-rated movie, year joined as ML-1M spells it
    assert "recbole" not in sys.modules  # the files are read, the package never imported


# ---------------------------------------------------------------------------------------------
# The CLI

def prepare_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PREPARE), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_prepare_cli_builds_refuses_to_overwrite_and_reports_bad_input(ml1m_dir, tmp_path):
    out = tmp_path / "out"
    first = prepare_cli("--source", "synthetic:20", "--out", out)
    assert first.returncode == 0, first.stderr
    assert re.search(r"^train +\d+ +\d+ +\d+ +\d+ ", first.stdout,
                     re.MULTILINE) and "built in" in first.stdout
    refused = prepare_cli("--source", "synthetic:20", "--out", out)
    assert refused.returncode == 2 and "not empty" in refused.stderr
    assert prepare_cli("--source", "synthetic:20", "--out", out, "--force").returncode == 0

    broken = tmp_path / "ml-1m"
    shutil.copytree(ml1m_dir, broken)
    with (broken / "ratings.dat").open("a") as f:
        f.write("1::2::three::4\n")
    bad = prepare_cli("--source", broken, "--out", tmp_path / "bad")
    n_lines = len((broken / "ratings.dat").read_text().splitlines())
    assert bad.returncode == 2
    assert f"{broken / 'ratings.dat'}:{n_lines}: field 'Rating' is not an integer" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_ml1m_size_builds_in_well_under_a_minute(tmp_path):
    start = time.perf_counter()
    summary = sources.build("synthetic", tmp_path, seed=0)
    assert time.perf_counter() - start < 60
    assert summary["rating_users"] == synthetic.ML1M_USERS and summary["ratings"] > 900_000


def test_pairs_per_user_are_capped_per_split_and_independent(tmp_path):
    """One training pair per user, as the thesis trained; up to three per val/test user for power; and a
    split's pairs do not depend on the other split's cap."""
    from collections import Counter
    one = sources.build("synthetic:200", tmp_path / "one", seed=0, ranking_candidates=0)
    three = sources.build("synthetic:200", tmp_path / "three", seed=0, ranking_candidates=0,
                          train_pairs_per_user=3)
    assert one["train_pairs_per_user"] == 1 and one["eval_pairs_per_user"] == 3

    def per_user(folder, split):
        return Counter(json.loads(line)["user_id"]
                       for line in (folder / f"{split}.jsonl").read_text().splitlines())

    assert max(per_user(tmp_path / "one", "train").values()) == 1
    assert max(per_user(tmp_path / "three", "train").values()) == 3
    assert max(per_user(tmp_path / "one", "test").values()) == 3
    assert set(per_user(tmp_path / "one", "train")) == set(per_user(tmp_path / "three", "train"))
    for split in ("val", "test"):
        one_text, three_text = ((tmp_path / k / f"{split}.jsonl").read_text() for k in ("one", "three"))
        assert one_text == three_text, split
    assert one["splits"]["train"]["examples"] < three["splits"]["train"]["examples"]


def synthetic_ratings(n_users: int) -> pd.DataFrame:
    ratings, _ = sources.read_ratings(f"synthetic:{n_users}")
    return ratings


def test_the_temporal_split_trains_before_the_test_period_and_tests_within_it(tmp_path):
    """data.split=temporal: the same user-disjoint splits, and every training pair's target before the
    test period's start, every val, test and personal-task pair's at or after it (the last 20% of the
    targets' times)."""
    users_split = sources.build("synthetic:300", tmp_path / "u", seed=0, ranking_candidates=0)
    summary = sources.build("synthetic:300", tmp_path / "t", seed=0, ranking_candidates=0, split="temporal")
    start = summary["test_period_start"]
    assert summary["split"] == "temporal" and users_split["test_period_start"] is None
    recs = {s: records.load_examples(tmp_path / "t" / f"{s}.jsonl") for s in (*pairs.SPLITS, "test_matched")}
    assert all(e.extra["target_timestamp"] < start for e in recs["train"])
    # nothing of the training users' test period: no negative (disliked or not) and no side-file rating
    train_later = pd.read_csv(tmp_path / "t" / "train_ratings.csv.gz").query(f"timestamp >= {start}")
    assert train_later.empty
    full = synthetic_ratings(300)
    rated_at = {(u, i): t for u, i, t in zip(full["user_id"], full["item_id"], full["timestamp"])}
    for e in recs["train"]:
        negative = e.extra["option_b" if e.label == "A" else "option_a"]["item_id"]
        when = rated_at.get((int(e.user_id), negative))
        if e.extra["negative_kind"] == "disliked":  # a rating the model may see: made before the period
            assert when < start
        else:  # unseen popular: not rated by the user as far as anything before the period tells
            assert when is None or when >= start
    for s in ("val", "test", "test_matched"):
        assert recs[s] and all(e.extra["target_timestamp"] >= start for e in recs[s]), s
    times = sorted(e.extra["target_timestamp"] for s in pairs.SPLITS for e in recs[s])
    assert times[0] < start <= times[-1]
    users = {s: {e.user_id for e in recs[s]} for s in pairs.SPLITS}  # user-disjoint as ever
    assert not users["train"] & users["test"] and not users["train"] & users["val"]
    from dporec.report.tables import pairs_summary
    assert "temporal split: training pairs before" in pairs_summary(summary)
    with pytest.raises(UserError, match="split must be one of"):
        sources.build("synthetic:300", tmp_path / "x", seed=0, split="random")


def test_an_earlier_build_without_a_split_record_is_a_users_split(tmp_path):
    """A summary.json from before data.split existed: its folder was split by users, so a config asking
    for the temporal split disagrees with it (the stages refuse to train on it)."""
    from dporec.data import built
    sources.build("synthetic:60", tmp_path, seed=0, ranking_candidates=0)
    summary = json.loads((tmp_path / "summary.json").read_text())
    del summary["split"]
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    data = {"train_file": str(tmp_path / "train.jsonl"), "source": "synthetic:60",
            **{k: summary.get(k, v) for k, v in built.DEFAULTS.items()}}
    assert built.disagreements(data) == []
    [problem] = built.disagreements({**data, "split": "temporal"})
    assert "data.split=temporal but" in problem and "was built with split=users" in problem
