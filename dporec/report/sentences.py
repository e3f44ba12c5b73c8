"""The sentences of a verdict: the comparison of two models, its label's reason, the baselines' clause."""
from __future__ import annotations

from dporec.analysis.comparison import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from dporec.analysis.metrics import BY_PAIRS
from dporec.report.numbers import about, format_p, level, pct, points, signed

# The hypothesis the label tests, stated once (README "Reading the verdict", docs/statistics.md): superiority,
# b better than a. Whether b is better by the practical margin (the thesis's "> 2%") is said beside it.
LABEL_RULE = ("SUPPORTED when the whole interval is above 0; NOT SUPPORTED when the whole interval is below "
              "the practical margin; INCONCLUSIVE otherwise")
HYPOTHESIS = ("The label tests superiority (better at all); whether by the practical margin is judged beside "
              "it: shown, ruled out or open")


# Declared once; the console, report.md and aggregate.md mark every other labelled line as secondary.
PRIMARY = ("the primary, prespecified comparison: DPO vs SFT in two-order pairwise accuracy on the held-out "
           "test pairs; every other labelled line (personal task, ranking, arms, baselines) is secondary")


def _margin_points(c: dict) -> str:
    return f"{100 * c['margin']:g}-point margin"


def label_reason(c: dict, margin_text: str | None = None) -> str:
    """Why the interval gives its label, and what it says about the practical margin."""
    m = margin_text or _margin_points(c)
    if c["verdict"] == SUPPORTED:
        reason = "the whole interval is above 0"
        margin = {"shown": f"better by at least the {m}",
                  "open": f"whether by the {m} is not settled",
                  "ruled out": f"better, but by less than the {m} (the whole interval is below it: the "
                               f"margin is ruled out)"}[c["margin_status"]]
        return f"{reason}; {margin}"
    if c["verdict"] == NOT_SUPPORTED:
        worse = f"; {c['names'][1]} is worse" if c["ci"][1] < 0 else ""
        return f"the whole interval is below the {m}{worse}"
    assert c["verdict"] == INCONCLUSIVE
    return f"the interval reaches both 0 and the {m}"


def _sameness(c: dict) -> str:
    """What 'no pair differs' means: the same choices, or other choices that happen to score the same."""
    n, k, d = c["n_pairs"], c.get("decisions_differ", 0), c.get("decisions", 0)
    if "decisions" not in c:  # a comparison of another per-pair score (the reasoning's headline)
        return f"every one of the {n:,} pairs scores the same for both models"
    if k == 0:
        return f"the two models make the same choice on all {d:,} decisions"
    return (f"every one of the {n:,} pairs scores the same for both models, although they choose differently "
            f"on {k:,} of {d:,} decisions")


def label_text(c: dict, margin_text: str | None = None) -> str:
    """The label as printed: SUPPORTED says so when the effect is smaller than the practical margin."""
    if c["verdict"] == SUPPORTED and c.get("margin_status") == "ruled out":
        return f"{SUPPORTED} (by less than the {margin_text or _margin_points(c)})"
    return c["verdict"]


def verdict_sentence(c: dict) -> str:
    """One honest sentence: the label, the accuracies, the difference with its interval and p, the label's
    reason, and the test size the prespecified margin needs."""
    a_name, b_name = c.get("names") or ("SFT", "DPO")
    lo, hi = c["ci"]
    head = (f"{label_text(c)}: {b_name} {100 * c['b_accuracy']:.1f}% vs {a_name} "
            f"{100 * c['a_accuracy']:.1f}% ({points(c['difference'], 100 * c['margin'])} points, "
            f"{level(c['alpha'])} CI "
            f"{signed(100 * lo)} to {signed(100 * hi)}, {format_p(c['p_value'])}; {label_reason(c)})")
    parts = [head]
    if c["pairs_b_higher"] + c["pairs_a_higher"] == 0:
        parts.append(_sameness(c))
    need, n = c.get("pairs_for_margin"), c["n_pairs"]
    power = f"{100 * c['power']:g}%"
    if need is None:
        parts.append(f"no pair differs, so these pairs cannot size a test for the {_margin_points(c)}")
    else:
        parts.append(f"about {about(need)} test pairs give {power} power for the {_margin_points(c)} "
                     f"(this test has {n:,})")
    return "; ".join(parts) + "."


def interval_description(c: dict) -> str:
    unit = "pairs (no user ids)" if c.get("clustering") == BY_PAIRS else "users"
    i = c["interval"]
    if c.get("scope") == "method":  # over seeds: the test pairs' sampling and the retraining, combined
        return (f"about the method: the test pairs' cluster-robust t half-width over {unit} (CR2, "
                f"{i['df_test']:.1f} df, one pseudo-pair of each sign) and the seeds' t half-width "
                f"({i['df_seeds']} df, seed sd of the difference {100 * c['seed_spread']['sd']:.1f} points) "
                "combined as a root sum of squares; p is the level at which it reaches 0")
    return (f"cluster-robust t interval over {unit} (CR2 variance, Bell-McCaffrey degrees of freedom "
            f"{i['df']:.1f}) with one pseudo-pair of each sign; p from the same statistic")


def comparison_lines(c: dict) -> list[str]:
    """The comparison's facts, one '- ' line each (console and report.md)."""
    a, b = c.get("names") or ("SFT", "DPO")
    lo, hi = c["ci"]
    runs = c.get("n_runs", 1)
    lines = [
        f"- Test pairs: {c['n_pairs']:,} from {c['n_users']:,} users, each scored in both option orders"
        + (f"; each pair's score averaged over {runs} seeds first" if runs > 1 else "")
        + ("; no user ids, so every pair is its own cluster" if c.get("clustering") == BY_PAIRS else ""),
        f"- {c.get('measure_label') or 'Two-order accuracy'}: {a} {pct(c['a_accuracy'])}, {b} "
        f"{pct(c['b_accuracy'])}; difference "
        f"({b} \u2212 {a}) {signed(100 * c['difference'])} points; {b} scores higher on "
        f"{c['pairs_b_higher']} pair{'' if c['pairs_b_higher'] == 1 else 's'}, {a} on "
        f"{c['pairs_a_higher']}"
        + (f"; they choose differently on {c['decisions_differ']:,} of {c['decisions']:,} decisions"
           if "decisions" in c else ""),
        f"- {level(c['alpha'])} CI of the difference: {signed(100 * lo)} to {signed(100 * hi)} "
        f"points, {format_p(c['p_value'])} ({interval_description(c)}; the interval excludes 0 exactly when "
        f"p < {c['alpha']:g})",
        f"- Verdict {label_text(c)}: {LABEL_RULE} ({_margin_points(c)}); {label_reason(c)}. {HYPOTHESIS}",
    ]
    need = c.get("pairs_for_margin")
    lines.append(f"- Test size for {100 * c['power']:g}% power to detect the {_margin_points(c)}, from the "
                 f"per-pair differences (sd {c['sd_pair_difference']:.3f}) and the design effect of "
                 f"clustering ({c['design_effect']:.2f}): "
                 + ("not estimable (no pair differs)" if need is None else f"{need:,} pairs"))
    spread = c.get("seed_spread")
    if spread:
        diffs = ", ".join(signed(100 * d) for d in spread["differences"])
        sd = "" if spread["sd"] is None else f" (sd {100 * spread['sd']:.1f})"
        ci = ("" if spread["ci"] is None else
              f"; over seeds, {level(c['alpha'])} CI {signed(100 * spread['ci'][0])} to "
              f"{signed(100 * spread['ci'][1])}")
        lines.append(f"- Each seed's difference in points: {diffs}{sd}{ci}")
    fixed = c.get("these_models")
    if fixed:
        lo, hi = fixed["ci"]
        lines.append(f"- About these {runs} seeds' trained models only (test pairs' sampling, models held "
                     f"fixed): {level(c['alpha'])} CI {signed(100 * lo)} to {signed(100 * hi)} points, "
                     f"{format_p(fixed['p_value'])}, {fixed['verdict']}")
    return lines


def personal_verdict(results: dict) -> str | None:
    """The second verdict: DPO vs SFT on the personal task's pairs (the same test users, general appeal
    matched away), when the evaluation scored them."""
    c = (results.get("personal") or {}).get("comparison")
    if not c:
        return None
    return (f"Personal taste alone (secondary: the same test users' {c['n_pairs']:,} pairs with general "
            f"appeal matched away, where the main task's pairs test appeal and taste together): "
            f"{verdict_sentence(c)}")


def control_conclusion(results: dict) -> str | None:
    """Preference signal or more training: DPO vs SFT and DPO vs the compute-matched control read together
    (None unless both comparisons are there)."""
    main, control = results.get("comparison"), results.get("comparison_control")
    if not main or not control:
        return None
    vs = f"DPO vs SFT {label_text(main)}, DPO vs the compute-matched control {label_text(control)}"
    if main["verdict"] != SUPPORTED:
        return (f"Preference signal or more training: {vs}. DPO does not clearly beat SFT, so there is no "
                "gain for the control to explain.")
    if control["verdict"] == SUPPORTED:
        return (f"Preference signal or more training: {vs}. DPO also beats SFT trained for as many more "
                "steps, so more training alone does not explain its gain: it comes with the preference "
                "signal.")
    return (f"Preference signal or more training: {vs}. DPO beats SFT but not clearly the control, so more "
            "training alone may explain its gain.")


def _versus_clause(results: dict, best: dict, table: dict, key: str) -> tuple[str, list[str]]:
    """(the strongest rule's description, each model's comparison with it) for one set of rules."""
    test = table.get(best["rule"]) or results["baselines"][best["rule"]]
    head = (f"{best['label']} ({pct(best['validation_accuracy'])} on the validation pairs, "
            f"{pct(test['accuracy'])} on the test pairs)")
    parts = []
    for name, m in results["models"].items():
        vs = m.get(key)
        if not vs:
            continue
        lo, hi = vs["ci"]
        how = "beats it" if lo > 0 else "falls below it" if hi < 0 else "does not differ clearly from it"
        parts.append(f"{name} {pct(m['accuracy'])} {how} ({signed(100 * vs['difference'])} points, "
                     f"{level(results.get('alpha'))} CI {signed(100 * lo)} to {signed(100 * hi)})")
    return head, parts


def baseline_clause(results: dict) -> str:
    """Whether each model beats the rule that was strongest on the validation pairs (paired interval): with
    the rating rules time-cut (what a recommender could have known at each pair's moment), and, where
    results hold it, with them reading the training users' whole period (the information the models
    trained on: the information-matched comparator)."""
    best = results.get("best_baseline")
    if not best:
        return "No baseline could be chosen: no rule was available on the validation pairs."
    head, parts = _versus_clause(results, best, results["baselines"], "vs_best_baseline")
    out = (f"Strongest baseline on the validation pairs, rating rules time-cut (only ratings made before "
           f"each pair): {head}." + (" " + "; ".join(parts) + "." if parts else ""))
    whole = results.get("best_baseline_whole_period")
    if whole:
        head, parts = _versus_clause(results, whole, results.get("baselines_whole_period") or {},
                                     "vs_best_baseline_whole_period")
        out += (f" Information-matched comparator, rating rules over the training users' whole period (as "
                f"the models' training pairs are): {head}." + (" " + "; ".join(parts) + "." if parts else ""))
    return out


def ranking_verdict(r: dict) -> str | None:
    """The second verdict line: DPO - SFT in Kendall tau-b per user, labelled by the same rule."""
    c = r.get("comparison")
    if not c:
        return None
    t = c["kendall_tau_b"]
    lo, hi = t["ci"]
    margin = f"margin of {t['margin']:g} tau"
    reason = label_reason({**t, "ci": t["ci"], "names": ["SFT", "DPO"]}, margin)
    return (f"Ranking adherence (secondary) {label_text(t, margin)}: DPO − SFT Kendall tau-b "
            f"{t['difference']:+.3f} per user "
            f"({level(r.get('alpha'))} CI {lo:+.3f} to {hi:+.3f}, {format_p(t['p_value'])}; {reason}); "
            "pairwise two-order accuracy is the primary measure")
