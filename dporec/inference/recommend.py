"""Rank a user's candidate movies with a trained adapter (what recommend.py runs).

The same question and scoring as the evaluation's ranking: every pair of candidates is asked as the A/B
question in both option orders, the decision read by likelihood (dporec.evaluation.candidate_ranking), and the
position-free preferences become a ranking by Copeland wins, then summed margin.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dporec import UserError, arms
from dporec.analysis import rank_metrics
from dporec.data import candidates, records, task
from dporec.data.pairs import movie_example
from dporec.files import write_jsonl
from dporec.modeling.adapters import active, load_with_adapters
from dporec.runs.adapters import check_adapter, has_adapter, sft_adapter

log = logging.getLogger(__name__)


def default_adapter(cfg: dict) -> Path:
    """The run's DPO adapter, else its SFT adapter: what a user of a finished run most likely means."""
    candidates_ = (arms.DPO.folder(cfg["output_dir"]), sft_adapter(cfg))
    for path in candidates_:
        if has_adapter(path):
            return path
    raise UserError(f"no trained adapter in {candidates_[0]} or {candidates_[1]}; pass --adapter DIR "
                    "(--adapter none: the base model)")


def ranked(cset: dict, pref: np.ndarray) -> list[dict]:
    """The set's candidates, best first, each with its rank, Copeland wins, summed margin and Copeland score
    (rank_metrics.copeland: the score the evaluation's ranking metrics read)."""
    wins, margin = rank_metrics.standings(pref)
    scores = rank_metrics.copeland(pref)
    order = np.lexsort((-margin, -wins))  # wins first, then margin: the order of the Copeland scores
    out = []
    for rank, k in enumerate(order, 1):
        c = cset["candidates"][k]
        out.append({"rank": rank, "index": int(k), "title": c["title"], "genres": list(c["genres"]),
                    "wins": float(wins[k]), "margin": float(margin[k]), "copeland": float(scores[k]),
                    **({"rating": c["rating"]} if c.get("rating") is not None else {})})
    return out


def top_pair_example(cset: dict, rows: list[dict]) -> records.Example:
    """The A/B question of the two best candidates (the best as Option A), for --explain."""
    hist = [candidates.movie(m) for m in cset["history"]]
    a, b = (candidates.movie(cset["candidates"][r["index"]]) for r in rows[:2])
    return movie_example(hist, a, b, "A", f"{cset.get('id', 'request')}:top")


def table(cset: dict, rows: list[dict], name: str) -> str:
    n = len(rows)
    head = f"{cset.get('id') or cset['user_id']} (user {cset['user_id']}): {n} candidates ranked by {name}"
    has_rating = any("rating" in r for r in rows)
    lines = [head, f"  rank  wins/{n - 1}   margin  " + ("rating  " if has_rating else "") + "movie"]
    for r in rows:
        rating = f"{r['rating']:>6}  " if has_rating and "rating" in r else ("        " if has_rating else "")
        lines.append(f"  {r['rank']:>4}  {r['wins']:>7.1f}  {r['margin']:>+7.3f}  {rating}"
                     f"{task.movie_text(r['title'], r['genres'])}")
    if has_rating:
        ratings = [cset["candidates"][r["index"]]["rating"] for r in rows]
        tau = rank_metrics.kendall_tau_b([r["copeland"] for r in rows], ratings)
        lines.append(f"  against the ratings given: Kendall tau-b {tau:+.2f}")
    return "\n".join(lines)


def recommend(cfg: dict, input_file: str, adapter: str | None, explain: bool = False,
              out_file: str | None = None, rt=None) -> list[dict]:
    """Load the base and the adapter once, rank every request of `input_file`, report (and write) them;
    returns the rankings. rt: the process's Runtime (made here when not given)."""
    sets = candidates.load(input_file, rated=False)
    if out_file and Path(out_file).exists() and not cfg.get("overwrite"):
        raise UserError(f"{out_file} exists; pass --overwrite to replace it, or choose another --out")
    path = None if (adapter or "").lower() == "none" else Path(adapter) if adapter else default_adapter(cfg)
    name = "base" if path is None else path.name
    if path is not None:  # a missing, cut or stale adapter is named before the base loads
        check_adapter(path, cfg["model"]["name"])
    from dporec.evaluation import candidate_ranking, generation
    from dporec.modeling import backends, runtime
    rt = rt or runtime.setup(cfg, "eval")
    backend = rt.check("eval", "recommend.py")
    backends.check_model_name(cfg["model"]["name"])
    adapters = {name: path}
    model, tok = load_with_adapters(cfg, backend, adapters)
    fmt, batch = cfg["data"]["prompt_format"], cfg["eval"]["batch_size"]
    results = []
    with active(model, name, adapters):
        prefs = candidate_ranking.preference_matrices(model, tok, sets, fmt, batch, name)
        for cset, pref in zip(sets, prefs):
            rows = ranked(cset, pref)
            lines = [table(cset, rows, f"{name} ({path})" if path else "the base model")]
            result = {"id": cset.get("id"), "user_id": cset["user_id"],
                      "adapter": str(path) if path else None, "ranking": rows}
            if explain:
                gen = generation.generate_choices(model, tok, [top_pair_example(cset, rows)], fmt, 1,
                                                  cfg["eval"]["max_new_tokens"] * 4, model_name=name)
                result["explanation"] = gen[0]["generated"]
                lines.append(f"  why (the model's answer to rank 1 as Option A vs rank 2 as Option B):\n"
                             f"    {gen[0]['generated'].strip()}")
            log.info("\n".join(lines) + "\n")
            results.append(result)
    if out_file:
        write_jsonl(out_file, results)
        log.info(f"[recommend] {len(results)} rankings written to {out_file}")
    return results
