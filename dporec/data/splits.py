"""What makes split files trustworthy beyond position balance (dporec.data.balance): pairs that teach
something, no user or id shared between train, val and test; and the one cut of shuffled users into the
three splits.
"""
from __future__ import annotations

from dporec.data.records import chosen_output, rejected_output


def pair_problems(examples) -> list[str]:
    """'FILE:LINE: what' for each pair DPO could learn nothing from."""
    out = []
    for e in examples:
        if chosen_output(e) == rejected_output(e):
            out.append(f"{e.source}: rejected answer equals chosen answer (DPO would learn nothing)")
        elif e.option_a.strip() == e.option_b.strip():
            out.append(f"{e.source}: Option A and Option B are the same movie")
    return out


def shared_between(loaded: dict, key) -> list[tuple]:
    """(name a, name b, sorted common keys) for each two splits sharing key(example) values (None ignored)."""
    sets = {name: {key(e) for e in exs} - {None} for name, exs in loaded.items()}
    names = list(sets)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(sets[a] & sets[b], key=str)
            if common:
                out.append((a, b, common))
    return out


def cut(order, val_fraction: float, test_fraction: float) -> dict[str, set]:
    """Already shuffled group keys (users, or lines standing for users) cut into test, val and train."""
    order = list(order)
    n = len(order)
    n_test = max(round(n * test_fraction), int(test_fraction > 0 and n >= 3))
    n_val = max(round(n * val_fraction), int(val_fraction > 0 and n >= 3))
    return {"test": set(order[:n_test]), "val": set(order[n_test:n_test + n_val]),
            "train": set(order[n_test + n_val:])}
