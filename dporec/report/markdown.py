"""report.md of an evaluation and aggregate.md of a run over seeds. Both iterate over the comparisons of
dporec.arms, and label every interval with the level it was made at (eval.alpha)."""
from __future__ import annotations

from pathlib import Path

from dporec import arms
from dporec.analysis.metrics import BY_USERS, bootstrap_label
from dporec.analysis.reasoning import LABELS, RATES
from dporec.report.numbers import ci_text, format_p, level, pct
from dporec.report.sentences import (
    HYPOTHESIS,
    LABEL_RULE,
    PRIMARY,
    baseline_clause,
    comparison_lines,
    control_conclusion,
)
from dporec.report.tables import ranking_lines, reasoning_rows, sentence

_MARK = {"true": ("**", "** (true)"), "false": ("~~", "~~ (false: {why})"),
         "unchecked": ("_", "_ (unchecked)")}


def _highlighted(answer: str, claims: list[dict]) -> str:
    """The answer with each claim marked where it stands: true in bold, false struck through with what is
    wrong, unchecked in italics."""
    for c in claims:
        head, tail = _MARK[c["status"]]
        if c["text"] and c["text"] in answer:
            answer = answer.replace(c["text"], f"{head}{c['text']}{tail.format(why=c['why'])}", 1)
    return answer


def _reasoning_section(results: dict) -> list[str]:
    """The thesis's third metric: every model's greedy answers judged from the data, the comparisons on
    the headline rate, and three answers per model with their claims marked."""
    r = results.get("reasoning")
    if not r:
        return []
    rows = reasoning_rows(results)
    sub = r.get("subset") or {}
    n = next(iter(r["models"].values()))["n_pairs"]
    which = (f"a seeded sample of {n:,} of the {sub['of']:,} test pairs (the same for every model)"
             if sub.get("of") and n < sub["of"] else f"all {n:,} test pairs")
    lines = ["", "## Reasoning quality (secondary)", "",
             f"Greedy answers on {which}, in both option orders, up to {sub.get('max_new_tokens', '?')} new "
             "tokens, each judged from the data (dporec/data/judge.py): the decision against the user's "
             "label; each claim about an option's genres and the history true, false, or unchecked where "
             "the prompt shows no history genres (never counted true); coherent when the reasoning argues "
             "for the option it chose. Right and truthful: the right decision, coherent, every claim "
             "checked and true. Rates are over all answers (an unparseable one counts as wrong, incoherent "
             "and claiming nothing); intervals: percentile bootstrap over users. The data's own answers "
             "(what SFT trains on), judged the same way, show what copying them would score. Every answer "
             "and its judgement: generations.csv.", "",
             "| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)]
    lines += ["| " + " | ".join(x) + " |" for x in rows[1:]]
    if not any(m["checkable"] for m in r["models"].values()):
        lines += ["", "The prompts show no genres for the history (the thesis's file without its users "
                      "recovered: data.source thesis:FILE?ml1m=ml-1m.zip), so no claim can be checked: the "
                      "rates that need them are n/a and no comparison is made on them."]
    for c in arms.comparisons():
        if r.get(c.key):
            tag = "(secondary to the primary measure)"
            lines += ["", f"### {c.title}: right and truthful {tag}", ""] + comparison_lines(r[c.key])
            lines += ["", f"**Right and truthful: {sentence(r[c.key])}**"]
    if r.get("examples"):
        lines += ["", "### Example answers", "",
                  "Three per model (one with a true claim, one with a false claim, one that is not right and "
                  "truthful, where there are such): **true**, ~~false~~, _unchecked_."]
        for name, shown in r["examples"].items():
            lines += ["", f"**{name}**", ""]
            for e in shown:
                verdict = "right and truthful" if e["right_and_truthful"] else e["kind"] + (
                    ", coherent" if e["coherent"] else ", not coherent")
                text = _highlighted(e["generated"] or "(empty)", e["claims_detail"]).replace("\n", " ")
                lines.append(f"- pair {e['pair_id']} ({e['order']} order, label {e['label']}; {verdict}): "
                             f"{text}")
    return lines


def _models_table(models: dict, block: str | None, lv: str) -> list[str]:
    lines = [f"| Model | Pairs | Two-order accuracy [{lv} CI] | Original | Swapped | Both orders | "
             "Position-free | Consistency | First-option rate | Mean margin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        b = m if block is None else m[block]
        free = b.get("position_free_accuracy")  # absent from an earlier version's results.json
        lines.append(f"| {name} | {m['n_pairs']} | {pct(b['accuracy'])} {ci_text(b['accuracy_ci'])} | "
                     f"{pct(b['accuracy_original_order'])} | {pct(b['accuracy_swapped_order'])} | "
                     f"{pct(b['accuracy_both_orders'])} | {'-' if free is None else pct(free)} | "
                     f"{pct(b['consistency'])} | "
                     f"{pct(b['first_option_rate'])} | {b['confidence']['mean_margin']:+.2f} |")
    return lines


def _rule_rows(rules: dict, lv: str) -> list[str]:
    """A table of the rules' accuracies, or why a rule is not available."""
    return [f"| Rule | Two-order accuracy [{lv} CI] |", "|---|---:|"] + [
        f"| {v['label']} | {pct(v['accuracy'])} {ci_text(v['ci'])} |" if v["available"]
        else f"| {v['label']} | not available: {v['reason']} |" for v in rules.values()]


def baselines_section(results: dict) -> list[str]:
    b = results.get("baselines")
    if not b:
        return []
    lines = ["## Baselines on the same test pairs", ""] + _rule_rows(b, level(results.get("alpha")))
    whole = results.get("baselines_whole_period") or {}
    lines += [f"| {v['label']}, whole period | {pct(v['accuracy'])} {ci_text(v['ci'])} |"
              for v in whole.values() if v["available"]]
    lines += ["", "Each rule picks a movie by a number, the same in both orders; a tie counts 0.5. Mean "
              "rating, popularity and co-occurrence read only training users' ratings made before the "
              "pair's target time (time-cut: what a recommender could have known then); genre overlap and "
              "release year read the prompt. The rows marked \"whole period\" read every training rating, "
              "later ones included: the information the models were trained on (their training pairs span "
              "the whole period), so the comparator matched to their information. Intervals resample "
              "users. The strongest rule is chosen on the validation pairs, in each set."]
    return lines + ["", baseline_clause(results)]


def _personal_section(results: dict) -> list[str]:
    """The second verdict: the same models on the personal task's pairs (general appeal matched away)."""
    p = results.get("personal")
    if not p:
        return []
    lines = ["", "## Personal taste alone (secondary)", "",
             "The same test users' pairs with a disliked movie that training users rated about as well and "
             "as often as the liked one, released around the same time "
             f"({p['test_file']}, {p['n_pairs']:,} pairs): general appeal cannot answer them, so what is "
             "left is the user's own taste. The main task's pairs test appeal and taste together.", ""]
    lines += _models_table(p["models"], None, level(results.get("alpha")))
    if p.get("baselines"):
        lines += ["", "Rules on the personal pairs (general appeal should be near 50% here):", ""]
        lines += _rule_rows(p["baselines"], level(results.get("alpha")))
    for c in arms.comparisons():
        if p.get(c.key):
            lines += ["", f"### {c.title}, personal task", ""] + comparison_lines(p[c.key])
            lines += ["", f"**{sentence(p[c.key])}**"]
    return lines


def _arm_section(results: dict, arm: arms.Arm) -> list[str]:
    """An arm's section: what it is, each of its comparisons, and what it shares with the stage it is
    matched to (when the arm has one)."""
    present = [c for c in arm.comparisons if results.get(c.key)]
    if not present:
        return []
    lines = ["", f"## {arm.title}", "", arm.about]
    for c in present:
        lines += ["", f"### {c.title} (secondary)", ""] + comparison_lines(results[c.key])
        lines += ["", f"**{sentence(results[c.key])}**"]
    if arm is arms.CONTROL_ARM and control_conclusion(results):
        lines += ["", f"**{control_conclusion(results)}**"]
    if arm.matched_to is None:
        return lines
    match = results.get(f"{arm.name}_arm")
    ref, own = arm.matched_to, arm.model
    if match:
        lines += ["", f"| What | {ref.label} | {own.label} | Matched |", "|---|---:|---:|---|"]
        lines += [f"| {i['what']} | {i[ref.name]} | {i[arm.name]} | {'yes' if i['matched'] else 'NO'} |"
                  for i in match["items"]]
        lines += ["", f"Not matchable: {match['not_matchable']}."]
    else:
        lines += ["", f"What the {own.label} matches is unknown: its run folder or the {ref.label} run "
                      "folder (config.yaml, metrics.json) is not there."]
    return lines


def report_md(results: dict) -> str:
    """report.md: model table, baselines, ranking, SFT-vs-DPO comparison, verdict, every arm's section, the
    training curves and the run's facts."""
    models = results["models"]
    lv = level(results.get("alpha"))
    how = bootstrap_label(next(iter(models.values())).get("clustering") or BY_USERS)
    lines = ["# Evaluation: DPO vs SFT ranking adherence", ""]
    task = (results.get("meta") or {}).get("task")
    lines += [f"Task: {task}.", ""] if task else []
    lines += _models_table(models, None, lv)
    lines += ["", "Accuracy averages both option orders of every "
                  f"test pair; intervals: percentile {how} of the "
              "per-pair scores. Consistency: the same movie is chosen in both orders. Margin: log p(correct "
              "answer) \u2212 log p(wrong answer) of the decision "
              "sentence, in nats. Exact ties count as wrong."]
    if all(m.get("full_answer") for m in models.values()):
        lines += ["", "## Full-answer scores (decision + reasoning + EOS)", ""]
        lines += _models_table(models, "full_answer", lv)
    gen = {name: m["generation"] for name, m in models.items() if m.get("generation")}
    if gen:
        lines += ["", "## Generation (parsed free text; invalid outputs count as wrong)", "",
                  f"| Model | Valid outputs | Accuracy [{lv} CI] | Consistency | First-option rate |",
                  "|---|---:|---:|---:|---:|"]
        for name, g in gen.items():
            acc = f"{pct(g['accuracy'])} {ci_text(g['accuracy_ci'])}"
            lines.append(f"| {name} | {pct(g['valid_rate'])} | {acc} | {pct(g['consistency'])} | "
                         f"{pct(g['first_option_rate'])} |")
    lines += ["", *baselines_section(results)] if results.get("baselines") else []
    if results.get("ranking"):
        lines += ["", "## Ranking adherence over N candidates per user", "", "```",
                  *ranking_lines(results["ranking"]), "```", "",
                  "Every pair of a user's candidates asked in both option orders; the pairwise preferences "
                  "ranked by Copeland and compared with the user's ratings. Intervals: percentile bootstrap "
                  "over users. Plot: ranking.png.", "",
                  "ranking.csv has one row per ranker (model or rule) and user: the three metrics, and in "
                  "`scores` one number per candidate, in the candidate file's order, higher ranked first. "
                  "For a model it is the Copeland rank score (0 = ranked last; two candidates share one only "
                  "when their wins and summed margins are equal); for a rule, the rule's own number (e.g. "
                  "the movie's mean rating before the cutoff)."]
    lines += ["", f"## {arms.MAIN.title} (primary)", "", f"This is {PRIMARY}.", ""]
    c = results.get(arms.MAIN.key)
    if c:
        lines += comparison_lines(c)
        lines += ["", f"**{sentence(c)}**", "",
                  f"The label follows the interval: {LABEL_RULE}. {HYPOTHESIS}."]
    else:
        lines.append("No comparison: it needs predictions from both an `sft` and a `dpo` model.")
    lines += _personal_section(results)
    lines += _reasoning_section(results)
    for arm in arms.ARMS:
        lines += _arm_section(results, arm)
    curves = (results.get("meta") or {}).get("training_curves") or {}
    if curves:
        lines += ["", "## Training curves", "", "Loss per optimizer step (training line, validation dots); "
                  "for DPO also the reward margin, reward accuracy and log p(chosen), whose fall is "
                  "likelihood displacement.", ""]
        lines += [f"![{name}]({path})" for name, path in curves.items()]
    meta = {k: v for k, v in (results.get("meta") or {}).items() if isinstance(v, (str, int, float, bool))}
    if meta:
        lines += ["", "## Run", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    return "\n".join(lines) + "\n"


def write_report_md(eval_dir, results: dict) -> Path:
    path = Path(eval_dir) / "report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report_md(results), encoding="utf-8")
    return path


def _pm(s: dict, as_pct: bool) -> str:
    if s["mean"] is None:
        return "n/a"
    sd = "" if s["sd"] is None else f" ± {(100 if as_pct else 1) * s['sd']:.1f}"
    return f"{100 * s['mean']:.1f}{sd}%" if as_pct else f"{s['mean']:+.2f}{sd}"


def _per_seed_table(agg: dict, comp: arms.Comparison) -> list[str]:
    rows = [(s, r.get(comp.key)) for s, r in agg["per_seed"].items()]
    if not any(c for _, c in rows):
        return []
    a, b = comp.names
    lines = ["", f"### {comp.title}", "",
             f"| Seed | {a} | {b} | {b} − {a} [{level(agg.get('alpha'))} CI] | Paired test p | Verdict |",
             "|---|---:|---:|---:|---:|---|"]
    for s, c in rows:
        if c:
            p = "n/a" if c.get("p_value") is None else format_p(c["p_value"])
            lines.append(f"| {s} | {100 * c['a_accuracy']:.1f}% | {100 * c['b_accuracy']:.1f}% | "
                         f"{100 * c['difference']:+.1f} [{100 * c['ci'][0]:+.1f}, "
                         f"{100 * c['ci'][1]:+.1f}] | {p} | {c['verdict']} |")
    return lines


def aggregate_markdown(agg: dict) -> str:
    """aggregate.md: mean ± sd over seeds, each seed's comparisons, every pooled comparison."""
    keys = list(next(iter(agg["metrics"].values())))
    lines = [f"# DPO vs SFT over seeds {', '.join(map(str, agg['seeds']))}", "",
             "Mean ± sample sd over seeds (training seed; same test pairs).", "",
             "| Model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for m, ms in agg["metrics"].items():
        lines.append(f"| {m} | " + " | ".join(_pm(ms[k], k != "mean_margin") for k in keys) + " |")
    lines += ["", "## Per seed"]
    for comp in arms.comparisons():
        lines += _per_seed_table(agg, comp)
    for comp in arms.comparisons():
        pooled = agg.get(comp.pooled_key)
        if pooled:
            about = "about the method" if pooled.get("scope") == "method" else "these models"
            tag = " (primary)" if comp is arms.MAIN else " (secondary)"
            lines += ["", f"## Over seeds, {about}: {comp.title}{tag}", ""] + comparison_lines(pooled)
            lines += ["", f"**{sentence(pooled)}**"]
    personal = agg.get("personal") or {}
    for comp in arms.comparisons():
        if personal.get(comp.pooled_key):
            lines += ["", f"## Over seeds, personal taste alone: {comp.title} (secondary)", ""]
            lines += comparison_lines(personal[comp.pooled_key])
            lines += ["", f"**{sentence(personal[comp.pooled_key])}**"]
    reasoned = agg.get("reasoning")
    if reasoned:
        keys = [k for k, _, _ in RATES]
        lines += ["", "## Reasoning quality over seeds (secondary)", "",
                  "Each seed's generated answers judged from the data; mean ± sample sd over seeds.", "",
                  "| Model | " + " | ".join(LABELS[k] for k in keys) + " |", "|---|" + "---:|" * len(keys)]
        for m, ms in reasoned["metrics"].items():
            lines.append(f"| {m} | " + " | ".join(
                "n/a" if ms[k]["mean"] is None else f"{ms[k]['mean']:.2f}" if k.endswith("_per_answer")
                else _pm(ms[k], True) for k in keys) + " |")
        for comp in arms.comparisons():
            if reasoned.get(comp.pooled_key):
                lines += ["", f"### Over seeds: {comp.title}, right and truthful (secondary)", ""]
                lines += comparison_lines(reasoned[comp.pooled_key])
                lines += ["", f"**Right and truthful: {sentence(reasoned[comp.pooled_key])}**"]
    lines += ["", f"Note: {agg['note']}."]
    return "\n".join(lines)
