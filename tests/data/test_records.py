"""The record format (dporec.data) and data/check_dataset.py on good, biased and broken files."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dporec import ROOT, UserError
from dporec.data import balance, records, task
from tests.support import thesis_file

CHECK = ROOT / "data" / "check_dataset.py"

MOVIES = [("Heat (1995)", "Action|Crime|Thriller"), ("Casper (1995)", "Children's"),
          ("Toy Story (1995)", "Animation|Children's|Comedy"), ("Sabrina (1995)", "Comedy|Romance"),
          ("GoldenEye (1995)", "Action|Adventure|Thriller")]


def precursor_record(i: int) -> dict:
    """A record exactly as the precursor wrote them: correct movie always in Option A."""
    (good, good_genres), (bad, bad_genres) = MOVIES[i % 5], MOVIES[(i + 1) % 5]
    return {
        "instruction": task.INSTRUCTION,
        "input": ("History: Toy Story (1995) (Animation|Children's|Comedy), Sabrina (1995) "
                  f"(Comedy|Romance)\nOption A: {good} ({good_genres}).\nOption B: {bad} ({bad_genres})."),
        "output": ("The better recommendation is Option A. Reasoning: The user has shown a strong "
                   f"preference for themes found in {good}. Option B ({bad_genres}) does not align with "
                   "their recent viewing patterns."),
    }


TITLES = thesis_file.thesis_titles(40, seed=1)  # made-up, with commas, colons, periods, parentheses
GENRES = ["Fantasy|Musical", "Drama|Adventure", "Comedy", "Action|Crime|Thriller", "Children's|Sci-Fi"]


def thesis_record(i: int) -> dict:
    """A line in the thesis's own layout: history titles only, both options inline, every answer A."""
    history = ", ".join(TITLES[(i + k) % 20] for k in range(5))
    a, b = TITLES[20 + i % 10], TITLES[30 + i % 10]
    ga, gb = GENRES[i % 5], GENRES[(i + 2) % 5]
    return {"instruction": task.INSTRUCTION,
            "input": f"History: {history}. Option A: {a} ({ga}). Option B: {b} ({gb}).",
            "output": ("The better recommendation is Option A. Reasoning: The user has shown a strong "
                       f"preference for themes found in {ga}. Option B ({gb}) "
                       "does not align with their recent viewing patterns.")}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def always_a_file(tmp_path: Path, n: int = 21) -> Path:
    return write_lines(tmp_path / "always_a.jsonl", [json.dumps(precursor_record(i)) for i in range(n)])


def check_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def correct_title(ex: records.Example) -> str:
    """The precursor put the correct movie's title in its reasoning: where is it now?"""
    return ex.option(ex.label).rsplit(" (", 1)[0]


# ---------------------------------------------------------------------------------------------
# swap, chosen/rejected, balance

def test_swap_flips_label_and_exchanges_option_texts():
    ex = records.parse_record(precursor_record(0), "x.jsonl:1", "x.jsonl:1")
    s = records.swap(ex)
    assert (s.label, s.option_a, s.option_b) == ("B", ex.option_b, ex.option_a)
    assert "Option A: Casper (1995) (Children's)." in s.input
    assert "Option B: Heat (1995) (Action|Crime|Thriller)." in s.input
    assert s.output.startswith("The better recommendation is Option B.")
    assert "Option A (Children's) does not align" in s.output
    assert records.parse_record({"instruction": s.instruction, "input": s.input, "output": s.output},
                             "y", "y").label == "B"
    assert records.swap(s) == ex


def test_swap_exchanges_structured_fields_and_reasons():
    rec = precursor_record(1)
    rec.update(reasons={"A": "Reasoning: for A.", "B": "Reasoning: for B."}, option_a={"item_id": 1},
               option_b={"item_id": 2})
    rec["output"] = task.answer_text("A", "Reasoning: for A.")
    ex = records.parse_record(rec, "x.jsonl:1", "x.jsonl:1")
    s = records.swap(ex)
    assert s.reasons == {"A": "Reasoning: for B.", "B": "Reasoning: for A."}
    assert (s.extra["option_a"], s.extra["option_b"]) == ({"item_id": 2}, {"item_id": 1})
    assert records.chosen_output(s) == task.answer_text("B", "Reasoning: for A.")
    assert records.swap(s) == ex


@pytest.mark.parametrize("i", range(5))
def test_rejected_differs_from_chosen_and_argues_for_the_other_option(i):
    ex = records.parse_record(precursor_record(i), "x:1", "x:1")
    for e in (ex, records.swap(ex)):
        chosen, rejected = records.chosen_output(e), records.rejected_output(e)
        assert chosen != rejected
        assert rejected.startswith(task.answer_text(e.other))
        # the rejected answer praises the wrong movie (the precursor's replaces praised the right one)
        wrong_title = e.option(e.other).rsplit(" (", 1)[0]
        assert f"themes found in {wrong_title}." in rejected


@pytest.mark.parametrize("n", [1, 2, 20, 21])
def test_random_balanced_positions_half_a(n):
    exs = [records.parse_record(precursor_record(i), f"x:{i}", f"x:{i}") for i in range(n)]
    out = balance.random_balanced_positions(exs, random.Random(0))
    for k in range(1, n + 1):  # every prefix, since scripts take the first N rows of a file
        b = balance.balance(out[:k])
        assert abs(b["A"] - b["B"]) <= 1
    by_id = {e.pair_id: correct_title(e) for e in exs}
    assert sorted(e.pair_id for e in out) == sorted(by_id)
    assert all(correct_title(e) == by_id[e.pair_id] for e in out)


def test_rebalance_always_a_gives_half_and_keeps_answers_correct(tmp_path):
    exs = records.load_examples(always_a_file(tmp_path))
    assert balance.balance_warning(exs, "always_a.jsonl") is not None
    fixed = balance.rebalance(exs)
    b = balance.balance(fixed)
    assert abs(b["A"] - b["B"]) <= 1
    assert balance.balance_warning(fixed, "fixed") is None
    for before, after in zip(exs, fixed):
        assert correct_title(after) == correct_title(before)
        assert f"themes found in {correct_title(after)}." in records.chosen_output(after)


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
    b = balance.balance(records.load_examples(out))
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
        records.load_examples(path)
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


# ---------------------------------------------------------------------------------------------
# The thesis's own layout (inline options) and hand-made variants

def test_thesis_layout_parses_without_splitting_history_on_commas():
    rec = thesis_record(3)
    ex = records.parse_record(rec, "t.jsonl:1", "t.jsonl:1")
    assert ex.label == "A" and records.layout(ex) == "inline"
    assert ex.option_a == f"{TITLES[23]} ({GENRES[3]})" and ex.option_b == f"{TITLES[33]} ({GENRES[0]})"
    assert task.history_text(ex.input) == ", ".join(TITLES[3 + k] for k in range(5))
    assert any("," in t for t in TITLES[3:8]) and any(":" in t or "." in t[:-7] for t in TITLES[3:8])


def test_both_layouts_give_the_same_options():
    inline = records.parse_record(thesis_record(0), "a:1", "a:1")
    own = {**thesis_record(0), "input": f"History: x, y\nOption A: {inline.option_a}.\nOption "
                                        f"B: {inline.option_b}."}
    own_line = records.parse_record(own, "b:1", "b:1")
    assert records.layout(own_line) == "own-line"
    assert (own_line.option_a, own_line.option_b, own_line.label) == (inline.option_a, inline.option_b, "A")


def _variant(rec: dict, kind: str) -> dict:
    inp = rec["input"]
    if kind == "no final period":
        return {**rec, "input": inp[:-1], "output": rec["output"].rstrip(".")}
    if kind == "extra spaces":
        spaced = inp.replace(". Option", ".   Option").replace("Option A:", "Option  A :  ")
        return {**rec, "input": "  " + spaced.replace("History:", "History:  ") + "  ",
                "output": rec["output"].replace("is Option A.", "is  Option A.   ")}
    if kind == "CRLF inside own-line input":
        return {**rec, "input": inp.replace(". Option", ".\r\nOption")}
    return rec


@pytest.mark.parametrize("kind", ["no final period", "extra spaces", "CRLF inside own-line input"])
def test_hand_made_variants_parse_like_the_original(kind):
    clean = records.parse_record(thesis_record(1), "c:1", "c:1")
    ex = records.parse_record(_variant(thesis_record(1), kind), "v:1", "v:1")
    assert (ex.option_a, ex.option_b, ex.label) == (clean.option_a, clean.option_b, clean.label)
    assert task.history_text(ex.input) == task.history_text(clean.input)
    s = records.swap(ex)
    assert (s.option_a, s.option_b) == (clean.option_b, clean.option_a)
    assert records.swap(s) == ex
    # the mirrored reasoning keeps the record's own punctuation (here: its missing final period)
    assert records.rejected_output(ex).rstrip(".") == records.rejected_output(clean).rstrip(".")
    assert records.rejected_output(ex) != records.chosen_output(ex)


@pytest.mark.parametrize("kind", ["CRLF", "BOM", "blank lines", "all"])
def test_file_level_variants_load(tmp_path, kind):
    lines = [json.dumps(thesis_record(i)) for i in range(6)]
    text = "\n".join(lines) + "\n"
    if kind in ("blank lines", "all"):
        text = "\n" + "\n\n  \n".join(lines) + "\n\n"
    raw = text.encode("utf-8")
    if kind in ("CRLF", "all"):
        raw = raw.replace(b"\n", b"\r\n")
    if kind in ("BOM", "all"):
        raw = b"\xef\xbb\xbf" + raw
    path = tmp_path / "hand.jsonl"
    path.write_bytes(raw)
    exs = records.load_examples(path)
    expected = [records.parse_record(thesis_record(i), "x", "x") for i in range(6)]
    assert [(e.option_a, e.option_b) for e in exs] == [(e.option_a, e.option_b) for e in expected]
    result = check_cli(path)
    assert result.returncode == 0, result.stderr
    assert "6 examples" in result.stdout and "inline 6" in result.stdout


def _genre_claims(output: str) -> tuple[str, str, str]:
    """(letter answered, preferred genres, (letter, genres) said not to align) of a thesis-template answer."""
    m = re.match(r"The better recommendation is Option ([AB])\. Reasoning: The user has shown a strong "
                 r"preference "
                 r"for themes found in (.+)\. Option ([AB]) \((.+)\) does not align", output)
    return m[1], m[2], (m[3], m[4])


def _genres(option_text: str) -> str:
    return option_text.rsplit(" (", 1)[1].rstrip(")")


def test_rebalance_thesis_layout_letters_follow_options_history_untouched(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps(thesis_record(i)) for i in range(11)])
    exs = records.load_examples(path)
    fixed = balance.rebalance(exs)
    assert sorted(balance.balance(fixed)[L] for L in "AB") == [5, 6]
    swapped = 0
    for before, after in zip(exs, fixed):
        if after.label == before.label:
            assert after == before
            continue
        swapped += 1
        # every character of input other than the two option texts is unchanged
        held = before.input.replace(before.option_a, "\0")
        assert after.input == held.replace(before.option_b, before.option_a).replace("\0", before.option_b)
        assert task.history_text(after.input) == task.history_text(before.input)
        assert f"Option A: {before.option_b}. Option B: {before.option_a}." in after.input
        letter, liked, (bad_letter, bad) = _genre_claims(after.output)
        assert letter == after.label == "B" and liked == _genres(after.option_b)
        assert bad_letter == "A" and bad == _genres(after.option_a)
        again = {"instruction": after.instruction, "input": after.input, "output": after.output}
        assert records.parse_record(again, "r", "r").label == "B"
    assert swapped == 5


@pytest.mark.parametrize("i", range(5))
def test_thesis_dpo_rows_rejected_argues_for_the_other_option(i):
    ex = records.parse_record(thesis_record(i), "t:1", "t:1")
    for e in (ex, records.swap(ex)):
        row = records.to_dpo_rows([e])[0]
        assert row["chosen"] == e.output and row["chosen"] != row["rejected"]
        letter, liked, (bad_letter, bad) = _genre_claims(row["rejected"])
        assert letter == e.other and liked == _genres(e.option(e.other))
        assert bad_letter == e.label and bad == _genres(e.option(e.label))
        assert records.reasoning_is_mirrored(e)
        assert records.to_sft_rows([e])[0]["completion"] == e.output


def test_free_text_reasoning_gives_decision_only_dpo_pair_but_full_sft_answer():
    rec = {**thesis_record(0), "output": "The better recommendation is Option "
                                         "A. Reasoning: it is a lovely film."}
    ex = records.parse_record(rec, "f:1", "f:1")
    assert not records.reasoning_is_mirrored(ex)
    row = records.to_dpo_rows([ex])[0]
    assert (row["chosen"], row["rejected"]) == (task.answer_text("A"), task.answer_text("B"))
    assert records.to_sft_rows([ex])[0]["completion"] == rec["output"]
    # a template whose genres match neither option is not mirrored either (it would praise the wrong movie)
    odd = {**thesis_record(0), "output": thesis_record(0)["output"].replace(GENRES[0], "Western")}
    assert not records.reasoning_is_mirrored(records.parse_record(odd, "f:2", "f:2"))


THESIS_BROKEN = {
    "not an object": ("[1, 2]", "expected a JSON object, got list"),
    "two Option A": (json.dumps({**thesis_record(0), "input": thesis_record(0)["input"] + " Option A: "
                                                                                          "X (1990)."}),
                     "more than one parseable 'Option A: ...' line"),
    "empty option": (json.dumps({**thesis_record(0), "input": re.sub(r"Option B: .*", "Option B: .",
                                                                     thesis_record(0)["input"])}),
                     "'Option B:' is followed by no movie"),
    "same movie twice": (json.dumps({**thesis_record(0), "input": f"History: {TITLES[0]}. Option A: "
                                                                  f"{TITLES[1]} (Drama). Option "
                                                                  f"B: {TITLES[1]} (Drama)."}),
                         "Option A and Option B are the same movie"),
    "no history": (json.dumps({**thesis_record(0), "input": "History:  Option A: X (1990) (Drama). "
                                                            "Option B: Y (1991) (Comedy)."}),
                   "field 'input' has no history before 'Option A:'"),
    "answer not first": (json.dumps({**thesis_record(0), "output": "Reasoning: fine. So Option A."}),
                         "field 'output' must start with"),
    "label disagrees": (json.dumps({**thesis_record(0), "label": "B"}), "field 'label' is 'B' "
                                                                        "but 'output' names"),
    "bad reasons": (json.dumps({**thesis_record(0), "reasons": {"A": "x"}}), "field 'reasons' must map both"),
    "no Option B inline": (json.dumps({**thesis_record(0),
                                       "input": thesis_record(0)["input"].split(" Option B")[0]}),
                           "no parseable 'Option B: ...' line"),
}


@pytest.mark.parametrize("kind", THESIS_BROKEN)
def test_each_malformed_thesis_line_named_alone(tmp_path, kind):
    bad_line, message = THESIS_BROKEN[kind]
    good = [json.dumps(thesis_record(i)) for i in range(4)]
    path = write_lines(tmp_path / "bad.jsonl", [good[0], bad_line, good[1], bad_line, good[2]])
    with pytest.raises(UserError) as err:
        records.load_examples(path)
    text = str(err.value)
    assert f"{path}:2: " in text and f"{path}:4: " in text and message in text
    assert not any(f"{path}:{n}:" in text for n in (1, 3, 5))  # only the bad lines are named
    result = check_cli(path)
    assert result.returncode == 2 and f"{path}:4: " in result.stderr and "Traceback" not in result.stderr


def test_duplicate_id_names_both_lines(tmp_path):
    lines = [json.dumps({**thesis_record(i), "id": "same" if i in (1, 3) else f"p{i}"}) for i in range(4)]
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'd.jsonl'}:4: duplicate "
                                                  "example id 'same' (first at ")):
        records.load_examples(write_lines(tmp_path / "d.jsonl", lines))


def next_movie_record(i: int) -> dict:
    return {"instruction": "Recommend a movie.",
            "input": f"User history: {TITLES[i % 20]}, {TITLES[(i + 1) % 20]}. Based on these preferences, "
                     f"what should they watch next?",
            "output": f"The user should watch {TITLES[20 + i % 20]}. Reasoning: it suits them."}


def test_next_movie_file_is_refused_with_one_message(tmp_path):
    path = write_lines(tmp_path / "movielens_train.jsonl", [json.dumps(next_movie_record(i))
                                                            for i in range(300)])
    with pytest.raises(UserError) as err:
        records.load_examples(path)
    text = str(err.value)
    assert "next-movie file" in text and "not pairwise" in text and "none of its 300 lines" in text
    assert f"{path}:2:" not in text and "\n" not in text
    result = check_cli(path)
    assert result.returncode == 2 and result.stderr.count("next-movie") == 1


def _onpolicy_line(**extra):
    rec = {"instruction": task.INSTRUCTION,
           "input": task.own_line_input(["Se7en (1995) (Crime)"], "Heat (1995) (Crime)",
                                        "Casper (1995) (Comedy)"),
           "output": "The better recommendation is Option A. Reasoning: Option A has Crime.",
           "rejected": "The better recommendation is Option B. Reasoning: Option B is lighter."}
    rec.update(extra)
    return json.dumps(rec)


def test_a_record_with_its_own_rejected_answer(tmp_path):
    """On-policy pairs carry both answers: DPO trains on exactly them, in either order."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(_onpolicy_line() + "\n")
    ex = records.load_examples(path)[0]
    row = records.to_dpo_rows([ex])[0]
    assert row["chosen"] == ex.output and row["rejected"].startswith("The better recommendation is Option B.")
    sw = records.swap(ex)
    assert records.chosen_output(sw).startswith("The better recommendation is Option B. Reasoning: Option B")
    assert records.rejected_output(sw) == ("The better recommendation is Option A. Reasoning: Option A is "
                                           "lighter.")
    assert records.load_examples(path)[0].extra["rejected"] == ex.extra["rejected"]  # kept as written


@pytest.mark.parametrize("rejected, message", [
    (3, "field 'rejected' must be a string"),
    ("Option B, I think.", "'rejected' must start with"),
    ("The better recommendation is Option A. Reasoning: Option A has Crime.", "'rejected' equals 'output'"),
])
def test_a_bad_rejected_answer_is_named_with_file_and_line(tmp_path, rejected, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(_onpolicy_line() + "\n" + _onpolicy_line(rejected=rejected) + "\n")
    with pytest.raises(UserError, match=rf"pairs.jsonl:2: .*{re.escape(message)}"):
        records.load_examples(path)
