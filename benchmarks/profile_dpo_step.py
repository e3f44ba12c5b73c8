"""Where a DPO step's time and memory go on CPU: real steps of train_dpo's trainer against TRL's.

    # after `make demo` has written runs/demo/sft (or any SFT adapter of the config):
    python benchmarks/profile_dpo_step.py --config configs/cpu_demo.yaml --compare
    python benchmarks/profile_dpo_step.py --config configs/cpu_demo.yaml              # ours, profiled
    python benchmarks/profile_dpo_step.py --config configs/cpu_demo.yaml --trainer trl

Builds the DPOTrainer as train_dpo.run does (same config, data, adapter, reference), takes `--steps`
batches from its dataloader and runs training_step on each. --trainer ours is the project's trainer with
what train() adds on CPU (freed memory returned to the OS after building and after every step,
dporec.modeling.hardware.return_freed_memory); --trainer trl is TRL's DPOTrainer as it ships, on the same
config. With torch.profiler it prints the operators that take the time and allocate the memory.

--compare runs both, each in a process of its own (resident memory is per process) without the
profiler, and prints one table: resident memory before the first step, its peak during the steps
(sampled every 5 ms), and the wall time per optimizer step. Nothing is saved.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import psutil
import torch


class PeakRSS:
    """Peak resident memory of this process, sampled in a thread (covers allocations torch frees again)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        p = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, p.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def main(argv=None) -> int:
    from dporec import compat
    from dporec.config import parse_args
    from dporec.data import records
    from dporec.modeling import backends, runtime
    from dporec.runs.adapters import sft_adapter
    from dporec.training import arguments, dpo_trainer, stages

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rows", type=int, default=25, help="operators to print")
    p.add_argument("--trainer", choices=("ours", "trl"), default="ours",
                   help="ours: train_dpo's trainer (dporec/training/dpo_trainer.py); trl: TRL's own")
    p.add_argument("--compare", action="store_true", help="both trainers, one process each, one table")
    p.add_argument("--json", help=argparse.SUPPRESS)  # a --compare child: write the figures here
    own, rest = p.parse_known_args(argv)
    if own.compare:
        return compare(own, rest)
    cfg = parse_args(__doc__, rest)[1]
    torch.manual_seed(cfg["seed"])
    backend = runtime.setup(cfg, "dpo").backend("dpo")
    train_exs, val_exs = stages.load_stage_data(cfg, cfg)
    adapter = sft_adapter(cfg) if cfg["dpo"]["init"] == "sft" else None
    model, tok = backends.load_for_training(cfg, backend, adapter=adapter)
    print(f"RSS with the model loaded: {psutil.Process().memory_info().rss / 2**30:.2f} GiB")
    fmt = cfg["data"]["prompt_format"]
    ds = stages.to_dataset(records.to_dpo_rows(train_exs, fmt, tok))
    import tempfile

    from trl import DPOTrainer
    if own.trainer == "ours":
        DPOTrainer = dpo_trainer.trainer_class(backend, cfg["dpo"]["prefix_sharing"])  # noqa: N806
    from dporec.modeling.hardware import return_freed_memory
    ours = own.trainer == "ours"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DPOTrainer(model=model, ref_model=None, args=arguments.dpo_config(cfg, tmp, backend),
                             train_dataset=ds, processing_class=tok,
                             eval_dataset=stages.to_dataset(records.to_dpo_rows(val_exs, fmt, tok)))
        compat.adapters_to_fp32(trainer, backend)
        if ours:
            return_freed_memory()
        trainer.create_optimizer_and_scheduler(num_training_steps=own.steps + 1)
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is not run here
        batches = iter(trainer.get_train_dataloader())
        first = next(batches)
        ids = first["input_ids"]
        vocab = model.get_output_embeddings().weight.shape[0]
        n_comp = int(first["completion_mask"].sum())
        print(f"batch: {ids.shape[0]} sequences (chosen + rejected) x {ids.shape[1]} positions, "
              f"{int(first['attention_mask'].sum())} real tokens of "
              f"which {n_comp} completion tokens; vocab {vocab}")
        full = ids.numel() * vocab * 4 / 2**20
        print(f"fp32 logits for every position: {full:.0f} MiB per forward (policy and reference each); "
              f"for completion positions only: {n_comp * vocab * 4 / 2**20:.0f} MiB")
        trainer.model.train()
        rss_first = psutil.Process().memory_info().rss  # everything built, before any step
        trainer.training_step(trainer.model, first)  # warm-up: first-call allocations, thread pools
        if ours:
            return_freed_memory()
        rss0 = psutil.Process().memory_info().rss
        from contextlib import nullcontext

        from torch.profiler import ProfilerActivity, profile
        profiled = profile(activities=[ProfilerActivity.CPU], profile_memory=True) if not own.json else None
        accum = cfg["train"]["grad_accum"]
        walls = []
        with PeakRSS() as peak, profiled or nullcontext() as prof:
            for _ in range(own.steps):
                t = time.perf_counter()
                for _ in range(accum):  # one optimizer step's micro-batches
                    trainer.training_step(trainer.model, next(batches, first))
                    if ours:
                        return_freed_memory()
                walls.append(time.perf_counter() - t)
        if own.json:
            figures = {"rss_before_first_step": rss_first, "rss_before_steps": rss0, "peak": peak.peak,
                       "step_seconds": walls}
            open(own.json, "w").write(json.dumps(figures))
            return 0
        print(f"optimizer step wall time: {', '.join(f'{w:.1f} s' for w in walls)} (profiler overhead "
              f"included)")
        print(f"RSS before the first step {rss_first / 2**30:.2f} GiB, before the profiled steps "
              f"{rss0 / 2**30:.2f} GiB, peak during them {peak.peak / 2**30:.2f} GiB")
        table = prof.key_averages()
        print(table.table(sort_by="self_cpu_time_total", row_limit=own.rows, max_name_column_width=40))
        print(table.table(sort_by="self_cpu_memory_usage", row_limit=12, max_name_column_width=40))
    return 0


def compare(own, rest) -> int:
    """Both trainers, one child process each (resident memory is per process), one table."""
    import tempfile
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for which in ("ours", "trl"):
            out = f"{tmp}/{which}.json"
            cmd = [sys.executable, __file__, "--trainer", which, "--steps", str(own.steps), "--json", out,
                   *rest]
            print(f"[profile] {which}: {' '.join(cmd[1:])}", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stdout[-2000:], done.stderr[-3000:])
                return done.returncode
            rows[which] = json.loads(open(out).read())
    gib = 2 ** 30
    print(f"\n{'trainer':<8}{'RSS before 1st step':>21}{'peak RSS in steps':>19}{'s / optimizer step':>20}")
    for which, r in rows.items():
        steps = r["step_seconds"][1:] or r["step_seconds"]  # the first timed step still warms up caches
        print(f"{which:<8}{r['rss_before_first_step'] / gib:>17.2f} GiB{r['peak'] / gib:>15.2f} GiB"
              f"{sum(steps) / len(steps):>20.1f}")
    print("ours: train_dpo's trainer as train() runs it; trl: TRL's DPOTrainer as it ships, same config")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
