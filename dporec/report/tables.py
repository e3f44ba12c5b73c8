"""Console tables and blocks: the models, the baselines, the ranking, the verdict, and the data summaries."""
from __future__ import annotations

import datetime

from dporec import arms
from dporec.analysis.rank_metrics import METRICS as RANKING_METRICS
from dporec.analysis.reasoning import LABELS
from dporec.report.numbers import ci_text, format_p, level, pct
from dporec.report.sentences import (
    PRIMARY,
    baseline_clause,
    comparison_lines,
    control_conclusion,
    personal_verdict,
    ranking_verdict,
    verdict_sentence,
)


def sentence(comparison: dict) -> str:
    return comparison.get("sentence") or verdict_sentence(comparison)


def baseline_lines(results: dict) -> list[str]:
    """One line per baseline: its accuracy and user-clustered interval, or why it is not available."""
    b = results.get("baselines")
    if not b:
        return []
    n = next(iter(b.values()))["n_pairs"]
    width = max(len(v["label"]) for v in b.values())
    lines = [f"baselines on the same {n:,} test pairs (rules on "
             "movies, same choice in both orders; tie = 0.5)"]
    for v in b.values():
        tail = (f"{pct(v['accuracy']):>6}  {ci_text(v['ci'])}" if v["available"]
                else f"{'n/a':>6}  ({v['reason']})")
        lines.append(f"  {v['label']:<{width}}  {tail}")
    return lines


def _ranking_cell(s: dict, m: str) -> str:
    x = s[m]
    if m == "kendall_tau_b":
        return f"{x['mean']:+.3f} [{x['ci'][0]:+.3f}, {x['ci'][1]:+.3f}]"
    return f"{pct(x['mean'])} {ci_text(x['ci'])}"


def _ranking_cells(s: dict, widths) -> str:
    return " ".join(f"{_ranking_cell(s, m):>{w}}" for m, w in zip(RANKING_METRICS, widths))


def ranking_lines(r: dict) -> list[str]:
    """One row per model and available baseline, then chance, then DPO - SFT."""
    widths = (26, 20, 20)
    head = f"{'ranker':<50} {'Kendall tau-b':>26} {'NDCG@3':>20} {'hit@1':>20}"
    lines = [f"Ranking adherence: {r['n_users']} test users x {'/'.join(map(str, r['candidates_per_user']))} "
             f"candidates, {r['method']}", head]
    for name, s in r["models"].items():
        lines.append(f"{name:<50} " + _ranking_cells(s, widths))
    for s in r["baselines"].values():
        label = f"rule: {s['label']}"[:50]
        if s.get("available", True):
            lines.append(f"{label:<50} " + _ranking_cells(s, widths))
        else:
            lines.append(f"{label:<50} not available: {s['reason']}")
    c = r["chance"]
    lines.append(f"{'chance (random order)':<50} {c['kendall_tau_b']:>+26.3f} "
                 f"{pct(c['ndcg@3']):>20} {pct(c['hit@1']):>20}")
    if "comparison" in r:
        parts = []
        for m in RANKING_METRICS:
            x = r["comparison"][m]
            scale, fmt = (1, "+.3f") if m == "kendall_tau_b" else (100, "+.1f")
            d, lo, hi = (round(scale * v, 6) + 0.0 for v in (x["difference"], *x["ci"]))
            parts.append(f"{m} {d:{fmt}} [{lo:{fmt}}, {hi:{fmt}}], {format_p(x['p_value'])}")
        lines.append("DPO - SFT per user (paired interval over users; NDCG and hit in points): "
                     + "; ".join(parts))
        lines.append(ranking_verdict(r))
    return lines


REASONING_COLUMNS = ("parseable_rate", "accuracy", "coherence_rate", "all_claims_true_rate",
                     "false_claims_per_answer", "right_and_truthful_rate", "misquoted_titles_per_answer")
_PER_ANSWER = ("false_claims_per_answer", "misquoted_titles_per_answer")  # counts per answer, not rates


def reasoning_rows(results: dict) -> list[tuple[str, ...]]:
    """(header, then one row per model and the data's own answers) of the reasoning figures: each rate with
    its interval; n/a where no claim can be checked (the prompts show no history genres)."""
    r = results.get("reasoning")
    if not r:
        return []
    lv = level(results.get("alpha"))
    head = ("model", "answers", *(f"{LABELS[k]}" + ("" if k in _PER_ANSWER else f" [{lv} CI]")
                                  for k in REASONING_COLUMNS))
    out = [head]
    blocks = [*r["models"].items(), *([("data's own answers", r["reference"])] if r.get("reference") else [])]
    for name, b in blocks:
        cells = []
        for k in REASONING_COLUMNS:
            v, ci = b.get(k), b.get(f"{k}_ci")
            cells.append("n/a" if v is None else f"{v:.2f}" if k in _PER_ANSWER
                         else f"{pct(v)} {ci_text(ci)}")
        out.append((name, str(b["answers"]), *cells))
    return out


def reasoning_lines(results: dict) -> list[str]:
    """The reasoning table in fixed width, for the console."""
    rows = reasoning_rows(results)
    if not rows:
        return []
    r = results["reasoning"]
    sub = r.get("subset") or {}
    of = f" of {sub['of']:,}" if sub.get("of") and sub.get("pairs") != sub.get("of") else ""
    return ["", f"Reasoning quality: greedy answers on {next(iter(r['models'].values()))['n_pairs']:,}{of} "
                "test pairs x 2 orders, judged from the data (generations.csv)",
            *_fixed_width(rows[0], rows[1:])]


def _fixed_width(header, rows) -> list[str]:
    """A plain-text table: the header, a rule, the rows; the first column left-aligned, the others right."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def format_table(results: dict) -> str:
    """Fixed-width plain-text table of the per-model metrics, then baselines and ranking, for the console."""
    header = ("model", "pairs", "acc", f"{level(results.get('alpha'))} CI", "orig", "swap", "both",
              "pos-free", "consist", "first-A", "margin")
    rows = []
    for name, m in results["models"].items():
        free = m.get("position_free_accuracy")  # absent from an earlier version's results.json
        rows.append((name, str(m["n_pairs"]), pct(m["accuracy"]), ci_text(m["accuracy_ci"]),
                     pct(m["accuracy_original_order"]), pct(m["accuracy_swapped_order"]),
                     pct(m["accuracy_both_orders"]), "-" if free is None else pct(free),
                     pct(m["consistency"]),
                     pct(m["first_option_rate"]), f"{m['confidence']['mean_margin']:+.2f}"))
    ranking = ["", *ranking_lines(results["ranking"])] if results.get("ranking") else []
    return "\n".join([*_fixed_width(header, rows), *baseline_lines(results), *ranking,
                      *reasoning_lines(results)])


def format_verdict(results: dict) -> str:
    """Console block: the SFT-vs-DPO comparison, the verdict, the ranking line, the baseline clause, then
    every arm's comparisons (dporec.arms) that the results hold."""
    c = results.get(arms.MAIN.key)
    rule = "=" * 72
    if not c:
        return "\n".join([rule, "No SFT-vs-DPO comparison (needs both 'sft' and 'dpo' predictions).", rule])
    task = (results.get("meta") or {}).get("task")
    lines = [rule, arms.MAIN.lead + (f" (task: {task})" if task else "") + f": {PRIMARY}"]
    lines += comparison_lines(c) + ["", sentence(c)]
    if personal_verdict(results):
        lines += ["", personal_verdict(results)]
    reasoned = (results.get("reasoning") or {}).get(arms.MAIN.key)
    if reasoned:
        lines += ["", f"Reasoning quality, right and truthful (secondary): {sentence(reasoned)}"]
    if results.get("ranking") and results["ranking"].get("comparison"):
        lines += [ranking_verdict(results["ranking"])]
    if results.get("baselines"):
        lines += [baseline_clause(results)]
    for arm in arms.ARMS:
        for comp in arm.comparisons:
            if results.get(comp.key):
                lines += ["", f"{comp.lead} (secondary)", sentence(results[comp.key])]
            if (results.get("reasoning") or {}).get(comp.key):
                lines += ["", f"{comp.lead}, reasoning: right and truthful (secondary)",
                          sentence(results["reasoning"][comp.key])]
        match = results.get(f"{arm.name}_arm")
        if match:
            missed = f"; NOT matched: {', '.join(match['not_matched'])}" if match["not_matched"] else ""
            lines.append(f"Matched: {', '.join(match['matched'])}{missed}")
    if control_conclusion(results):
        lines += ["", control_conclusion(results)]
    return "\n".join(lines + [rule])


# ---------------------------------------------------------------------------------------------
# Data summaries (data/prepare_movielens.py)

def pairs_summary(summary: dict) -> str:
    """The console report of a build from ratings."""
    lines = [f"source {summary['source']}: {summary['ratings']:,} ratings by {summary['rating_users']:,} "
             f"users on {summary['movies']:,} movies; seed {summary['seed']}, history "
             f"{summary['history_len']}, at most {summary.get('train_pairs_per_user', '?')} pair(s) per "
             f"training user and {summary.get('eval_pairs_per_user', '?')} per val/test user; "
             f"{summary['users_without_examples']:,} users have too few liked movies for an example",
             f"{'split':<6} {'users':>6} {'examples':>9} {'A':>6} {'B':>6}  negatives"]
    for name, s in summary["splits"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in s["negative_kinds"].items()) or "-"
        lines.append(f"{name:<6} {s['users']:>6} {s['examples']:>9} {s['A']:>6} {s['B']:>6}  {kinds}")
    r = summary.get("ranking")
    if r:
        left = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["left_out"].items())
        lines.append(f"ranking: {r['users']} test users x {r['candidates_per_user']} "
                     f"rated candidates ({left} left out)")
    if summary.get("test_period_start") is not None:
        day = datetime.datetime.fromtimestamp(summary["test_period_start"], datetime.UTC).date()
        share = summary["val_fraction"] + summary["test_fraction"]
        lines.append(f"temporal split: training pairs before {day}, val/test pairs from then on (the last "
                     f"{share:.0%} of the targets' times)")
    p = summary.get("personal_test")
    if p:
        lines.append(f"personal task ({p['file']}, general appeal matched): {p['examples']} test pairs from "
                     f"{p['users']} of {p['test_users']} test users, for the second verdict")
    lines.append(f"built in {summary['seconds']:.1f} s")
    return "\n".join(lines)


def thesis_summary(summary: dict) -> str:
    """The console report of a thesis-file split."""
    a = summary["answers_in_file"]
    layouts = ", ".join(f"{k} {v:,}" for k, v in summary["layouts"].items())
    lines = [f"thesis file {summary['file']}: {summary['lines']:,} lines (options {layouts}); answer A in "
             f"{a['A']:,}, B in {a['B']:,}; seed {summary['seed']}",
             f"{'split':<6} {'users':>6} {'examples':>9} {'A':>6} {'B':>6}"]
    lines += [f"{name:<6} {s['users']:>6} {s['examples']:>9} {s['A']:>6} {s['B']:>6}"
              for name, s in summary["splits"].items()]
    lines += summary["notes"]
    lines.append(f"built in {summary['seconds']:.1f} s")
    return "\n".join(lines)


def dataset_lines(path, d: dict) -> list[str]:
    """data/check_dataset.py's report of one file (data.inspect.describe)."""
    lines = [f"{path}: {d['n']} examples, {d['users'] or 'unknown'} users, duplicate ids: none",
             f"  answer in position A: {d['A']} ({100 * d['a_fraction']:.1f}%), B: {d['B']}",
             "  negatives: " + ", ".join(f"{k} {v}" for k, v in d["negatives"].items()),
             "  options: " + ", ".join(f"{k} {v}" for k, v in d["layouts"].items())
             + " (inline = the thesis's one-line layout)",
             f"  DPO rejected answers: {d['mirrored']} with the reasoning mirrored to the other option, "
             f"{d['n'] - d['mirrored'] - d.get('own_rejected', 0)} decision sentence only (free-text "
             f"reasoning, see docs/data.md)"
             + (f", {d['own_rejected']} the record's own (on-policy pairs)" if d.get("own_rejected") else "")]
    if not d["users"] and d["layouts"].get("inline") and not d.get("built_split"):
        lines.append(f"  to train and evaluate on it, split it (one line per user in the thesis's file): "
                     f"python data/prepare_movielens.py --source thesis:{path} --out data/generated/thesis")
    return lines
