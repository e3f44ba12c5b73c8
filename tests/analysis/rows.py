"""Hand-built prediction rows for the analysis tests."""
from __future__ import annotations

OTHER = {"A": "B", "B": "A"}


def make_pair(model, pair_id, user_id, label="A", picks=("good", "good"), strength=1.0,
              full_picks=None, parsed=None):
    """Two prediction rows (original, swapped) for one test pair.

    label: correct letter in the ORIGINAL order (the swapped order has the other letter).
    picks: what the model chooses in (original, swapped): "good"/"bad" (by movie), "A"/"B" (by
    position) or "tie". strength: log-prob gap between the chosen and the other answer.
    full_picks: same for the full-answer scores (defaults to picks). parsed: optional pair of
    generation-mode letters (or None) per order.
    """
    good, bad = f"{pair_id}-good", f"{pair_id}-bad"
    rows = []
    for i, order in enumerate(("original", "swapped")):
        lab = label if order == "original" else OTHER[label]
        ids = {lab: good, OTHER[lab]: bad}
        row = {"model": model, "pair_id": pair_id, "user_id": user_id, "order": order, "label": lab,
               "option_a_id": ids["A"], "option_b_id": ids["B"]}
        for suffix, pick in (("", picks[i]), ("_full", (full_picks or picks)[i])):
            if pick == "good":
                pick = lab
            elif pick == "bad":
                pick = OTHER[lab]
            base = -2.0 if suffix == "" else -20.0
            la = lb = base
            if pick == "A":
                lb = base - strength
            elif pick == "B":
                la = base - strength
            row["logp_a" + suffix], row["logp_b" + suffix] = la, lb
            row["choice" + suffix] = pick
            row["correct" + suffix] = pick == lab
        if parsed is not None:
            row["parsed"] = parsed[i]
        rows.append(row)
    return rows


def rows_from(model, spec):
    """spec: list of (pair_id, user_id, label, picks)."""
    out = []
    for pid, uid, label, picks in spec:
        out += make_pair(model, pid, uid, label, picks)
    return out


def balanced_spec(n, picks, users=None):
    return [(f"p{i}", str(i % users if users else i), "AB"[i % 2], picks) for i in range(n)]
