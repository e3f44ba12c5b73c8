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
    assert (j.kind, j.checked, j.claims, j.unchecked) == (RIGHT, False, 1, 1)
    assert not j.all_true and not j.right_and_truthful  # unchecked is never counted as true


def test_chosen_and_rejected_rules():
    right = judge.Judgement(RIGHT, "A")
    false = judge.Judgement(RIGHT_FALSE_CLAIMS, "A", [judge.Claim("x", "A", judge.FALSE, "x")])
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


# ---------------------------------------------------------------------------------------------
# Reasoning quality: coherence, and the thesis's wording with and without the history's genres

PRAISE_CASPER = ("Reasoning: Of the genres in the history, Casper (1995) (Adventure|Children's) has Action; "
                 "Heat (1995) (Action|Crime|Thriller) has none of them.")


@pytest.mark.parametrize("sample, argues, coherent, all_true, headline", [
    # the builder's wording for the chosen option: coherent, true
    ("The better recommendation is Option A. " + TRUE_REASONING, "A", True, True, True),
    # the same reasoning under the other decision: it argues for Heat (A) but chose B
    ("The better recommendation is Option B. " + TRUE_REASONING, "A", False, True, False),
    # praises Casper's genres under "Option A": incoherent, and both claims are false
    ("The better recommendation is Option A. " + PRAISE_CASPER, "B", False, False, False),
    # one option said to share none: the reasoning argues for the other
    ("The better recommendation is Option B. Reasoning: Option A has none of them.", "B", True, False, False),
    # equal claimed counts: the option named first (the template names the chosen one first)
    ("The better recommendation is Option A. Reasoning: Heat (1995) has Crime; Casper (1995) has Drama.",
     "A", True, False, False),
    # no reasoning, or reasoning that claims nothing: argues nothing, not coherent
    ("The better recommendation is Option A.", None, False, False, False),
    ("The better recommendation is Option A. Reasoning: it is a great film.", None, False, False, False),
    ("The better recommendation is Option A or B.", None, False, False, False),
])
def test_coherence_of_hand_made_answers(sample, argues, coherent, all_true, headline):
    j = judge.judge(sample, example("A"))
    assert (j.argues_for, j.coherent, j.all_true, j.right_and_truthful) == (argues, coherent, all_true,
                                                                             headline), j


HEAT_G, CASPER_G = "Action|Crime|Thriller", "Adventure|Children's"


def thesis_example(history_field=None, label="A"):
    """A line in the thesis's layout: history titles only, options with genres, the thesis's reasoning."""
    a, b = (HEAT, CASPER) if label == "A" else (CASPER, HEAT)
    rec = {"instruction": task.INSTRUCTION, "output": task.answer_text(label),
           "input": task.inline_input(["Se7en (1995)", "Speed (1994)"], a, b)}
    if history_field is not None:
        rec["history"] = history_field
    return records.parse_record(rec, "contrastive_rec_train.jsonl:1", "x")


RECOVERED = [{"item_id": 47, "title": "Se7en (1995)", "genres": ["Crime", "Thriller"]},
             {"item_id": 377, "title": "Speed (1994)", "genres": ["Action", "Romance", "Thriller"]}]
THESIS_TRUE = task.answer_text("A", task.thesis_reasoning(HEAT_G, "B", CASPER_G))


def test_thesis_wording_without_the_history_genres_is_unchecked():
    j = judge.judge(THESIS_TRUE, thesis_example())
    assert j.wording == "thesis" and j.kind == RIGHT and j.coherent
    assert [c.status for c in j.claim_list] == [judge.UNCHECKED, judge.UNCHECKED]
    assert not j.right_and_truthful
    # a wrong attribution needs no history to be false
    wrong = task.answer_text("A", task.thesis_reasoning(HEAT_G, "B", "Drama"))
    jw = judge.judge(wrong, thesis_example())
    assert [c.status for c in jw.claim_list] == [judge.UNCHECKED, judge.FALSE]
    assert jw.kind == RIGHT_FALSE_CLAIMS


def test_thesis_wording_with_recovered_genres_is_checked():
    ex = thesis_example(RECOVERED)
    j = judge.judge(THESIS_TRUE, ex)
    assert [c.status for c in j.claim_list] == [judge.TRUE, judge.TRUE] and j.right_and_truthful
    # the mirrored answer praises Casper's genres (none in the history) and says Heat does not align
    # (it shares Action, Crime and Thriller): both false, and coherent with its own (wrong) decision
    mirrored = task.answer_text("B", task.thesis_reasoning(CASPER_G, "A", HEAT_G))
    jm = judge.judge(mirrored, ex)
    assert jm.kind == WRONG and jm.coherent and jm.argues_for == "B"
    assert [c.status for c in jm.claim_list] == [judge.FALSE, judge.FALSE]
    # the thesis's template under the other letter: praises A, decides B -> incoherent
    ji = judge.judge(task.answer_text("B", task.thesis_reasoning(HEAT_G, "B",
                                                                 CASPER_G)), ex)
    assert ji.argues_for == "A" and not ji.coherent
    # the swapped order: the letters move with the options
    js = judge.judge(task.answer_text("B", task.thesis_reasoning(HEAT_G, "A",
                                                                 CASPER_G)), records.swap(ex))
    assert js.right_and_truthful


def test_structured_history_genres_are_used_only_where_the_prompt_shows_none():
    assert judge.history_genres("History: Se7en (1995)\nOption A: x.\nOption B: y.", RECOVERED) == {
        "Crime", "Thriller", "Action", "Romance"}
    shown = "History: Toy Story (1995) (Animation)\nOption A: x.\nOption B: y."
    assert judge.history_genres(shown, RECOVERED) == {"Animation"}


def test_misquoted_titles_and_movies_that_are_neither_option():
    """An option named under another title but with its genres is that option, its claim judged and the
    misquote counted apart; a movie that is neither option (other title, other genres) is a false claim."""
    text = ("The better recommendation is Option A. Reasoning: Of the genres in the history, Heap (1995) "
            "(Action|Crime|Thriller) has Action; Casper (1995) has none of them.")
    j = judge.judge(text, example("A"))
    assert [c.status for c in j.claim_list] == [judge.TRUE, judge.TRUE] and j.misquoted == 1
    assert j.argues_for == "A" and j.right_and_truthful
    made_up = text.replace("Heap (1995) (Action|Crime|Thriller)", "Ronin (1998) (Action|Crime)")
    jm = judge.judge(made_up, example("A"))
    assert [c.status for c in jm.claim_list] == [judge.FALSE, judge.TRUE] and jm.misquoted == 0
    assert "neither option" in jm.false_claims[0]
    assert jm.argues_for == "A"  # Casper said to share none: the reasoning argues against it
    assert jm.kind == RIGHT_FALSE_CLAIMS and not jm.right_and_truthful


def test_titles_with_colons_commas_and_periods_are_the_options_they_name():
    """MovieLens titles hold colons, commas and abbreviations: each claim is still about its option, never a
    misquote, and the builder's own answers are judged true."""
    gromit = "Wallace & Gromit: The Best of Aardman Animation (1996) (Animation)"
    naked = "Naked Gun 33 1/3: The Final Insult (1994) (Comedy)"
    holland = "Mr. Holland's Opus (1995) (Drama)"
    ex = records.parse_record({"instruction": task.INSTRUCTION, "output": task.answer_text("A"),
                               "input": task.own_line_input(["Toy Story (1995) (Animation|Comedy)",
                                                             "Bug's Life, A (1998) (Drama)"], gromit, naked)},
                              "x:1", "x")
    text = task.answer_text("A", task.genre_reasoning(gromit, ["Animation"], naked, ["Comedy"]))
    j = judge.judge(text, ex)
    assert [(c.option, c.status, c.misquoted) for c in j.claim_list] == [("A", judge.TRUE, False),
                                                                         ("B", judge.TRUE, False)]
    bugs = ["Bug's Life, A (1998) (Drama)"]
    ex2 = records.parse_record({"instruction": task.INSTRUCTION, "output": task.answer_text("B"),
                                "input": task.own_line_input(bugs, naked, holland)}, "x:2", "x")
    j2 = judge.judge(task.answer_text("B", task.genre_reasoning(holland, ["Drama"], naked, [])), ex2)
    assert [(c.option, c.status, c.misquoted) for c in j2.claim_list] == [("B", judge.TRUE, False),
                                                                          ("A", judge.TRUE, False)]
    assert j2.right_and_truthful
