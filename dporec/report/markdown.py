"""report.md of an evaluation and aggregate.md of a run over seeds."""
from __future__ import annotations

from pathlib import Path

from dporec import runs
from dporec.analysis.metrics import BY_USERS, bootstrap_label
from dporec.report.numbers import ci_text, format_p, pct
from dporec.report.sentences import LABEL_RULE, baseline_clause, comparison_lines
from dporec.report.tables import ranking_lines, sentence


def _models_table(models: dict, block: str | None) -> list[str]:
    lines = ["| Model | Pairs | Two-order accuracy [95% CI] | Original | Swapped | Both orders | "
             "Consistency | First-option rate | Mean margin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in models.items():
        b = m if block is None else m[block]
        lines.append(f"| {name} | {m['n_pairs']} | {pct(b['accuracy'])} {ci_text(b['accuracy_ci95'])} | "
                     f"{pct(b['accuracy_original_order'])} | {pct(b['accuracy_swapped_order'])} | "
                     f"{pct(b['accuracy_both_orders'])} | {pct(b['consistency'])} | "
                     f"{pct(b['first_option_rate'])} | {b['confidence']['mean_margin']:+.2f} |")
    return lines


def baselines_section(results: dict) -> list[str]:
    b = results.get("baselines")
    if not b:
        return []
    lines = ["## Baselines on the same test pairs", "",
             "| Rule | Two-order accuracy [95% CI] |", "|---|---:|"]
    for v in b.values():
        lines.append(f"| {v['label']} | {pct(v['accuracy'])} {ci_text(v['ci'])} |" if v["available"]
                     else f"| {v['label']} | not available: {v['reason']} |")
    lines += ["", "Each rule picks a movie by a number, the same in both orders; a tie counts 0.5. Mean "
              "rating, popularity and co-occurrence read only training users' ratings made before the "
              "pair's target time; genre overlap and release year read the prompt. Intervals resample "
              "users. The strongest rule is chosen on the validation pairs."]
    return lines + ["", baseline_clause(results)]


def _onpolicy(results: dict) -> list[str]:
    c, v = results.get("comparison_onpolicy"), results.get("comparison_onpolicy_vs_dpo")
    if not c and not v:
        return []
    lines = ["", "## On-policy DPO", "",
             "DPO from the SFT adapter on pairs of the SFT model's own sampled answers: chosen, a right "
             "decision whose genre claims are all true; rejected, a wrong decision (judged from the "
             "user's ratings and the history, not by a model). The same steps, beta, learning rate and "
             "reference as the off-policy DPO, so the two DPO arms differ only in their pairs. Pair "
             "counts: onpolicy_pairs/summary.json."]
    for comp, head in ((c, "### On-policy DPO vs SFT"), (v, "### On-policy vs off-policy DPO")):
        if comp:
            lines += ["", head, ""] + comparison_lines(comp) + ["", f"**{sentence(comp)}**"]
    return lines


def _control(results: dict) -> list[str]:
    c = results.get("comparison_control")
    if not c:
        return []
    lines = ["", "## DPO vs the compute-matched SFT control", "",
             "SFT continued from the SFT adapter for as many optimizer steps as DPO took: tells \"DPO beats "
             "SFT\" apart from \"more training beats less\".", ""]
    lines += comparison_lines(c) + ["", f"**{sentence(c)}**"]
    match = results.get("control_arm")
    if match:
        lines += ["", "| What | DPO | SFT control | Matched |", "|---|---:|---:|---|"]
        lines += [f"| {i['what']} | {i['dpo']} | {i['control']} | {'yes' if i['matched'] else 'NO'} |"
                  for i in match["items"]]
        lines += ["", f"Not matchable: {match['not_matchable']}."]
    else:
        lines += ["", "What the control matches is unknown: its run folder or the DPO run folder "
                      "(config.yaml, metrics.json) is not there."]
    return lines


def report_md(results: dict) -> str:
    """report.md: model table, baselines, ranking, SFT-vs-DPO comparison, verdict, control arm, run facts."""
    models = results["models"]
    how = bootstrap_label(next(iter(models.values())).get("clustering") or BY_USERS)
    lines = ["# Evaluation: DPO vs SFT ranking adherence", ""]
    task = (results.get("meta") or {}).get("task")
    lines += [f"Task: {task}.", ""] if task else []
    lines += _models_table(models, None)
    lines += ["", "Accuracy averages both option orders of every "
                  f"test pair; intervals: percentile {how} of the "
              "per-pair scores. Consistency: the same movie is chosen in both orders. Margin: log p(correct "
              "answer) \u2212 log p(wrong answer) of the decision "
              "sentence, in nats. Exact ties count as wrong."]
    if all(m.get("full_answer") for m in models.values()):
        lines += ["", "## Full-answer scores (decision + reasoning + EOS)", ""]
        lines += _models_table(models, "full_answer")
    gen = {name: m["generation"] for name, m in models.items() if m.get("generation")}
    if gen:
        lines += ["", "## Generation (parsed free text; invalid outputs count as wrong)", "",
                  "| Model | Valid outputs | Accuracy [95% CI] | Consistency | First-option rate |",
                  "|---|---:|---:|---:|---:|"]
        for name, g in gen.items():
            acc = f"{pct(g['accuracy'])} {ci_text(g['accuracy_ci95'])}"
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
    lines += ["", "## SFT vs DPO", ""]
    c = results.get("comparison")
    if c:
        lines += comparison_lines(c)
        lines += ["", f"**{sentence(c)}**", "", f"The label follows the interval: {LABEL_RULE}."]
    else:
        lines.append("No comparison: it needs predictions from both an `sft` and a `dpo` model.")
    lines += _control(results)
    lines += _onpolicy(results)
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


def aggregate_markdown(agg: dict) -> str:
    """aggregate.md: mean ± sd over seeds, each seed's comparison, the pooled comparisons."""
    keys = list(next(iter(agg["metrics"].values())))
    lines = [f"# DPO vs SFT over seeds {', '.join(map(str, agg['seeds']))}", "",
             "Mean ± sample sd over seeds (training seed; same test pairs).", "",
             "| Model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for m, ms in agg["metrics"].items():
        lines.append(f"| {m} | " + " | ".join(_pm(ms[k], k != "mean_margin") for k in keys) + " |")
    lines += ["", "## Per seed", "", "| Seed | SFT | DPO | DPO − SFT [95% CI] | Paired test p | Verdict |",
              "|---|---:|---:|---:|---:|---|"]
    for s, r in agg["per_seed"].items():
        c = r["comparison"]
        if c:
            p = "n/a" if c.get("p_value") is None else format_p(c["p_value"])
            lines.append(f"| {s} | {100 * c['a_accuracy']:.1f}% | {100 * c['b_accuracy']:.1f}% | "
                         f"{100 * c['difference']:+.1f} [{100 * c['ci95'][0]:+.1f}, "
                         f"{100 * c['ci95'][1]:+.1f}] | {p} | {c['verdict']} |")
    for key, title in (("pooled", "Pooled over seeds: DPO vs SFT"),
                       ("pooled_control", "Pooled over seeds: DPO vs the compute-matched SFT control"),
                       ("pooled_onpolicy", "Pooled over seeds: on-policy DPO vs SFT")):
        if agg.get(key):
            lines += ["", f"## {title}", ""] + comparison_lines(agg[key]) + ["", f"**{sentence(agg[key])}**"]
    lines += ["", f"Note: {agg['note']}."]
    return "\n".join(lines)


def model_card(stage: str, cfg: dict, m: dict) -> str:
    """README.md of an adapter folder: what it is (base, stage, data, reference), its headline training
    numbers, and how to use it. Replaces PEFT's generated card, which cannot name the base or the data."""
    base, d = cfg["model"]["name"], cfg["data"]
    what = {"sft": "supervised fine-tuning (SFT) on the chosen answers",
            "dpo": f"DPO (beta {cfg['dpo']['beta']}, loss {'+'.join(cfg['dpo']['loss_type'])}) from "
                   f"{'the SFT adapter' if cfg['dpo']['init'] == 'sft' else 'the base model'}"
                   + (" on pairs of the SFT model's own sampled answers (the on-policy arm)"
                      if cfg["dpo"]["run_name"] == runs.ONPOLICY else "")}[stage]
    if stage == "sft" and cfg["sft"]["init_adapter"]:
        what = f"SFT continued from {cfg['sft']['init_adapter']} (the compute-matched control arm)"
    ev = m.get("final_eval") or {}
    numbers = [f"- optimizer steps: {m.get('steps')}, training examples: {m.get('n_train')}, "
               f"validation examples: {m.get('n_val')}"]
    if m.get("final_train_loss") is not None:
        numbers.append(f"- mean training loss: {m['final_train_loss']:.4f}")
    if ev.get("eval_loss") is not None:
        numbers.append(f"- final validation loss: {ev['eval_loss']:.4f}")
    if ev.get("eval_rewards/accuracies") is not None:
        numbers.append(f"- final validation reward accuracy: {ev['eval_rewards/accuracies']:.3f}, "
                       f"reward margin {ev.get('eval_rewards/margins', float('nan')):.4f}")
    if m.get("reference_model"):
        numbers.append(f"- DPO reference: {m['reference_model']}")
    out = cfg["output_dir"]
    folder = f"{out}/{stage}"
    return "\n".join([
        f"# LoRA adapter: {stage.upper()} of {base} for pairwise movie recommendation", "",
        f"A LoRA adapter (r={cfg['lora']['r']}, alpha={cfg['lora']['alpha']}) on **{base}** "
        f"({'4-bit NF4' if cfg['model']['load_in_4bit'] else 'unquantized'}), trained by {what}.",
        f"Task: given a user's five most recent liked movies and two candidates, say which one the user "
        f"will like (\"The better recommendation is Option A.\"). Data: {d['train_file']} "
        f"(validation {d['val_file']}); seed {cfg['seed']}.", "",
        "## Training", "", *numbers, "",
        "Curves: training_curves.png. Everything recorded: metrics.json, config.yaml, run_info.json.",
        f"Evaluation against base and SFT on held-out users: {out}/eval/report.md (evaluate_dpo.py).", "",
        "## Use", "",
        "```bash",
        f"python recommend.py --config {folder}/config.yaml --adapter {folder} --input my_users.jsonl",
        f"python export.py --adapter {folder} --out merged-{stage}   # one 16-bit model, no PEFT",
        "```", "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"base = AutoModelForCausalLM.from_pretrained(\"{base}\")",
        f"model = PeftModel.from_pretrained(base, \"{folder}\")",
        "```", ""])
