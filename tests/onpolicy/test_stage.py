"""Pairs from judged samples (no model): which sample is chosen and which rejected, what is skipped and
counted, and the position balance of what is kept."""
from dporec import files
from dporec.data import records, task
from dporec.onpolicy import stage

HISTORY = ["Se7en (1995) (Crime|Thriller)", "Speed (1994) (Action|Thriller)"]
RIGHT_A = ("The better recommendation is Option A. Reasoning: Of the genres in the history, Heat (1995) "
           "(Crime) has Crime; Casper (1995) (Comedy) has none of them.")
FALSE_CLAIM = "The better recommendation is Option A. Reasoning: Casper (1995) has Crime."


def example(i: int) -> records.Example:
    text = task.own_line_input(HISTORY, "Heat (1995) (Crime)", "Casper (1995) (Comedy)")
    rec = {"instruction": task.INSTRUCTION, "input": text, "output": task.answer_text("A"), "id": f"p{i}",
           "user_id": str(i)}
    return records.parse_record(rec, f"hand-made:{i}", f"p{i}")


def swapped(text: str) -> str:
    return task.swap_letter_refs(text)


def test_pairs_counts_and_balance():
    exs = [example(i) for i in range(3)]
    wrong_a = "The better recommendation is Option B."
    samples = {
        # p0 original: right + wrong -> a pair with the chosen answer in A; swapped: right + wrong -> B
        ("p0", "original"): [RIGHT_A, wrong_a, "gibberish"],
        ("p0", "swapped"): [swapped(RIGHT_A), swapped(wrong_a), swapped(wrong_a)],
        # p1 original: right only (all right) -> skipped, no rejected; swapped: wrong only -> no chosen
        ("p1", "original"): [RIGHT_A, RIGHT_A, RIGHT_A],
        ("p1", "swapped"): [swapped(wrong_a)] * 3,
        # p2 original: right, and a right decision with a false claim; swapped: unparseable only
        ("p2", "original"): [RIGHT_A, FALSE_CLAIM],
        ("p2", "swapped"): ["no idea", "Option A or Option B"],
    }
    pairs, s = stage.make_pairs(exs, samples, "wrong_decision")
    assert [p["id"] for p in pairs] == ["p0:original", "p0:swapped"]
    assert pairs[0]["output"] == RIGHT_A and pairs[0][records.REJECTED] == wrong_a
    assert pairs[0]["label"] == "A"
    assert pairs[1]["label"] == "B" and "reasons" not in pairs[0]
    assert s["prompts"] == 6 and s["samples"] == 16 and s["parse_failures"] == 3
    assert s["prompts_all_right"] == 1 and s["prompts_all_wrong"] == 1 and s["degenerate_pairs"] == 0
    assert s["prompts_without_chosen"] == 2 and s["prompts_without_rejected"] == 3
    assert s["samples_by_kind"] == {"right": 6, "right, false claims": 1, "wrong": 6, "unparseable": 3}
    assert s["chosen_position"] == {"A": 1, "B": 1}
    # the stricter rule also rejects a right decision with a false claim: p2 original becomes a pair
    more, s2 = stage.make_pairs(exs, samples, "wrong_decision_or_false_claims")
    assert [p["id"] for p in more] == ["p0:original", "p0:swapped", "p2:original"]
    assert more[2][records.REJECTED].endswith("Casper (1995) has Crime.")
    # balance: 2 chosen in A, 1 in B -> one A pair dropped at random, counted
    kept = stage.balance_positions(more, s2, seed=0)
    assert len(kept) == 2 and s2["chosen_position"] == {"A": 1, "B": 1}
    assert s2["pairs_sampled"] == 3 and s2["dropped_for_balance"] == 1 and s2["pairs"] == 2


def test_pairs_are_records_train_dpo_reads(tmp_path):
    exs = [example(0)]
    samples = {("p0", "original"): [RIGHT_A, "The better recommendation is Option B."],
               ("p0", "swapped"): [swapped(RIGHT_A), "The better recommendation is Option A."]}
    pairs, _ = stage.make_pairs(exs, samples, "wrong_decision")
    files.write_jsonl(tmp_path / "pairs.jsonl", pairs)
    rows = records.to_dpo_rows(records.load_examples(tmp_path / "pairs.jsonl"))
    assert [r["chosen"] for r in rows] == [RIGHT_A, swapped(RIGHT_A)]
    assert [r["rejected"] for r in rows] == ["The better recommendation is Option B.",
                                             "The better recommendation is Option A."]


def test_read_samples_drops_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": "p0", "order": "original", "samples": ["x"]}\n{"id": "p0", "order": "swa')
    assert stage.read_samples(path) == {("p0", "original"): ["x"]}
