"""The sampling stage (sample_onpolicy.py): the SFT model's own answers, judged, paired for DPO.

The base loads once with the SFT adapter; every training prompt, in both option orders, gets
onpolicy.samples_per_prompt sampled answers. Each answer is judged from the data (dporec.data.judge):
its decision against the user's label, its genre claims against the history. A prompt with a right
answer that makes only true claims and a rejectable answer becomes one pair, written in the record
format train_dpo.py reads (`output` the chosen answer, `rejected` the rejected one). Samples are
appended to samples.jsonl as they are made, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from dporec import UserError, arms, files
from dporec.data import balance, judge, records
from dporec.files import write_json
from dporec.modeling.adapters import load_with_adapters
from dporec.runs import lifecycle, provenance
from dporec.runs.adapters import FinishedRun, check_adapter, require_sft_adapter

SAMPLES = "samples.jsonl"
PAIRS, SUMMARY = arms.PAIRS.output, arms.PAIRS.marker  # what on-policy DPO reads, and the finished marker
log = logging.getLogger(__name__)
CHUNK = 64  # prompts generated together and appended at once: what an interruption can lose


def settings(cfg: dict, adapter: Path) -> dict:
    """What the samples depend on: continuing with other settings would mix two kinds of samples."""
    oc = cfg["onpolicy"]
    return {"adapter": str(adapter), "model": cfg["model"]["name"], "train_file": cfg["data"]["train_file"],
            "prompt_format": cfg["data"]["prompt_format"], "seed": cfg["seed"],
            **{k: oc[k] for k in ("samples_per_prompt", "temperature", "top_p", "max_new_tokens")}}


def prompts_of(cfg: dict) -> list[records.Example]:
    """The training examples sampled for, each to be asked in both option orders."""
    dc, limit = cfg["data"], cfg["onpolicy"]["max_prompts"]
    exs = records.load_examples(dc["train_file"], dc["max_train_examples"])
    return exs[:limit] if limit else exs


def read_samples(path: Path) -> dict[tuple[str, str], list[str]]:
    """{(pair id, order): samples} already in samples.jsonl; a last line cut off by a kill is dropped."""
    done = {}
    if not path.is_file():
        return done
    for _, _, row in files.jsonl_lines(path):
        if isinstance(row, UserError):
            continue  # the line an interruption cut short: sampled again
        done[(row["id"], row["order"])] = row["samples"]
    return done


def make_pairs(examples, samples: dict, rule: str) -> tuple[list[dict], dict]:
    """(pair records, summary counts) from the samples of every (example, order)."""
    kinds = dict.fromkeys(judge.KINDS, 0)
    decisions = {"A": 0, "B": 0}
    counts = dict.fromkeys(("prompts", "samples", "prompts_all_right", "prompts_all_wrong",
                            "prompts_without_chosen", "prompts_without_rejected", "degenerate_pairs",
                            "samples_with_claims_checked", "samples_claims_unchecked",
                            "longer_is_chosen", "shorter_is_chosen"), 0)
    chosen_position = {"A": 0, "B": 0}
    pairs = []
    for ex in examples:
        for order, e in records.orders(ex):
            texts = [t.strip() for t in samples[(ex.pair_id, order)]]
            verdicts = [judge.judge(t, e) for t in texts]
            counts["prompts"] += 1
            counts["samples"] += len(texts)
            for v in verdicts:
                kinds[v.kind] += 1
                if v.decision:
                    decisions[v.decision] += 1
                if v.kind != judge.UNPARSEABLE:
                    counts["samples_with_claims_checked" if v.checked else "samples_claims_unchecked"] += 1
            counts["prompts_all_right"] += all(v.kind == judge.RIGHT for v in verdicts)
            counts["prompts_all_wrong"] += all(v.kind == judge.WRONG for v in verdicts)
            chosen = next((t for t, v in zip(texts, verdicts) if judge.is_chosen(v)), None)
            rejected = next((t for t, v in zip(texts, verdicts) if judge.is_rejected(v, rule)), None)
            counts["prompts_without_chosen"] += chosen is None
            counts["prompts_without_rejected"] += rejected is None
            if chosen is None or rejected is None:
                continue
            if chosen == rejected:  # cannot happen with these rules; counted so that it would show
                counts["degenerate_pairs"] += 1
                continue
            counts["longer_is_chosen"] += len(chosen) > len(rejected)
            counts["shorter_is_chosen"] += len(chosen) < len(rejected)
            chosen_position[e.label] += 1
            rec = records.to_record(e)
            rec.pop("reasons", None)  # the builder's texts: this pair's answers are the model's own
            rec.update({"id": f"{ex.pair_id}:{order}", "output": chosen, records.REJECTED: rejected,
                        "order": order})
            pairs.append(rec)
    n = len(pairs)
    summary = {**counts, "pairs": n, "parse_failures": kinds[judge.UNPARSEABLE], "samples_by_kind": kinds,
               "sampled_decisions": decisions, "chosen_position": chosen_position,
               "longer_is_chosen_rate": counts["longer_is_chosen"] / n if n else None,
               "rejected_rule": rule}
    return pairs, summary


def balance_positions(pairs: list[dict], summary: dict, seed: int) -> list[dict]:
    """The pairs with as many chosen answers in position A as in B (±0): the majority position's extra
    pairs are dropped at random. A model that errs more in one order would otherwise hand DPO a
    position signal, the precursor's always-A fault in a milder form. Counts go into `summary`."""
    by = {L: [p for p in pairs if p["label"] == L] for L in ("A", "B")}
    n = min(len(by["A"]), len(by["B"]))
    rng = random.Random(seed)
    keep = {id(p) for L in by for p in rng.sample(by[L], n)}
    kept = [p for p in pairs if id(p) in keep]
    longer = sum(len(p["output"]) > len(p[records.REJECTED]) for p in kept)
    summary.update(pairs_sampled=len(pairs), chosen_position_sampled=summary["chosen_position"],
                   dropped_for_balance=len(pairs) - len(kept), pairs=len(kept),
                   chosen_position={"A": n, "B": n},
                   longer_is_chosen_rate=longer / len(kept) if kept else None)
    return kept


def run_sampling(cfg: dict, spec: arms.StageSpec | None = None, rt=None) -> int:
    """Sample, judge and pair into <output_dir>/onpolicy_pairs/; see the module docstring."""
    from dporec.modeling import backends, runtime

    oc = cfg["onpolicy"]
    spec = spec or arms.spec_for(arms.PAIRS, cfg, FinishedRun(cfg, "on-policy sampling"))
    adapter = require_sft_adapter(spec.init_adapter, "on-policy sampling")
    check_adapter(adapter, cfg["model"]["name"])
    examples = prompts_of(cfg)
    folder = spec.stage.folder(cfg["output_dir"])
    resume, overwrite = spec.mode(cfg)
    recipe = provenance.recipe(cfg, spec)
    if not cfg["overwrite"] and only_pairing_changed(folder, recipe):
        # the samples still hold: only what is made from them changes, so pair them again (sampling for
        # any prompts onpolicy.max_prompts adds), rather than sample every prompt again
        log.info(f"[onpolicy] only the pairing changed "
                 f"({'; '.join(provenance.recipe_changes(folder, recipe))}): pairing the samples in "
                 f"{folder / SAMPLES} again")
        lifecycle.check_lock(folder)  # not while another process works here: the marker goes first
        (folder / SUMMARY).unlink()
        resume, overwrite = "auto", False
    if lifecycle.finished_already(folder, resume, SUMMARY, recipe):
        return 0
    # resume=true is how every run continues its samples: they are appended as they are made, and
    # continued only with the settings they were made with
    out = lifecycle.prepare_run_dir(folder, False, overwrite, SUMMARY)
    if overwrite:  # sample again from scratch: an unfinished run's samples go too
        (out / SAMPLES).unlink(missing_ok=True)
    lifecycle.start_recipe(out, recipe, continuing=(out / SAMPLES).is_file())
    wanted = settings(cfg, adapter)
    asked = [(ex, order, e) for ex in examples for order, e in records.orders(ex)]
    done = unfinished_chunks(asked, read_samples(out / SAMPLES))
    # each prompt keeps its place k in `asked`, each chunk of CHUNK places its seed: the samples are the
    # same whether or not a run before this one was interrupted
    todo = [(k, *item) for k, item in enumerate(asked) if (item[0].pair_id, item[1]) not in done]
    log.info(f"[onpolicy] {len(examples)} training examples x 2 orders x {oc['samples_per_prompt']} samples"
             + (f"; continuing: {len(done)} prompts sampled already" if done else ""))
    t0 = time.perf_counter()
    with lifecycle.stage_guard(out, resumable=False):
        if todo:
            rt = rt or runtime.setup(cfg, "sampling")
            backend = rt.check("sampling", spec.stage.script)
            backends.check_model_name(cfg["model"]["name"])
            model, tok = load_with_adapters(cfg, backend, {"sft": adapter})
            backends.prepare_generation(model, backend)
            try:
                _sample(model, tok, todo, cfg, out / SAMPLES)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(f"interrupted: the samples made so far are kept in {out / SAMPLES}; "
                                        "rerun the same command to continue from them") from None
            del model
            backends.release_memory()
        samples = read_samples(out / SAMPLES)
        pairs, summary = make_pairs(examples, samples, oc["rejected"])
        if oc["balance_positions"]:
            pairs = balance_positions(pairs, summary, cfg["seed"])
        if not pairs:
            raise UserError(f"on-policy sampling made no pair from {summary['prompts']} prompts: "
                            f"{summary['prompts_without_chosen']} had no right answer with true claims, "
                            f"{summary['prompts_without_rejected']} no rejectable answer, "
                            f"{summary['parse_failures']} of {summary['samples']} samples were unparseable"
                            + (f", {summary['dropped_for_balance']} pairs dropped to balance positions. "
                               if summary.get("dropped_for_balance") else ". ") +
                            "Mostly unparseable samples: lower onpolicy.temperature; samples that all agree: "
                            "raise it or onpolicy.samples_per_prompt; or train SFT longer. Then rerun with "
                            "--overwrite (the samples depend on these settings)")
        files.write_jsonl(out / PAIRS, pairs)
        written = records.load_examples(out / PAIRS)  # what train_dpo.py will read: every line valid
        summary.update(examples=len(examples), seconds=round(time.perf_counter() - t0, 1),
                       pair_balance=balance.balance(written), **wanted)
        provenance.write_run_info(out, cfg, stage="onpolicy", spec=spec.record(cfg),
                                  inputs=provenance.input_record({"sft": adapter}, cfg["output_dir"]))
        write_json(out / SUMMARY, summary)  # last: the stage's finished marker
    log.info(summary_line(summary, out))
    return 0


def only_pairing_changed(folder: Path, recipe: dict) -> bool:
    """A finished sampling whose samples still hold (the same SFT adapter, settings and data) and whose
    recipe differs only in what the pairing depends on (provenance.MAY_CHANGE_ON_RESUME)."""
    folder = Path(folder)
    if lifecycle.stale_inputs(folder, SUMMARY, recipe) in (None, []) or not (folder / SAMPLES).is_file():
        return False  # not finished, or nothing changed
    return not provenance.changed_inputs(folder) and provenance.recipe_changes(
        folder, recipe, may_change=provenance.MAY_CHANGE_ON_RESUME) == []


def unfinished_chunks(asked: list, done: dict) -> dict:
    """`done` without the prompts of a chunk an interruption left partly sampled: such a chunk is sampled
    again whole, so that every chunk is generated as one batch from its own seed, exactly as in an
    uninterrupted run (a batch's random numbers depend on what else is in it)."""
    keep = dict(done)
    for j in range(0, len(asked), CHUNK):
        keys = [(ex.pair_id, order) for ex, order, _ in asked[j:j + CHUNK]]
        have = [k for k in keys if k in done]
        if have and len(have) < len(keys):
            for k in have:
                keep.pop(k)
    return keep


def cut_to_last_line(path: Path) -> None:
    """Drop a last line a kill cut short (no newline), so that what is appended next starts a line."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)


def _sample(model, tok, todo, cfg: dict, path: Path) -> None:
    """Generate for every (k, example, order) in `todo`, chunk by chunk: chunk k // CHUNK of the asked
    prompts, seeded by its index, its samples appended to `path` in one write."""
    import torch
    from tqdm.auto import tqdm

    from dporec.evaluation.generation import sample_answers
    oc, fmt = cfg["onpolicy"], cfg["data"]["prompt_format"]
    chunks: dict[int, list] = {}
    for item in todo:
        chunks.setdefault(item[0] // CHUNK, []).append(item)
    cut_to_last_line(path)
    with path.open("a", encoding="utf-8") as f:
        for j, chunk in tqdm(sorted(chunks.items()), desc="[onpolicy] sampling", unit="chunk"):
            torch.manual_seed(cfg["seed"] * 1_000_003 + j)
            prompts = [records.format_prompt(e, fmt, tok) for _, _, _, e in chunk]
            texts = sample_answers(model, tok, prompts, oc["samples_per_prompt"], oc["temperature"],
                                   oc["top_p"], oc["max_new_tokens"], oc["batch_size"])
            f.write("".join(json.dumps({"id": ex.pair_id, "order": order, "samples": t}, ensure_ascii=False)
                            + "\n" for (_, ex, order, _), t in zip(chunk, texts)))
            f.flush()


def summary_line(s: dict, out: Path) -> str:
    rate = s["longer_is_chosen_rate"]
    return (f"[onpolicy] {s['pairs']} pairs from {s['prompts']} prompts ({s['samples']} samples, "
            f"{s['parse_failures']} unparseable); all right {s['prompts_all_right']}, all wrong "
            f"{s['prompts_all_wrong']}; chosen in position A {s['chosen_position']['A']} / B "
            f"{s['chosen_position']['B']}"
            + (f" ({s['dropped_for_balance']} dropped to balance them)" if s.get("dropped_for_balance")
               else "")
            + "; longer answer chosen in "
            f"{'n/a' if rate is None else f'{100 * rate:.0f}%'}; degenerate {s['degenerate_pairs']}; "
            f"written to {out / PAIRS}")
