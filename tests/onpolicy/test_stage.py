"""Pairs from judged samples (no model): which sample is chosen and which rejected, what is skipped and
counted, and the position balance of what is kept."""
import pytest

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


def test_a_resumed_sampling_equals_an_uninterrupted_one(tiny_data, tiny_model, tmp_path, monkeypatch):
    """A kill mid-write leaves a cut line and a partly written chunk: the rerun cuts the line, samples the
    partial chunk again whole from its own seed, and ends with the samples an uninterrupted run makes;
    with --overwrite the unfinished samples are dropped and sampling starts over (the same samples)."""
    import pytest

    from dporec import UserError, arms
    from dporec.config import load_config
    from dporec.training import stages
    from tests.helpers import TINY_CONFIG, tiny_overrides
    monkeypatch.setattr(stage, "CHUNK", 4)  # 10 prompts: chunks of 4, 4 and 2
    over = ["sft.max_steps=2", "onpolicy.max_prompts=5", "onpolicy.samples_per_prompt=2",
            "onpolicy.max_new_tokens=8", "onpolicy.batch_size=8", "experiment.on_policy_arm=true"]
    from dporec.config import updated
    runs = {}
    for name in ("straight", "killed", "overwritten"):
        cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path / name) + over)
        assert stages.run_sft(cfg) == 0
        for attempt in (1, 2) if name != "straight" else (1,):
            try:
                stage.run_sampling(updated(cfg, {"overwrite": name == "overwritten" and attempt == 2}))
            except UserError:
                pass  # a random tiny model's samples may make no pair: the samples are what is compared
            samples = arms.PAIRS.folder(cfg["output_dir"]) / stage.SAMPLES
            if name != "straight" and attempt == 1:  # killed while writing the second chunk's fifth line
                lines = samples.read_text().splitlines(keepends=True)
                samples.write_text("".join(lines[:5]) + lines[5][:20])
                for f in samples.parent.iterdir():
                    if f.name != stage.SAMPLES:
                        f.unlink()
        runs[name] = stage.read_samples(samples)
    assert len(runs["straight"]) == 10
    assert runs["killed"] == runs["straight"] == runs["overwritten"]
    with pytest.raises(AssertionError):  # the test can tell: a seed per chunk start would differ
        assert runs["killed"] == {k: [] for k in runs["straight"]}


def test_a_change_of_the_pairing_alone_pairs_the_samples_again(tiny_data, tiny_model, tmp_path, monkeypatch):
    """A finished sampling asked for another onpolicy.rejected or balance_positions keeps its samples and
    only pairs them again (no model loads); a setting the samples depend on samples again."""
    import json

    from dporec import UserError, arms
    from dporec.config import load_config, updated
    from dporec.training import stages
    from tests.helpers import TINY_CONFIG, tiny_overrides
    over = ["sft.max_steps=1", "onpolicy.max_prompts=4", "onpolicy.samples_per_prompt=2",
            "onpolicy.max_new_tokens=8", "experiment.on_policy_arm=true"]
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path) + over)
    assert stages.run_sft(cfg) == 0
    folder = arms.PAIRS.folder(cfg["output_dir"])
    try:
        stage.run_sampling(cfg)
    except Exception:  # noqa: BLE001 - a random model's samples may pair nothing; they are replaced below
        pass
    # answers that pair: one right (no claims), one wrong, for every prompt in both orders
    rows = [json.loads(line) for line in (folder / stage.SAMPLES).read_text().splitlines()]
    exs = {ex.pair_id: ex for ex in stage.prompts_of(cfg)}
    for row in rows:
        label = dict(records.orders(exs[row["id"]]))[row["order"]].label
        row["samples"] = [task.answer_text(label), task.answer_text("B" if label == "A" else "A")]
    files.write_jsonl(folder / stage.SAMPLES, rows)
    (folder / stage.SUMMARY).unlink(missing_ok=True)
    stage.run_sampling(updated(cfg, {"resume": "auto"}))
    assert json.loads((folder / stage.SUMMARY).read_text())["rejected_rule"] == "wrong_decision"
    samples = (folder / stage.SAMPLES).read_text()

    def no_model(*a, **k):
        raise AssertionError("the model was loaded to pair samples that were all there")
    monkeypatch.setattr(stage, "load_with_adapters", no_model)
    changed = updated(cfg, {"onpolicy.rejected": "wrong_decision_or_false_claims",
                            "onpolicy.balance_positions": False})
    assert stage.run_sampling(changed) == 0
    summary = json.loads((folder / stage.SUMMARY).read_text())
    assert summary["rejected_rule"] == "wrong_decision_or_false_claims" and summary["pairs"] == 8
    assert (folder / stage.SAMPLES).read_text() == samples
    with pytest.raises(UserError, match="stale: .*onpolicy.temperature: 0.9 -> 0.5"):  # the samples' own
        stage.run_sampling(updated(changed, {"onpolicy.temperature": 0.5, "resume": "auto"}))
    with pytest.raises(AssertionError, match="the model was loaded"):  # --overwrite: sampled again
        stage.run_sampling(updated(changed, {"overwrite": True}))
