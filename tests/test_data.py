"""The record format (dporec.data) and data/check_dataset.py on good, biased and broken files."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dporec import UserError, data

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "data" / "check_dataset.py"

MOVIES = [("Heat (1995)", "Action|Crime|Thriller"), ("Casper (1995)", "Children's"),
          ("Toy Story (1995)", "Animation|Children's|Comedy"), ("Sabrina (1995)", "Comedy|Romance"),
          ("GoldenEye (1995)", "Action|Adventure|Thriller")]


def precursor_record(i: int) -> dict:
    """A record exactly as the precursor wrote them: correct movie always in Option A."""
    (good, good_genres), (bad, bad_genres) = MOVIES[i % 5], MOVIES[(i + 1) % 5]
    return {
        "instruction": data.INSTRUCTION,
        "input": (f"History: Toy Story (1995) (Animation|Children's|Comedy), Sabrina (1995) (Comedy|Romance)\n"
                  f"Option A: {good} ({good_genres}).\nOption B: {bad} ({bad_genres})."),
        "output": (f"The better recommendation is Option A. Reasoning: The user has shown a strong preference "
                   f"for themes found in {good}. Option B ({bad_genres}) does not align with their recent "
                   f"viewing patterns."),
    }


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def always_a_file(tmp_path: Path, n: int = 21) -> Path:
    return write_lines(tmp_path / "always_a.jsonl", [json.dumps(precursor_record(i)) for i in range(n)])


def check_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def correct_title(ex: data.Example) -> str:
    """The precursor put the correct movie's title in its reasoning: where is it now?"""
    return ex.option(ex.label).rsplit(" (", 1)[0]


# ---------------------------------------------------------------------------------------------
# swap, chosen/rejected, balance

def test_swap_flips_label_and_exchanges_option_texts():
    ex = data.parse_record(precursor_record(0), "x.jsonl:1", "x.jsonl:1")
    s = data.swap(ex)
    assert (s.label, s.option_a, s.option_b) == ("B", ex.option_b, ex.option_a)
    assert "Option A: Casper (1995) (Children's)." in s.input
    assert "Option B: Heat (1995) (Action|Crime|Thriller)." in s.input
    assert s.output.startswith("The better recommendation is Option B.")
    assert "Option A (Children's) does not align" in s.output
    assert data.parse_record({"instruction": s.instruction, "input": s.input, "output": s.output},
                             "y", "y").label == "B"
    assert data.swap(s) == ex


def test_swap_exchanges_structured_fields_and_reasons():
    rec = precursor_record(1)
    rec.update(reasons={"A": "Reasoning: for A.", "B": "Reasoning: for B."}, option_a={"item_id": 1},
               option_b={"item_id": 2})
    rec["output"] = data.answer_text("A", "Reasoning: for A.")
    ex = data.parse_record(rec, "x.jsonl:1", "x.jsonl:1")
    s = data.swap(ex)
    assert s.reasons == {"A": "Reasoning: for B.", "B": "Reasoning: for A."}
    assert (s.extra["option_a"], s.extra["option_b"]) == ({"item_id": 2}, {"item_id": 1})
    assert data.chosen_output(s) == data.answer_text("B", "Reasoning: for A.")
    assert data.swap(s) == ex


@pytest.mark.parametrize("i", range(5))
def test_rejected_differs_from_chosen_and_argues_for_the_other_option(i):
    ex = data.parse_record(precursor_record(i), "x:1", "x:1")
    for e in (ex, data.swap(ex)):
        chosen, rejected = data.chosen_output(e), data.rejected_output(e)
        assert chosen != rejected
        assert rejected.startswith(data.answer_text(e.other))
        # the rejected answer praises the wrong movie (the precursor's replaces praised the right one)
        wrong_title = e.option(e.other).rsplit(" (", 1)[0]
        assert f"themes found in {wrong_title}." in rejected


@pytest.mark.parametrize("n", [1, 2, 20, 21])
def test_random_balanced_positions_half_a(n):
    exs = [data.parse_record(precursor_record(i), f"x:{i}", f"x:{i}") for i in range(n)]
    out = data.random_balanced_positions(exs, random.Random(0))
    for k in range(1, n + 1):  # every prefix, since scripts take the first N rows of a file
        b = data.balance(out[:k])
        assert abs(b["A"] - b["B"]) <= 1
    by_id = {e.pair_id: correct_title(e) for e in exs}
    assert sorted(e.pair_id for e in out) == sorted(by_id)
    assert all(correct_title(e) == by_id[e.pair_id] for e in out)


def test_rebalance_always_a_gives_half_and_keeps_answers_correct(tmp_path):
    exs = data.load_examples(always_a_file(tmp_path))
    assert data.balance_warning(exs, "always_a.jsonl") is not None
    fixed = data.rebalance(exs)
    b = data.balance(fixed)
    assert abs(b["A"] - b["B"]) <= 1
    assert data.balance_warning(fixed, "fixed") is None
    for before, after in zip(exs, fixed):
        assert correct_title(after) == correct_title(before)
        assert f"themes found in {correct_title(after)}." in data.chosen_output(after)


# ---------------------------------------------------------------------------------------------
# check_dataset.py

def test_check_cli_warns_on_always_a_and_rebalances(tmp_path):
    src = always_a_file(tmp_path)
    first = check_cli(src)
    assert first.returncode == 0, first.stderr
    assert "WARNING" in first.stderr and "21/21" in first.stderr

    out = tmp_path / "balanced.jsonl"
    fixed = check_cli(src, "--rebalance", out)
    assert fixed.returncode == 0, fixed.stderr
    b = data.balance(data.load_examples(out))
    assert (b["A"], b["B"]) in ((10, 11), (11, 10))
    again = check_cli(out)
    assert again.returncode == 0 and "WARNING" not in again.stderr

    refused = check_cli(src, "--rebalance", out)
    assert refused.returncode != 0 and "never overwrites" in refused.stderr


BROKEN = {
    "bad JSON": ('{"instruction": "x", "input": ', "not valid JSON"),
    "missing field": (json.dumps({k: v for k, v in precursor_record(0).items() if k != "output"}),
                      "missing field 'output'"),
    "field not a string": (json.dumps({**precursor_record(0), "input": 5}), "field 'input' must be a string"),
    "no Option A": (json.dumps({**precursor_record(0), "input": "History: x\nOption B: Casper (1995)."}),
                    "no parseable 'Option A: ...' line"),
    "no Option B": (json.dumps({**precursor_record(0), "input": "History: x\nOption A: Heat (1995)."}),
                    "no parseable 'Option B: ...' line"),
    "output names no option": (json.dumps({**precursor_record(0), "output": "Heat, clearly."}),
                               "field 'output' names no option"),
    "output names both": (json.dumps({**precursor_record(0), "output": "Option A or Option B, hard to say."}),
                          "field 'output' names both options"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_each_malformed_line_gives_file_line_message_and_nonzero_exit(tmp_path, kind):
    bad_line, message = BROKEN[kind]
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(precursor_record(0)), bad_line])
    with pytest.raises(UserError, match=re.escape(f"{path}:2: ") + ".*" + re.escape(message)):
        data.load_examples(path)
    result = check_cli(path)
    assert result.returncode != 0
    assert f"{path}:2: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_check_cli_reports_users_shared_between_files(tmp_path):
    def rec(i, user):
        return json.dumps({**precursor_record(i), "id": f"u{user}-{i}", "user_id": str(user)})
    train = write_lines(tmp_path / "train.jsonl", [rec(0, 1), rec(1, 2)])
    test = write_lines(tmp_path / "test.jsonl", [rec(2, 2), rec(3, 3)])
    leak = check_cli(train, test)
    assert leak.returncode == 1
    assert "SPLIT LEAK" in leak.stderr and "share 1 (e.g. 2)" in leak.stderr
    clean = write_lines(tmp_path / "val.jsonl", [rec(4, 4)])
    ok = check_cli(train, clean)
    assert ok.returncode == 0 and "user overlap: none" in ok.stdout
