"""Throughput of likelihood scoring vs generate-and-parse, for the same model and test pairs.

Commands:
    # CPU smoke (tiny random Llama; build it with `make models data-tiny`)
    python benchmarks/bench_scoring.py --config configs/tiny.yaml --pairs 16
    # SmolLM2-135M-Instruct, 4-bit, on CPU (after `make models/smollm2-135m-instruct/config.json`)
    python benchmarks/bench_scoring.py --config configs/cpu_demo.yaml --pairs 16
    # with an adapter, a larger batch, without the slow batch-1 precursor-style run
    python benchmarks/bench_scoring.py --config configs/llama3_8b.yaml --adapter runs/llama3_8b/dpo \
        eval.batch_size=32 --pairs 200 --no-precursor

Methods, each over the same N test pairs in BOTH option orders (a "pair" is always one test pair
fully decided in both orders, so pairs/s are comparable):
  likelihood   dporec.evaluation.scoring.score_answers: 4 answers per pair (2 orders x 2 full answers), no
               generation; the two answers of one order share the prompt and "The better
               recommendation is Option": one cached forward over that shared part, then one over
               both continuations, batched (eval.batch_size example-orders per batch)
  full-seq     the same scores with share_prefix=False: every answer a full sequence of its own,
               eval.batch_size answers per batch (the reference path; the largest score difference
               is printed: float rounding, 2e-6 on the tiny model, 7e-5 on SmolLM2)
  generate     dporec.generation.generate_choices: greedy, batched with left padding,
               eval.max_new_tokens new tokens, strict parse
  precursor    one prompt at a time (batch 1), greedy generation: the precursor's loop shape
               (it also sampled at temperature 0.7 and parsed leniently; timing is what is compared)
A warm-up batch runs first so one-time costs (kernel selection, lazy init) are not counted. On a
shared machine, --repeat N alternates the two likelihood paths N times and keeps each one's best time.
Optionally writes the numbers as JSON (--json FILE).
"""
from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

from dporec.config import parse_args, run_main
from dporec.data import records
from dporec.evaluation import generation, logprobs, scoring
from dporec.modeling import adapters, backends


def _extra(p):
    p.add_argument("--pairs", type=int, default=16, help="number of test pairs (default 16)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder to benchmark "
                                                   "instead of the base model")
    p.add_argument("--no-precursor", action="store_true", help="skip the slow batch-1 generation run")
    p.add_argument("--no-full-seq", action="store_true", help="skip the full-sequence likelihood reference")
    p.add_argument("--no-generate", action="store_true", help="skip batched generation")
    p.add_argument("--repeat", type=int, default=1, help="likelihood runs per path, "
                                                         "best time kept (default 1)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args, cfg = parse_args(__doc__, argv, extra=_extra)
    from dporec import log
    from dporec.modeling import runtime
    log.setup()
    backend = runtime.setup(cfg, "eval").backend("eval")
    examples = records.load_examples(cfg["data"]["test_file"], limit=args.pairs)
    n = len(examples)
    ec, fmt = cfg["eval"], cfg["data"]["prompt_format"]
    bs, new = ec["batch_size"], ec["max_new_tokens"]

    model, tok = backends.load_base(cfg, backend)
    if args.adapter:
        model = adapters.attach_adapters(model, {"bench": args.adapter}, cfg["model"]["name"])
    model.eval()
    import torch
    print(f"[bench] {cfg['model']['name']} ({'4-bit' if cfg['model']['load_in_4bit'] else 'unquantized'}, "
          f"{backend}, {backends.device()}, {torch.get_num_threads()} threads); {n} pairs x 2 orders; "
          f"batch {bs}; max_new_tokens {new}")

    warm = examples[:max(1, min(n, bs // 4))]
    scoring.score_answers(model, tok, warm, fmt, bs, desc="warm-up")
    generation.generate_choices(model, tok, warm[:1], fmt, bs, min(new, 4), desc="warm-up")

    results, rows = {}, {}
    paths = {"likelihood": True} if args.no_full_seq else {"likelihood": True, "full-seq": False}
    for _ in range(max(1, args.repeat)):
        for name, share in paths.items():
            info = logprobs.ScoringInfo()
            rows[name], s = _timed(partial(scoring.score_answers, model, tok, examples, fmt, bs, desc=name,
                                           info=info, share_prefix=share))
            if name not in results or s < results[name]["seconds"]:
                results[name] = {"seconds": s, "sequences": info.n_sequences,
                                 "forward_passes": info.forward_passes, "forward_tokens": info.forward_tokens}
    if "full-seq" in rows:
        results["full-seq"]["max_abs_score_diff"] = max(
            abs(a[k] - b[k]) for a, b in zip(rows["likelihood"], rows["full-seq"])
            for k in ("logp_a", "logp_b", "logp_a_full", "logp_b_full"))
    if not args.no_generate:
        gen, s = _timed(lambda: generation.generate_choices(model, tok, examples, fmt, bs, new,
                                                            desc="generate"))
        results["generate"] = {"seconds": s, "valid": sum(g["parsed"] is not None for g in gen),
                               "outputs": len(gen)}
    if not args.no_precursor:
        pre, s = _timed(lambda: generation.generate_choices(model, tok, examples, fmt, 1, new,
                                                            desc="batch 1"))
        results["precursor"] = {"seconds": s, "valid": sum(g["parsed"] is not None for g in pre),
                                "outputs": len(pre)}

    base_rate = n / results["likelihood"]["seconds"]
    print(f"\n{'method':<12}{'seconds':>10}{'pairs/s':>10}{'vs likelihood':>15}  notes")
    for name, r in results.items():
        r["pairs_per_second"] = n / r["seconds"]
        r["speed_vs_likelihood"] = r["pairs_per_second"] / base_rate
        note = (f"{r['sequences']} answers, {r['forward_passes']} forwards, {r['forward_tokens']} tokens"
                if "sequences" in r else f"{r['valid']}/{r['outputs']} outputs name exactly one option")
        if "max_abs_score_diff" in r:
            note += f"; scores differ by <= {r['max_abs_score_diff']:.1e}"
        print(f"{name:<12}{r['seconds']:>10.2f}{r['pairs_per_second']:>10.2f}"
              f"{r['speed_vs_likelihood']:>14.2f}x  {note}")
    others = {"full-seq": "full-sequence scoring", "generate": "batched generate-and-parse",
              "precursor": "the batch-1 precursor loop"}
    ratios = [f"{base_rate / results[k]['pairs_per_second']:.1f}x {what}" for k, what in others.items()
              if k in results]
    if ratios:
        print("\nlikelihood scoring has " + ", ".join(ratios[:-1]) + (" and " if len(ratios) > 1 else "")
              + ratios[-1] + " throughput")
    if args.json:
        meta = {"model": cfg["model"]["name"], "load_in_4bit": cfg["model"]["load_in_4bit"],
                "backend": backend, "device": backends.device(), "threads": torch.get_num_threads(),
                "pairs": n, "batch_size": bs, "max_new_tokens": new, "adapter": args.adapter}
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
