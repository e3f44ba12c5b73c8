"""Rank a user's candidate movies with a trained adapter (what recommend.py runs).

The same question and scoring as the evaluation's ranking: every pair of candidates is asked as the A/B
question in both option orders, the decision read by likelihood (dporec.evaluation.ranking), and the
position-free preferences become a ranking by Copeland wins, then summed margin.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dporec import UserError, runs
from dporec.analysis import ranking as R
from dporec.data import candidates, records, task
from dporec.data.pairs import pair_input


def default_adapter(cfg: dict) -> Path:
    """The run's DPO adapter, else its SFT adapter: what a user of a finished run most likely means."""
    for stage in (runs.DPO, runs.SFT):
        if runs.has_adapter(runs.stage_dir(cfg, stage)):
            return runs.stage_dir(cfg, stage)
    raise UserError(f"no trained adapter in {runs.stage_dir(cfg, runs.DPO)} or "
                    f"{runs.stage_dir(cfg, runs.SFT)}; pass --adapter DIR (--adapter none: the base model)")


def ranked(cset: dict, pref: np.ndarray) -> list[dict]:
    """The set's candidates, best first, each with its rank, Copeland wins and summed margin."""
    wins, margin = R.standings(pref)
    order = np.lexsort((-margin, -wins))  # wins first, then margin: the order R.copeland gives
    out = []
    for rank, k in enumerate(order, 1):
        c = cset["candidates"][k]
        out.append({"rank": rank, "index": int(k), "title": c["title"], "genres": list(c["genres"]),
                    "wins": float(wins[k]), "margin": float(margin[k]),
                    **({"rating": c["rating"]} if c.get("rating") is not None else {})})
    return out


def top_pair_example(cset: dict, rows: list[dict]) -> records.Example:
    """The A/B question of the two best candidates (the best as Option A), for --explain."""
    hist = [candidates.movie(m) for m in cset["history"]]
    a, b = (candidates.movie(cset["candidates"][r["index"]]) for r in rows[:2])
    return records.Example(instruction=task.INSTRUCTION, input=pair_input(hist, a, b),
                           output=task.answer_text("A"), label="A", option_a=f"{a.display}.",
                           option_b=f"{b.display}.", reasoning="", pair_id=f"{cset.get('id', 'request')}:top")


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
        keys = [(r["wins"], r["margin"]) for r in rows]
        scores = [sorted(set(keys)).index(k) for k in keys]  # R.copeland's scores: equal only when both are
        lines.append(f"  against the ratings given: Kendall tau-b {R.kendall_tau_b(scores, ratings):+.2f}")
    return "\n".join(lines)


def recommend(cfg: dict, input_file: str, adapter: str | None, explain: bool = False,
              out_file: str | None = None) -> int:
    """Load the base and the adapter once, rank every request of `input_file`, print (and write) them."""
    sets = candidates.load(input_file, rated=False)
    if out_file and Path(out_file).exists() and not cfg.get("overwrite"):
        raise UserError(f"{out_file} exists; pass --overwrite to replace it, or choose another --out")
    path = None if (adapter or "").lower() == "none" else Path(adapter) if adapter else default_adapter(cfg)
    name = "base" if path is None else path.name
    from dporec.evaluation import generation
    from dporec.evaluation import ranking as scoring_ranking
    from dporec.evaluation.stage import load_models
    from dporec.modeling import backends
    from dporec.modeling.adapters import active
    backend = backends.backend_for(cfg)
    backends.check_model_name(cfg["model"]["name"])
    adapters = {name: path}
    model, tok = load_models(cfg, backend, adapters)
    fmt, batch = cfg["data"]["prompt_format"], cfg["eval"]["batch_size"]
    results = []
    with active(model, name, adapters):
        prefs = scoring_ranking.preference_matrices(model, tok, sets, fmt, batch, name)
        for cset, pref in zip(sets, prefs):
            rows = ranked(cset, pref)
            print(table(cset, rows, f"{name} ({path})" if path else "the base model"))
            result = {"id": cset.get("id"), "user_id": cset["user_id"],
                      "adapter": str(path) if path else None, "ranking": rows}
            if explain:
                gen = generation.generate_choices(model, tok, [top_pair_example(cset, rows)], fmt, 1,
                                                  cfg["eval"]["max_new_tokens"] * 4, model_name=name)
                result["explanation"] = gen[0]["generated"]
                print(f"  why (the model's answer to rank 1 as Option A vs rank 2 as Option B):\n"
                      f"    {gen[0]['generated'].strip()}")
            print()
            results.append(result)
    if out_file:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        Path(out_file).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results),
                                  encoding="utf-8")
        print(f"[recommend] {len(results)} rankings written to {out_file}")
    return 0
