"""The on-policy judge on hand-made samples: right and wrong decisions, true and false genre claims,
unparseable text, and a history without genres."""
import pytest

from dporec.data import judge, records, task
from dporec.data.judge import RIGHT, RIGHT_FALSE_CLAIMS, UNPARSEABLE, WRONG

HEAT = "Heat (1995) (Action|Crime|Thriller)"
CASPER = "Casper (1995) (Adventure|Children's)"
HISTORY = ["Se7en (1995) (Crime|Thriller)", "Speed (1994) (Action|Romance|Thriller)"]


def example(label="A", history=HISTORY, layout=task.own_line_input):
    a, b = (HEAT, CASPER) if label == "A" else (CASPER, HEAT)
    return records.parse_record({"instruction": task.INSTRUCTION, "input": layout(history, a, b),
                                 "output": task.answer_text(label)}, "hand-made:1", "x")


TRUE_REASONING = ("Reasoning: Of the genres in the history, Heat (1995) (Action|Crime|Thriller) has Action, "
                  "Crime and Thriller; Casper (1995) (Adventure|Children's) has none of them.")


@pytest.mark.parametrize("sample, kind, claims, false", [
    # the builder's own wording, true: right decision, two claims, none false
    ("The better recommendation is Option A. " + TRUE_REASONING, RIGHT, 2, 0),
    # the decision alone: right, nothing claimed
    ("The better recommendation is Option A.", RIGHT, 0, 0),
    # right decision, but Casper shares nothing with the history and Heat has no Romance
    ("The better recommendation is Option A. Reasoning: Of the genres in the history, Heat (1995) has "
     "Romance; Casper (1995) has Adventure.", RIGHT_FALSE_CLAIMS, 2, 2),
    # an option named by its letter; "none of them" for a movie that does share genres is false
    ("The better recommendation is Option A. Reasoning: Option A has none of them.",
     RIGHT_FALSE_CLAIMS, 1, 1),
    # a subset of the shared genres is not false
    ("The better recommendation is Option A. Reasoning: Heat (1995) has Crime.", RIGHT, 1, 0),
    # wrong decision with true claims is still wrong
    ("The better recommendation is Option B. " + TRUE_REASONING, WRONG, 2, 0),
    # unparseable: no decision, both options, an option C, empty text
    ("I think the user would like Heat.", UNPARSEABLE, 0, 0),
    ("The better recommendation is Option A or Option B.", UNPARSEABLE, 0, 0),
    ("The better recommendation is Option C.", UNPARSEABLE, 0, 0),
    ("", UNPARSEABLE, 0, 0),
])
def test_labels_of_hand_made_samples(sample, kind, claims, false):
    j = judge.judge(sample, example("A"))
    assert (j.kind, j.claims, len(j.false_claims)) == (kind, claims, false), j


def test_the_label_follows_the_order_the_pair_was_asked_in():
    """In the swapped order Heat is Option B: the same words now decide wrong, and 'Option B has none of
    them' becomes a false claim about Heat."""
    swapped = records.swap(example("A"))
    assert swapped.label == "B"
    assert judge.judge("The better recommendation is Option B.", swapped).kind == RIGHT
    assert judge.judge("The better recommendation is Option A.", swapped).kind == WRONG
    j = judge.judge("The better recommendation is Option B. Reasoning: Option B has none of them.", swapped)
    assert j.kind == RIGHT_FALSE_CLAIMS


def test_a_history_without_genres_leaves_claims_unchecked():
    """The thesis's file shows history titles only: decisions are judged, claims cannot be."""
    ex = example("A", history=["Se7en (1995)", "Speed (1994)"], layout=task.inline_input)
    j = judge.judge("The better recommendation is Option A. Reasoning: Heat (1995) has Romance.", ex)
    assert (j.kind, j.checked, j.claims) == (RIGHT, False, 0)


def test_chosen_and_rejected_rules():
    right = judge.Judgement(RIGHT, "A")
    false = judge.Judgement(RIGHT_FALSE_CLAIMS, "A", 1, ["x"])
    wrong = judge.Judgement(WRONG, "B")
    bad = judge.Judgement(UNPARSEABLE)
    assert [judge.is_chosen(j) for j in (right, false, wrong, bad)] == [True, False, False, False]
    assert [judge.is_rejected(j, "wrong_decision") for j in (right, false, wrong, bad)] == [
        False, False, True, False]
    assert [judge.is_rejected(j, "wrong_decision_or_false_claims") for j in (right, false, wrong, bad)] == [
        False, True, True, False]
    with pytest.raises(ValueError, match="unknown rejection rule"):
        judge.is_rejected(wrong, "longest")


def test_every_builder_reasoning_is_judged_true(tmp_path):
    """The builder's own answers, in both orders, are right with only true claims: the judge and the
    builder read the genres the same way."""
    from dporec.data import sources
    sources.build("synthetic:30", tmp_path, seed=0)
    exs = records.load_examples(tmp_path / "train.jsonl")
    assert exs
    for ex in exs:
        for _, e in records.orders(ex):
            j = judge.judge(records.chosen_output(e), e)
            assert j.kind == RIGHT and j.claims == 2, (e.pair_id, j)
            r = judge.judge(records.rejected_output(e), e)
            assert r.kind == WRONG and not r.false_claims, (e.pair_id, r)
