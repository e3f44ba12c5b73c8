"""The sentences of a verdict: the comparison of two models, the baselines' clause, the personalised set."""
from __future__ import annotations

from dporec.analysis.comparison import SUPPORT_MARGIN_POINTS
from dporec.analysis.metrics import BY_PAIRS, bootstrap_label
from dporec.report.numbers import about, ci_text, format_p, pct, points, signed


def test_description(c: dict) -> str:
    how = "all" if c["test_exact"] else "random"
    return (f"paired sign-flip permutation test of the mean per-pair difference, flipping whole {c['unit']} "
            f"({how} {c['n_sign_vectors']:,} sign vectors); CI: the differences it does not reject")


def verdict_sentence(c: dict) -> str:
    """One honest sentence: verdict, accuracies, difference with CI, the paired test's p, test size."""
    a_name, b_name = c.get("names") or ("SFT", "DPO")
    level = f"{100 * (1 - c.get('alpha', 0.05)):g}%"
    lo, hi = c["ci95"]
    head = (f"{c['verdict']}: {b_name} {100 * c['b_accuracy']:.1f}% vs {a_name} {100 * c['a_accuracy']:.1f}% "
            f"({points(c['difference'], SUPPORT_MARGIN_POINTS)} points, "
            f"{level} CI {signed(100 * lo)} to {signed(100 * hi)})")
    unit = "pairs, no user ids" if c.get("clustering") == BY_PAIRS else "users"
    few = ""
    if c.get("min_attainable_p", 0) >= c.get("alpha", 0.05):
        few = f"; {c['n_clusters']} {unit.split(',')[0]} cannot give p < {c.get('alpha', 0.05):g}"
    sig = (("significant" if c["significant"] else "not significant")
           + f" (paired permutation test over {unit}, {format_p(c['p_value'])}{few})")
    n, need = c["n_pairs"], c["min_pairs_for_power80"]
    pw = f"{100 * c.get('power', 0.8):g}%"
    if c.get("pairs_b_higher", 1) + c.get("pairs_a_higher", 1) == 0:
        tail = f"the models score identically on all {n:,} test pairs, so no test size would separate them"
    elif need is None:
        tail = "the per-pair differences average exactly 0, so no test size would detect a difference"
    elif need <= n:
        tail = (f"the {n:,} test pairs give at least {pw} power for a difference this size "
                f"(about {about(need)} needed)")
    else:
        tail = (f"about {about(need)} test pairs would be needed to detect a difference this size "
                f"with {pw} power (this test has {n:,})")
    return f"{head}; {sig}; {tail}."


def comparison_lines(c: dict) -> list[str]:
    """The comparison's facts, one '- ' line each (console and report.md)."""
    a, b = c.get("names") or ("SFT", "DPO")
    lo, hi = c["ci95"]
    runs = c.get("n_runs", 1)
    boot = f"percentile {bootstrap_label(c['clustering'])}, {c['n_boot']:,} resamples"
    lines = [
        f"- Test pairs: {c['n_pairs']:,} from {c['n_users']:,} users, each scored in both option orders"
        + (f"; each pair's score averaged over {runs} seeds first" if runs > 1 else "")
        + ("; no user ids, so every pair is its own cluster" if c.get("clustering") == BY_PAIRS else ""),
        f"- Two-order accuracy: {a} {pct(c['a_accuracy'])}, {b} {pct(c['b_accuracy'])}; "
        f"difference ({b} \u2212 {a}) {signed(100 * c['difference'])} points; {b} scores higher on "
        f"{c['pairs_b_higher']} pairs, {a} on {c['pairs_a_higher']}",
        f"- Paired test: {test_description(c)}: {format_p(c['p_value'])}",
        f"- 95% CI of the difference: {signed(100 * lo)} to {signed(100 * hi)} points (excludes 0 exactly "
        f"when p < {c['alpha']:g}); {boot}: {signed(100 * c['bootstrap_ci95'][0])} to "
        f"{signed(100 * c['bootstrap_ci95'][1])} points",
    ]
    mc = c.get("mcnemar_both_orders")
    if mc:
        lines.append(f"- Secondary, a different quantity: exact McNemar test on strict right-in-both-orders "
                     f"correctness: only {b} right in both on {mc['b_only']} pairs, only {a} on "
                     f"{mc['a_only']}; {format_p(mc['p'])}")
    need, need2 = c["min_pairs_for_power80"], c["min_pairs_for_2_points"]
    lines.append(f"- Test size for {100 * c['power']:g}% power, from the per-pair differences (sd "
                 f"{c['sd_pair_difference']:.3f}) and the design effect of clustering "
                 f"({c['design_effect']:.2f}): "
                 + ("n/a for this difference" if need is None else f"{need:,} pairs for a "
                                                                   "difference this size")
                 + ("" if need2 is None else f", {need2:,} pairs for 2 points"))
    return lines


def personalised_line(results: dict) -> str | None:
    ms = {n: m for n, m in results["models"].items() if m.get("n_personalised") is not None}
    if not ms:
        return None
    n = next(iter(ms.values()))["n_personalised"]
    if not n:
        return "Personalised subset: the mean-rating rule gets no test pair wrong, so there is none."
    parts = ", ".join(f"{name} {pct(m['accuracy_personalised'])} {ci_text(m['accuracy_personalised_ci'])}"
                      for name, m in ms.items())
    return f"Personalised subset (the {n:,} pairs the mean-rating rule gets wrong): {parts}"


def baseline_clause(results: dict) -> str:
    """Whether each model beats the strongest available baseline (paired, user-clustered 95% CI)."""
    best = next((m["vs_best_baseline"]["baseline"] for m in results["models"].values()
                 if m.get("vs_best_baseline")), None)
    if best is None:
        return "No baseline could be computed on these test pairs."
    b = results["baselines"][best]
    parts = []
    for name, m in results["models"].items():
        vs = m.get("vs_best_baseline")
        if not vs:
            continue
        lo, hi = vs["ci"]
        how = "beats it" if lo > 0 else "falls below it" if hi < 0 else "does not differ clearly from it"
        parts.append(f"{name} {pct(m['accuracy'])} {how} ({signed(100 * vs['difference'])} points, "
                     f"95% CI {signed(100 * lo)} to {signed(100 * hi)})")
    return (f"Strongest baseline: {b['label']}, {pct(b['accuracy'])}. " + "; ".join(parts) + "."
            if parts else f"Strongest baseline: {b['label']}, {pct(b['accuracy'])}.")
