"""Position balance: the correct answer in position A for half of the examples (of a file, and of every
prefix of a freshly built split), a loud warning where one letter dominates, and the fewest swaps that
restore the balance. The stages, data/check_dataset.py and verify_setup.py all ask these rules here.
"""
from __future__ import annotations

from dporec.data.records import Example, swap
from dporec.data.task import LETTERS, other_letter

IMBALANCE_WARN = 0.60  # warn when one letter holds more than this share of the answers


# ---------------------------------------------------------------------------------------------
# Position balance


def balance(examples) -> dict:
    n_a = sum(e.label == "A" for e in examples)
    n = len(examples)
    return {"n": n, "A": n_a, "B": n - n_a, "a_fraction": n_a / n if n else 0.0}


def balance_warning(examples, name: str) -> str | None:
    """A loud message when one position holds more than IMBALANCE_WARN of the answers."""
    b = balance(examples)
    top = max(b["A"], b["B"])
    if b["n"] and top / b["n"] > IMBALANCE_WARN:
        letter = "A" if b["A"] >= b["B"] else "B"
        return (f"WARNING: {name}: Option {letter} is the answer in {top}/{b['n']} examples "
                f"({100 * top / b['n']:.1f}%). A model can score well by always answering {letter}; "
                f"rebalance with: python data/check_dataset.py {name} --rebalance OUT.jsonl")
    return None


def rebalance(examples: list[Example]) -> list[Example]:
    """Swap options in the fewest examples needed so that A holds exactly half (±1) of the answers.

    Deterministic: among the over-represented letter, every other example (by position in the
    file) is swapped until the counts meet.
    """
    b = balance(examples)
    major = "A" if b["A"] > b["B"] else "B"
    excess = (abs(b["A"] - b["B"])) // 2
    idx = [i for i, e in enumerate(examples) if e.label == major]
    # spread the swaps over the file instead of swapping one contiguous block
    step = len(idx) / excess if excess else 0
    chosen = {idx[int(k * step)] for k in range(excess)}
    return [swap(e) if i in chosen else e for i, e in enumerate(examples)]


def random_balanced_positions(examples: list[Example], rng) -> list[Example]:
    """The examples in a random order, with the correct answer in position A for exactly half (±1)
    of every prefix of the result.

    Scripts take the first N rows of a file (data.max_*_examples): a file balanced only as a whole
    can be 65% one letter in its first 64 rows, enough for a short run to learn the position.
    Alternating letters over a shuffled order keeps every prefix balanced; the alternation itself
    is invisible to the model, which sees one example at a time (and the trainer reshuffles).
    """
    return [place(examples[i], letter) for i, letter in balanced_positions(len(examples), rng)]


def balanced_positions(n: int, rng) -> list[tuple[int, str]]:
    """(index, letter of the correct answer) for each place of random_balanced_positions' result: the same
    order and letters for the same rng, without the examples themselves (a builder makes each example as it
    writes it)."""
    order = list(range(n))
    rng.shuffle(order)  # the permutation depends on the length and the rng only
    first = rng.choice(LETTERS)
    return [(i, first if k % 2 == 0 else other_letter(first)) for k, i in enumerate(order)]


def place(example: Example, letter: str) -> Example:
    """The example with its correct answer in position `letter` (options swapped if need be)."""
    return example if example.label == letter else swap(example)
