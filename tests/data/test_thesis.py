"""The thesis's own file as a source (dporec/thesis.py): split, user-id recovery from ML-1M, the CLI,
and the tiny pipeline end to end on a thesis-layout file. Every file here is synthetic
(dporec.synthetic.write_thesis_file): made-up titles in MovieLens's shapes, never real rows."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dporec import ROOT, UserError
from dporec.data import records, sources, task
from dporec.data.sources import thesis
from dporec.report.predictions import read_predictions
from tests.helpers import TINY_CONFIG, experiment_main
from tests.support import thesis_file

N_USERS = 60


@pytest.fixture(scope="module")
def thesis_src(tmp_path_factory) -> tuple[Path, Path]:
    """(contrastive_rec_train.jsonl, ml-1m folder) for 60 synthetic users; line n belongs to user n."""
    return thesis_file.write_thesis_file(tmp_path_factory.mktemp("thesis"), n_users=N_USERS, seed=0)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _line_of(pair_id: str) -> int:
    return int(pair_id.rsplit(":", 1)[1])


def test_generated_file_has_the_thesis_layout(thesis_src):
    path, _ = thesis_src
    exs = records.load_examples(path)
    assert len(exs) == N_USERS and {e.label for e in exs} == {"A"}
    assert {records.layout(e) for e in exs} == {"inline"}
    assert all(e.user_id is None and not e.extra for e in exs)
    # titles with commas inside the history: a comma split would see more than 5 movies
    assert sum(len(task.history_text(e.input).split(", ")) > 5 for e in exs) > N_USERS // 2


def test_split_is_balanced_complete_and_says_line_split_is_user_split(thesis_src, tmp_path):
    path, _ = thesis_src
    summary = sources.build(f"thesis:{path}", tmp_path, seed=3)
    splits = {s: _read(tmp_path / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [48, 6, 6]
    for s, recs in splits.items():
        n_a = sum(r["label"] == "A" for r in recs)
        assert abs(2 * n_a - len(recs)) <= 1, s
        assert summary["splits"][s]["examples"] == len(recs)
    lines = sorted(_line_of(r["id"]) for recs in splits.values() for r in recs)
    assert lines == list(range(1, N_USERS + 1))  # every line once, in exactly one split
    assert any("split by line = split by user" in n and "one line per MovieLens-1M user" in n
               for n in summary["notes"])
    # each swapped record still names the liked movie: the original line's Option A
    original = {i + 1: records.parse_record(r, "o", "o") for i, r in enumerate(_read(path))}
    for r in splits["test"]:
        ex = records.parse_record(r, "t", "t")
        assert ex.option(ex.label) == original[_line_of(r["id"])].option_a
    assert json.loads((tmp_path / "summary.json").read_text())["kind"] == "thesis"
    again = tmp_path / "again"
    sources.build(f"thesis:{path}", again, seed=3)
    assert (again / "test.jsonl").read_text() == (tmp_path / "test.jsonl").read_text()


def test_user_ids_recovered_from_ml1m_folder_and_zip(thesis_src, tmp_path):
    path, ml1m = thesis_src
    exs = records.load_examples(path)
    got = thesis.match_users(exs, ml1m)
    assert got["counts"] == {"matched": N_USERS, "unmatched": 0, "ambiguous": 0}
    assert got["user_ids"] == [str(n) for n in range(1, N_USERS + 1)]
    assert got["users_with_several_lines"] == 0
    zipped = tmp_path / "ml1m-copy.zip"  # not named ml-1m.zip: the published-MD5 check is for that name
    with zipfile.ZipFile(zipped, "w") as z:
        for name in ("ratings.dat", "movies.dat"):
            z.write(ml1m / name, f"ml-1m/{name}")
    assert thesis.match_users(exs, zipped)["user_ids"] == got["user_ids"]


def test_recovery_reports_unmatched_and_users_with_two_lines_and_keeps_them_together(thesis_src, tmp_path):
    path, ml1m = thesis_src
    lines = path.read_text().splitlines()
    unknown = json.loads(lines[4])
    unknown["input"] = unknown["input"].replace("History: ", "History: Nowhere, The (1901), ", 1)
    lines[4] = json.dumps(unknown)
    # user 7 now has two lines (a user whose line matches that user alone: a copy of a line that needed
    # the tie-break is reported ambiguous instead, since the tie-break excludes users other lines claim)
    lines.append(lines[6])
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = sources.build(f"thesis:{edited}?ml1m={ml1m}", out, seed=0)
    rec = summary["recovery"]
    assert rec["counts"] == {"matched": N_USERS, "unmatched": 1, "ambiguous": 0}
    assert rec["users_with_several_lines"] == 1
    assert any("WARNING: 1 users have several lines" in n for n in summary["notes"])
    where = {s: [r for r in _read(out / f"{s}.jsonl") if r.get("user_id") == "7"] for s in ("train", "val",
                                                                                            "test")}
    assert sorted(len(v) for v in where.values()) == [0, 0, 2]
    users = {s: {r.get("user_id") for r in _read(out / f"{s}.jsonl")} - {None} for s in ("train", "val",
                                                                                         "test")}
    assert not (users["train"] & users["test"]) and not (users["train"] & users["val"])


def test_recovery_writes_the_history_genres_that_make_claims_checkable(thesis_src, tmp_path):
    """With ?ml1m= each matched line carries its history's movies and genres from movies.dat (the prompt
    still shows titles only), so the judge checks the thesis wording's claims; without it they are
    unchecked."""
    from dporec.data import judge
    from dporec.data.sources import movielens
    path, ml1m = thesis_src
    summary = sources.build(f"thesis:{path}?ml1m={ml1m}", tmp_path / "r", seed=0)
    assert summary["recovery"]["histories_with_genres"] == N_USERS
    _, movies = movielens.read(ml1m)
    recovered = records.load_examples(tmp_path / "r" / "test.jsonl")
    for ex in recovered:
        titles = [m["title"] for m in ex.extra["history"]]
        assert ", ".join(titles) == task.history_text(ex.input)  # the prompt's titles, in its order
        assert all(m["genres"] == list(movies[m["item_id"]].genres) for m in ex.extra["history"])
        assert task.shown_genres(task.history_text(ex.input)) == []
        j = judge.judge(ex.output, ex)
        assert j.wording == "thesis" and j.checked and j.claims == 2
    sources.build(f"thesis:{path}", tmp_path / "plain", seed=0)
    for ex in records.load_examples(tmp_path / "plain" / "test.jsonl"):
        j = judge.judge(ex.output, ex)
        assert j.wording == "thesis" and j.unchecked == 2 and not j.right_and_truthful


def test_history_reading_joins_comma_pieces_into_known_titles():
    index = {"Hello, Stranger (1943)": [1], "Stranger (1943)": [2], "Bug's Life, A (1998)": [3],
             "Hello (1950)": [4]}
    readings = thesis.read_history("Bug's Life, A (1998), Hello, Stranger (1943)", index)
    assert readings == [[[3], [1]]]
    assert thesis.read_history("Hello (1950), Stranger (1943)", index) == [[[4], [2]]]
    assert thesis.read_history("Unknown, Film (2000)", index) == []


def test_source_strings():
    assert thesis.parse_source("thesis:a/b.jsonl") == (Path("a/b.jsonl"), None)
    assert thesis.parse_source("thesis:a.jsonl?ml1m=ml-1m.zip") == (Path("a.jsonl"), Path("ml-1m.zip"))
    with pytest.raises(UserError, match="expected thesis:FILE"):
        thesis.parse_source("thesis:a.jsonl?ratings=x")


def test_prepare_cli_prints_split_and_recovery(thesis_src, tmp_path):
    path, ml1m = thesis_src
    run = subprocess.run([sys.executable, "data/prepare_movielens.py", "--source", f"thesis:{path}", "--ml1m",
                          str(ml1m), "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"{N_USERS} of {N_USERS} lines matched exactly one user" in run.stdout
    assert "split by user: every line has a user id" in run.stdout
    refused = subprocess.run([sys.executable, "data/prepare_movielens.py", "--source", "synthetic:5",
                              "--ml1m", str(ml1m), "--out", str(tmp_path / "p")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--ml1m goes with --source thesis:FILE" in refused.stderr


def test_thesis_file_config_points_at_a_thesis_source():
    from dporec.config import load_config
    cfg = load_config(ROOT / "configs" / "thesis_file.yaml")
    assert cfg["data"]["source"].startswith("thesis:")
    folder = {Path(cfg["data"][k]).parent for k in ("train_file", "val_file", "test_file")}
    assert len(folder) == 1 and [Path(cfg["data"][f"{s}_file"]).name for s in ("train", "val", "test")] == [
        "train.jsonl", "val.jsonl", "test.jsonl"]
    assert set(cfg["eval"]["models"]) >= {"sft", "dpo"}


def test_tiny_pipeline_end_to_end_on_a_thesis_file(thesis_src, tiny_model, tmp_path, capsys):
    """run_experiment.py splits the thesis file, trains SFT and DPO, scores held-out lines in both orders."""
    path, _ = thesis_src
    src = tmp_path / "contrastive_rec_train.jsonl"
    shutil.copy(path, src)
    folder, out = tmp_path / "split", tmp_path / "run"
    argv = ["--config", str(TINY_CONFIG), f"model.name={tiny_model}", f"output_dir={out}",
            f"data.source=thesis:{src}", *(f"data.{s}_file={folder / f'{s}.jsonl'}" for s in ("train", "val",
                                                                                              "test")),
            "sft.max_steps=2", "dpo.max_steps=2", "data.max_train_examples=12", "data.max_val_examples=4",
            "eval.bootstrap_samples=100", "train.eval_steps=100"]
    assert experiment_main(argv) == 0
    printed = capsys.readouterr().out
    assert "[data] split by line = split by user" in printed and "SFT vs DPO" in printed
    test_lines = {r["id"] for r in _read(folder / "test.jsonl")}
    train_lines = {r["id"] for r in _read(folder / "train.jsonl")}
    assert len(test_lines) == 6 and not test_lines & train_lines
    rows = read_predictions(out / "eval" / "predictions.csv")
    assert set(rows) == {"base", "sft", "dpo"}
    for model_rows in rows.values():
        orders = {(r["pair_id"], r["order"]) for r in model_rows}
        assert orders == {(p, o) for p in test_lines for o in ("original", "swapped")}
    results = json.loads((out / "eval" / "results.json").read_text())
    assert results["comparison"]["n_pairs"] == 6
    dpo_log = json.loads((out / "dpo" / "metrics.json").read_text())
    assert dpo_log["steps"] == 2


def test_check_dataset_advises_splitting_the_thesis_file_only_before_it_is_split(thesis_src, tmp_path):
    from dporec.data import inspect
    from dporec.report.tables import dataset_lines
    path, _ = thesis_src
    advice = "to train and evaluate on it, split it"
    assert any(advice in line for line in dataset_lines(path, inspect.describe(records.load_examples(path),
                                                                               path)))
    sources.build(f"thesis:{path}", tmp_path, seed=3)
    built = tmp_path / "train.jsonl"
    assert not any(advice in line for line in dataset_lines(built, inspect.describe(
        records.load_examples(built), built)))
