"""Reasoning quality, the thesis's third metric: every generated answer judged from the data (data.judge),
summarised per model with user-clustered intervals, and compared between models with the main verdict's
paired interval and label.

Input: one generation row per (test pair, option order, model):

    {"model", "pair_id", "user_id", "order", "label", "input" (as asked, in that order),
     "generated" (the model's greedy answer), "reference" (the data's own answer in that order),
     "history" (optional: the record's structured history, for a prompt that shows titles only)}

judge_rows adds the judgement (JUDGED columns); every figure is computed from those, so a generations.csv
is re-judged without a model. Rates are over every answer (an unparseable one is wrong, incoherent and
claims nothing), so each is a mean over answers and its interval a cluster bootstrap over users.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from dporec.analysis.comparison import compare_tables
from dporec.analysis.metrics import bootstrap_label, clusters, user_of
from dporec.analysis.resampling import cluster_bootstrap_ci
from dporec.data import judge
from dporec.data.task import ORDERS

# The per-model rates: (key, what it counts per answer, whether it needs the history's genres)
RATES = (
    ("parseable_rate", "the decision names exactly one option", False),
    ("accuracy", "the right decision (generated, two-order)", False),
    ("coherence_rate", "the reasoning argues for the option it chose", False),
    ("all_claims_true_rate", "at least one claim, all of them true", True),
    ("false_claims_per_answer", "false claims (mean per answer)", True),
    ("right_and_truthful_rate", "right, coherent, every claim checked and true", True),
    ("misquoted_titles_per_answer", "options named under a title they do not have (mean per answer)", False),
)
HEADLINE = "right_and_truthful_rate"
LABELS = {"parseable_rate": "Parseable", "accuracy": "Right decision", "coherence_rate": "Coherent",
          "all_claims_true_rate": "Claims all true", "false_claims_per_answer": "False claims per answer",
          "right_and_truthful_rate": "Right and truthful",
          "misquoted_titles_per_answer": "Misquoted titles per answer"}
JUDGED = ("parsed", "kind", "wording", "argues_for", "coherent", "claims", "false_claims", "unchecked_claims",
          "misquoted_titles", "all_claims_true", "right_and_truthful", "claims_detail")
EXAMPLES_PER_MODEL = 3
SAMPLE_SEED = 0  # eval.reasoning_pairs' sample: fixed, so every model and training seed judges the same pairs


def subset_record(gen_rows: dict, n_test: int, max_new_tokens: int | None) -> dict:
    """results.json's reasoning "subset": how many of the n_test test pairs were generated and judged,
    and how (the sample's seed when they are a sample; the answers' length bound)."""
    n = len({str(r["pair_id"]) for r in next(iter(gen_rows.values()))})
    return {"pairs": n, "of": n_test, "sample_seed": SAMPLE_SEED if n < n_test else None,
            "max_new_tokens": max_new_tokens}


def _history(row: dict):
    h = row.get("history")
    if isinstance(h, str):  # as a generations.csv cell
        return json.loads(h) if h else None
    return h


def judgement(answer: str, row: dict) -> judge.Judgement:
    return judge.judge_answer(answer, row["input"], row["label"], _history(row))


def judged(j: judge.Judgement) -> dict:
    """The JUDGED columns of one judgement."""
    return {"parsed": j.decision, "kind": j.kind, "wording": j.wording, "argues_for": j.argues_for,
            "coherent": j.coherent, "claims": j.claims, "false_claims": len(j.false_claims),
            "unchecked_claims": j.unchecked, "misquoted_titles": j.misquoted, "all_claims_true": j.all_true,
            "right_and_truthful": j.right_and_truthful,
            "claims_detail": [{"text": c.text, "option": c.option, "status": c.status, "why": c.why,
                               "misquoted": c.misquoted} for c in j.claim_list]}


def judge_rows(rows) -> list[dict]:
    """The generation rows with their judgement (JUDGED columns), judged anew from input, label, history and
    the generated text: stored judgements are never trusted."""
    out = []
    for r in rows:
        for k in ("model", "pair_id", "order", "label", "input", "generated"):
            if k not in r:
                raise ValueError(f"model {r.get('model')!r}, pair {r.get('pair_id')!r}: generation row lacks "
                                 f"{k!r}")
        try:
            j = judgement(r["generated"] or "", r)
        except ValueError as e:
            raise ValueError(f"model {r['model']!r}, pair {r['pair_id']!r}, order {r['order']!r}: "
                             f"input: {e}") from None
        out.append({**{k: v for k, v in r.items() if k not in JUDGED}, **judged(j)})
    return out


def _values(rows) -> dict[str, np.ndarray]:
    """Per answer, in rows' order: each rate's value."""
    return {
        "parseable_rate": np.array([r["kind"] != judge.UNPARSEABLE for r in rows], float),
        "accuracy": np.array([r["parsed"] == r["label"] for r in rows], float),
        "coherence_rate": np.array([r["coherent"] for r in rows], float),
        "all_claims_true_rate": np.array([r["all_claims_true"] for r in rows], float),
        "false_claims_per_answer": np.array([r["false_claims"] for r in rows], float),
        "right_and_truthful_rate": np.array([r["right_and_truthful"] for r in rows], float),
        "misquoted_titles_per_answer": np.array([r["misquoted_titles"] for r in rows], float),
    }


def genres_known(rows) -> int:
    """How many of the rows' prompts (or structured histories) show the history's genres."""
    return sum(bool(judge.history_genres(r["input"], _history(r))) for r in rows)


def _check_pairs(rows) -> None:
    seen: dict[str, set] = {}
    for r in rows:
        if r["order"] in seen.setdefault(str(r["pair_id"]), set()):
            raise ValueError(f"model {r['model']!r}, pair {r['pair_id']!r}: two generations for the "
                             f"{r['order']!r} order")
        seen[str(r["pair_id"])].add(r["order"])
    for pid, got in seen.items():
        if got != set(ORDERS):
            raise ValueError(f"model {rows[0]['model']!r}, pair {pid!r}: generated in the {sorted(got)} "
                             f"order only; every judged pair must be generated in both option orders")


def model_block(rows, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict:
    """One model's reasoning figures from its judged rows (judge_rows): each of RATES with its interval
    (percentile bootstrap over users), the counts behind them, and the wordings its answers used. The rates
    that need the history's genres are None when no prompt shows them (claims all unchecked)."""
    rows = list(rows)
    _check_pairs(rows)
    users = {str(r["pair_id"]): user_of(r) for r in rows}
    pair_labels, clustering = clusters(users)
    label_of = dict(zip(sorted(users), pair_labels))
    labels = [label_of[str(r["pair_id"])] for r in rows]
    vals = _values(rows)
    cis = cluster_bootstrap_ci(np.column_stack([vals[k] for k, _, _ in RATES]), labels, n_boot=n_boot,
                               seed=seed, alpha=alpha)
    known = genres_known(rows)
    out = {"answers": len(rows), "n_pairs": len(users),
           "n_users": len({u for u in users.values() if u is not None}), "clustering": clustering,
           "interval": f"percentile {bootstrap_label(clustering)}, {n_boot} resamples", "alpha": alpha,
           "answers_with_history_genres": known, "checkable": known > 0}
    for (key, _, needs_genres), ci in zip(RATES, cis):
        missing = needs_genres and not known
        out[key] = None if missing else float(vals[key].mean())
        out[f"{key}_ci"] = None if missing else list(ci)
    out["counts"] = {
        "parseable": int(vals["parseable_rate"].sum()), "right": int(vals["accuracy"].sum()),
        "coherent": int(vals["coherence_rate"].sum()), "with_claims": sum(r["claims"] > 0 for r in rows),
        "claims": sum(r["claims"] for r in rows), "false_claims": sum(r["false_claims"] for r in rows),
        "unchecked_claims": sum(r["unchecked_claims"] for r in rows),
        "right_and_truthful": int(vals["right_and_truthful_rate"].sum())}
    out["kinds"] = dict(Counter(r["kind"] for r in rows))
    out["wordings"] = dict(Counter(r["wording"] for r in rows))
    return out


def pair_table(rows) -> tuple[dict[str, float], dict[str, str | None]]:
    """({pair_id: the headline over both orders, 0/0.5/1}, {pair_id: user}): what compare_tables pairs."""
    rows = list(rows)
    _check_pairs(rows)
    scores: dict[str, float] = {}
    users: dict[str, str | None] = {}
    for r in rows:
        pid = str(r["pair_id"])
        scores[pid] = scores.get(pid, 0.0) + float(r["right_and_truthful"]) / 2
        users[pid] = user_of(r)
    return scores, users


def examples(rows, k: int = EXAMPLES_PER_MODEL) -> list[dict]:
    """Up to k answers to show: one with a true claim, one with a false claim, then one of another kind
    (wrong, incoherent or unparseable), in pair order so every report shows the same ones."""
    rows = sorted(rows, key=lambda r: (str(r["pair_id"]), r["order"]))
    tests = (lambda r: any(c["status"] == judge.TRUE for c in r["claims_detail"]),
             lambda r: any(c["status"] == judge.FALSE for c in r["claims_detail"]),
             lambda r: not r["right_and_truthful"])
    picked: list[dict] = []
    for test in tests:
        hit = next((r for r in rows if test(r) and r not in picked), None)
        if hit is not None:
            picked.append(hit)
    picked += [r for r in rows if r not in picked][:k - len(picked)]
    keys = ("pair_id", "order", "label", "generated", "kind", "coherent", "argues_for", "right_and_truthful",
            "claims_detail")
    return [{k_: r[k_] for k_ in keys} for r in picked[:k]]


def reasoning_results(rows_by_model: dict, comparisons, margin: float, alpha: float, n_boot: int,
                      seed: int, subset: dict | None = None) -> dict:
    """results.json's "reasoning": {"models": {name: model_block}, "reference": the data's own answers
    judged the same way (what a model that copies its training targets would score), one key per
    comparison (compare_tables of the headline per pair, with the main verdict's interval and label; None
    when one model was not generated, or when no claim can be checked), "examples", "subset"}.
    rows_by_model: judged rows (judge_rows) per model; comparisons: dporec.arms.comparisons()."""
    models = {m: model_block(r, alpha=alpha, n_boot=n_boot, seed=seed) for m, r in rows_by_model.items()}
    first = next(iter(rows_by_model.values()))
    reference = None
    if all(r.get("reference") for r in first):
        ref_rows = [{**r, "generated": r["reference"], "model": "reference"} for r in first]
        reference = model_block(judge_rows(ref_rows), alpha=alpha, n_boot=n_boot, seed=seed)
    checkable = any(m["checkable"] for m in models.values())
    out = {"models": models, "reference": reference, "headline": HEADLINE, "subset": subset or {},
           "examples": {m: examples(r) for m, r in rows_by_model.items()}}
    for c in comparisons:
        if c.a in rows_by_model and c.b in rows_by_model and checkable:
            out[c.key] = compare_tables([pair_table(rows_by_model[c.a])], [pair_table(rows_by_model[c.b])],
                                        margin=margin, alpha=alpha, names=c.names)
            out[c.key].update(measure=HEADLINE, measure_label=LABELS[HEADLINE])
        else:
            out[c.key] = None
    return out
