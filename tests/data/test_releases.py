"""Every MovieLens release as a source (dporec.data.sources.RELEASES, dporec.data.sources.movielens): each
release's exact format, written synthetically (dporec.data.sources.synthetic.write_release), built through
data/prepare_movielens.py's own entry point; its zip's MD5; a malformed line in each format named by file
and line; the user cap; the one liked/disliked rule on half stars. No MovieLens file is used."""
from __future__ import annotations

import csv
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dporec import ROOT, UserError, cli
from dporec.analysis import rank_metrics
from dporec.config import load_config
from dporec.data import built, candidates, pairs, ratings, sources
from dporec.data.sources import RELEASES, movielens, synthetic
from dporec.preflight import cost

SMALL = {"n_users": 120, "n_movies": 300, "ratings_per_user": 60}


@pytest.fixture(scope="module")
def zips(tmp_path_factory) -> dict[str, Path]:
    """{release name: a synthetic zip in that release's format, named as GroupLens names it}."""
    root = tmp_path_factory.mktemp("releases")
    return {r.name: synthetic.write_release(root / r.name, r.name, seed=1, zipped=True, **SMALL)
            for r in RELEASES}


@pytest.fixture(scope="module")
def folders(zips, tmp_path_factory) -> dict[str, Path]:
    """{release name: the folder its zip unpacks into}."""
    root = tmp_path_factory.mktemp("unpacked")
    out = {}
    for name, archive in zips.items():
        with zipfile.ZipFile(archive) as z:
            z.extractall(root / name)
        out[name] = root / name / sources.release(name).folder
    return out


def prepare(*args) -> int:
    """data/prepare_movielens.py, in process (its main is cli.prepare_movielens)."""
    return cli.prepare_movielens([str(a) for a in args])


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------
# Each release's format builds through data/prepare_movielens.py

@pytest.mark.parametrize("name", [r.name for r in RELEASES])
def test_prepare_builds_every_release_from_its_zip(name, zips, tmp_path, capsys):
    rel = sources.release(name)
    out = tmp_path / "out"
    assert prepare("--source", zips[name], "--out", out, "--seed", 3, "--allow-md5-mismatch") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["release"] == name and summary["rating_users"] == SMALL["n_users"]
    assert set(summary["phases"]) == {"read", "pairs", "splits", "candidates", "baselines"}
    assert re.search(r"\[data\] pairs: [\d.]+ s", capsys.readouterr().out)  # one line per phase
    split_users = {s: {r["user_id"] for r in lines(out / f"{s}.jsonl")} for s in pairs.SPLITS}
    assert all(split_users[s] for s in pairs.SPLITS)
    assert not (split_users["train"] & split_users["val"] or split_users["train"] & split_users["test"]
                or split_users["val"] & split_users["test"])
    for s in pairs.SPLITS:
        counts = summary["splits"][s]
        assert abs(counts["A"] - counts["B"]) <= 1
    sets = lines(out / candidates.FILE)
    assert sets and {s["like_threshold"] for s in sets} == {4}
    stars = {c["rating"] for s in sets for c in s["candidates"]}
    assert any(isinstance(x, float) for x in stars) == rel.half_stars  # 3.5 stays 3.5; ML-1M's stay whole
    side = set(pd.read_csv(out / ratings.RATINGS_FILE)["user_id"].astype(str))  # the baselines' ratings
    assert split_users["train"] <= side and not side & (split_users["val"] | split_users["test"])


def test_csv_titles_with_commas_quotes_accents_and_no_genres_are_read_exactly(folders):
    """movies.csv read by an independent reader (csv module) and by the source agree on every title."""
    folder = folders["ml-25m"]
    with (folder / "movies.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    _, movies = movielens.read(folder)
    assert len(movies) == len(rows)
    for movie_id, title, genres in rows:
        got = movies[int(movie_id)]
        assert got.title == title
        assert got.genres == (() if genres == "(no genres listed)" else tuple(genres.split("|")))
    titles = [m.title for m in movies.values()]
    assert any("," in t for t in titles) and any('"' in t for t in titles) and any("é" in t for t in titles)
    assert any(not m.genres for m in movies.values())


def test_the_same_ratings_in_every_format_build_the_same_pairs(zips, tmp_path):
    """ML-10M's '::' files and the CSV releases' files of the same synthetic ratings: the same splits."""
    for name in ("ml-10m", "ml-20m", "ml-32m"):
        sources.build(str(zips[name]), tmp_path / name, seed=0, allow_md5_mismatch=True)
    for split in (*pairs.SPLITS, "ranking_test"):
        texts = {(tmp_path / n / f"{split}.jsonl").read_bytes() for n in ("ml-10m", "ml-20m", "ml-32m")}
        assert len(texts) == 1


def test_a_folder_is_read_as_its_zip(zips, folders, tmp_path):
    a = sources.build(str(zips["ml-20m"]), tmp_path / "zip", seed=0, allow_md5_mismatch=True)
    # the folder the zip was unpacked in: the release's own folder inside it is found
    b = sources.build(str(folders["ml-20m"].parent), tmp_path / "folder", seed=0)
    assert (tmp_path / "zip" / "train.jsonl").read_text() == (tmp_path / "folder" / "train.jsonl").read_text()
    assert a["md5"].startswith("differs") and b["md5"].startswith("not checked: an unpacked folder")


# ---------------------------------------------------------------------------------------------
# Which release, and its checksum

def test_md5_is_checked_for_a_zip_named_as_published(zips, tmp_path):
    for name in ("ml-10m", "ml-25m", "ml-32m"):
        rel = sources.release(name)
        message = re.escape(f"{zips[name]}: MD5 is ") + r"\w{32}, but the published "
        with pytest.raises(UserError, match=message + re.escape(f"{name}.zip has {rel.md5}")):
            sources.build(str(zips[name]), tmp_path / name)
    renamed = tmp_path / "my-copy.zip"
    shutil.copy(zips["ml-25m"], renamed)  # told by the folder inside; not the published file, so not checked
    summary = sources.build(str(renamed), tmp_path / "renamed", seed=0)
    assert summary["release"] == "ml-25m" and summary["md5"].startswith("not checked: only a zip named")
    small = sources.build(str(zips["ml-latest-small"]), tmp_path / "small", seed=0)
    assert small["md5"] == f"not checked: {sources.release('ml-latest-small').md5_note}"


def test_every_release_is_listed_with_its_address_and_the_readme_table_matches():
    for r in RELEASES:
        assert r.url == f"https://files.grouplens.org/datasets/movielens/{r.name}.zip"
        assert r.md5 is None or re.fullmatch(r"[0-9a-f]{32}", r.md5)
        assert r.md5 or r.md5_note  # no checksum without saying why
    readme = (ROOT / "README.md").read_text()
    for r in RELEASES:
        row = next((ln for ln in readme.splitlines() if ln.startswith("|") and r.url in ln), None)
        assert row, f"README's data table has no row for {r.name} ({r.url})"
        assert f"`{r.folder}/`" in row
    assert all(r.name in sources.forms() for r in RELEASES)


def test_a_folder_that_is_no_release_and_a_missing_zip_say_what_to_do(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no MovieLens ratings here: expected ratings.dat and movies.dat"):
        movielens.read(tmp_path / "empty")
    with pytest.raises(UserError, match=re.escape("https://files.grouplens.org/datasets/movielens/ml-25m.zip")):
        movielens.read(tmp_path / "data" / "ml-25m.zip")


# ---------------------------------------------------------------------------------------------
# A malformed line in each format, named by file and line

def broken_copy(folder: Path, tmp_path: Path, file: str, line: int, text: str) -> Path:
    """A copy of the release folder with line `line` (1-based) of `file` replaced by `text`."""
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    rows = (copy / file).read_text(encoding="utf-8").splitlines()
    rows[line - 1] = text
    (copy / file).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return copy


HALF = "must be 0.5-5.0 in half stars"


@pytest.mark.parametrize("name, file, line, text, problem", [
    ("ml-10m", "ratings.dat", 4, "1::8::5.5::1646897530", f"field 'Rating' {HALF}, got 5.5"),
    ("ml-10m", "ratings.dat", 4, "1::8::4.25::1646897530", f"field 'Rating' {HALF}"),
    ("ml-10m", "ratings.dat", 4, "1::8::4.5", "expected 4 '::'-separated fields"),
    ("ml-10m", "ratings.dat", 4, "::8::4.5::1646897530", "field 'UserID' is empty (a rating with no user)"),
    ("ml-10m", "movies.dat", 3, "7::Synthetic Movie 7 (1990)", "expected 3 '::'-separated fields"),
    ("ml-25m", "ratings.csv", 5, "1,8,9.0,1646897530", f"field 'rating' {HALF}, got 9.0"),
    ("ml-25m", "ratings.csv", 5, "1,8,0.0,1646897530", f"field 'rating' {HALF}, got 0.0"),
    ("ml-25m", "ratings.csv", 5, "1,8,4.0", "expected 4 comma-separated fields"),
    ("ml-25m", "ratings.csv", 5, ",8,4.0,1646897530", "field 'userId' is empty (a rating with no user)"),
    ("ml-25m", "ratings.csv", 5, "1,eight,4.0,1646897530", "field 'movieId' is not an integer: 'eight'"),
    ("ml-25m", "ratings.csv", 1, "user,movie,rating,time",
     "expected the header userId,movieId,rating,timestamp"),
    ("ml-25m", "movies.csv", 3, "4,Synthetic Movie 4, The (1990),Drama",
     "expected 3 comma-separated fields (movieId,title,genres), got 4; a title with a comma must be in "
     "double quotes"),
    ("ml-25m", "movies.csv", 3, '4,"Synthetic Movie 4, The (1990),Drama',
     "a double quote opened on this line"),
    ("ml-32m", "movies.csv", 2, "1,,Drama", "empty title or genres"),
    ("ml-latest-small", "ratings.csv", 3, "1,999999,4.0,1646897530", "movieId 999999 is not in movies.csv"),
])
def test_a_malformed_line_is_named_by_file_and_line(folders, tmp_path, name, file, line, text, problem):
    folder = broken_copy(folders[name], tmp_path, file, line, text)
    with pytest.raises(UserError, match=re.escape(f"{folder / file}:{line}: {problem}")):
        movielens.read(folder)


def test_a_malformed_line_inside_a_zip_is_named_by_zip_member_and_line(folders, tmp_path):
    folder = broken_copy(folders["ml-32m"], tmp_path, "ratings.csv", 7, "1,8,6,1646897530")
    archive = tmp_path / "broken.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in folder.iterdir():
            z.write(p, f"ml-32m/{p.name}")
    with pytest.raises(UserError, match=re.escape(f"{archive}/ml-32m/ratings.csv:7: field 'rating' must be")):
        movielens.read(archive)


# ---------------------------------------------------------------------------------------------
# The user cap

def test_the_user_cap_draws_a_seeded_sample_and_the_summary_says_so(zips, tmp_path):
    capped = sources.build(str(zips["ml-32m"]), tmp_path / "a", seed=5, max_users=50, allow_md5_mismatch=True)
    assert capped["max_users"] == 50 and capped["rating_users"] == 50
    assert capped["source_users"] == SMALL["n_users"] and capped["ratings"] < capped["source_ratings"]
    sources.build(str(zips["ml-32m"]), tmp_path / "b", seed=5, max_users=50, allow_md5_mismatch=True)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    whole = sources.build(str(zips["ml-32m"]), tmp_path / "c", seed=5, max_users=10_000,
                          allow_md5_mismatch=True)
    assert whole["rating_users"] == whole["source_users"] == SMALL["n_users"]
    users = {r["user_id"] for s in pairs.SPLITS for r in lines(tmp_path / "a" / f"{s}.jsonl")}
    assert len(users) <= 50


def test_the_user_cap_is_a_config_key_the_builders_and_the_time_prediction_read(tmp_path):
    cfg = load_config(None, ["data.source=data/ml-25m.zip", "data.max_users=6040",
                             f"data.train_file={tmp_path}/d/train.jsonl"])
    assert sources.config_build(cfg)["max_users"] == 6040
    shape = cost.expected_shape(cfg)
    assert (shape.train, shape.test, shape.ranking_users) == (cost.ML1M_BUILD.train, cost.ML1M_BUILD.test,
                                                              cost.ML1M_BUILD.ranking_users)
    full = cost.expected_shape(load_config(None, ["data.source=data/ml-25m.zip"]))
    assert full.train == round(cost.ML1M_BUILD.train * 162_541 / 6040) and "162,541 users" in full.measured
    assert cost.expected_shape(load_config(None, ["data.source=somewhere/else.zip"])) is None
    with pytest.raises(UserError, match="'data.max_users' must be"):
        load_config(None, ["data.max_users=0"])
    built_folder = tmp_path / "d"
    built_folder.mkdir()
    built.write_summary(built_folder, {"max_users": None, **{k: cfg["data"][k] for k in built.BUILD_KEYS
                                                             if k != "max_users"}})
    assert any("max_users" in p for p in built.disagreements(cfg["data"]))  # built from every user


def test_the_thesis_file_refuses_a_user_cap(tmp_path):
    with pytest.raises(UserError, match="max_users applies to ratings sources"):
        sources.build("thesis:x.jsonl", tmp_path, max_users=10)


# ---------------------------------------------------------------------------------------------
# Half stars: one rule for liked and disliked

def test_thresholds_are_config_keys_with_ranges():
    cfg = load_config(None, ["data.like_threshold=4.5", "data.dislike_threshold=1.5"])
    assert sources.config_build(cfg)["like_threshold"] == 4.5
    for bad, message in [("data.like_threshold=5.5", "'data.like_threshold' must be"),
                         ("data.dislike_threshold=0", "'data.dislike_threshold' must be")]:
        with pytest.raises(UserError, match=message):
            load_config(None, [bad])
    with pytest.raises(UserError, match=re.escape("'data.dislike_threshold' (4) must be below 'data.like")):
        load_config(None, ["data.dislike_threshold=4", "data.like_threshold=4"])


def test_half_stars_between_the_thresholds_are_neither_liked_nor_disliked(zips, tmp_path):
    out = tmp_path / "out"
    sources.build(str(zips["ml-20m"]), out, seed=2, like_threshold=4.5, dislike_threshold=1.5,
                  allow_md5_mismatch=True)
    with zipfile.ZipFile(zips["ml-20m"]) as z:
        frame = pd.read_csv(z.open("ml-20m/ratings.csv"))
    columns = frame[["userId", "movieId", "rating"]].itertuples(False)
    truth = {(str(u), int(i)): float(r) for u, i, r in columns}
    recs = [r for s in (*pairs.SPLITS, "test_matched") for r in lines(out / f"{s}.jsonl")]
    assert recs
    for r in recs:
        liked_option = r["option_a"] if r["label"] == "A" else r["option_b"]
        other = r["option_b"] if r["label"] == "A" else r["option_a"]
        assert truth[(r["user_id"], liked_option["item_id"])] >= 4.5
        assert all(truth[(r["user_id"], h["item_id"])] >= 4.5 for h in r["history"])
        if r["negative_kind"] in ("disliked", "matched"):
            assert truth[(r["user_id"], other["item_id"])] <= 1.5
    assert json.loads((out / ratings.META_FILE).read_text())["like_threshold"] == 4.5
    sets = lines(out / candidates.FILE)
    assert {s["like_threshold"] for s in sets} == {4.5}
    assert all(truth[(s["user_id"], h["item_id"])] >= 4.5 for s in sets for h in s["history"])


def test_hit_at_1_applies_the_builds_threshold():
    stars = [4.0, 3.5, 2.0]
    assert rank_metrics.hit_at_1([3, 2, 1], stars) == 1.0  # 4.0 is liked at the default 4
    assert rank_metrics.hit_at_1([3, 2, 1], stars, liked=4.5) == 0.0
    assert rank_metrics.hit_at_1([2, 3, 1], stars) == 0.0  # 3.5 is never liked at 4
    assert rank_metrics.chance(stars, liked=3.5)["hit@1"] == pytest.approx(2 / 3)
    assert rank_metrics.ndcg_at_k([3, 2, 1], [0.5, 1.0, 5.0]) >= 0  # half a star adds no gain, not a loss
    assert np.array_equal(ratings.liked([3.5, 4.0, 4.5], 4), [False, True, True])
    assert np.array_equal(ratings.disliked([1.5, 2.0, 2.5], 2), [True, True, False])
