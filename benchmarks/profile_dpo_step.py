"""Where a DPO step's time and memory go on CPU: one real step of train_dpo's trainer, profiled.

    # after `make demo` has written runs/demo/sft (or any SFT adapter of the config):
    python benchmarks/profile_dpo_step.py --config configs/cpu_demo.yaml
    python benchmarks/profile_dpo_step.py --config configs/cpu_demo.yaml --trainer trl
    python benchmarks/profile_dpo_step.py --config configs/cpu_demo.yaml train.gradient_checkpointing=true

Builds the DPOTrainer exactly as train_dpo.run does (same config, data, adapter, reference), takes
`--steps` batches from its dataloader and runs training_step on each under torch.profiler
(--trainer trl: TRL's DPOTrainer as it ships, the baseline for dporec/training/dpo_trainer.py). Prints the
operators that take the time (self CPU time) and allocate the memory, the logits tensor sizes, the
process's peak RSS (sampled every 5 ms) and the step wall time. Nothing is saved.
"""
from __future__ import annotations

import argparse
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
    from dporec import compat, runs
    from dporec.config import parse_args
    from dporec.data import records
    from dporec.modeling import backends
    from dporec.training import dpo_trainer
    from dporec.training import trainer as training

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rows", type=int, default=25, help="operators to print")
    p.add_argument("--trainer", choices=("ours", "trl"), default="ours",
                   help="ours: train_dpo's trainer (answer-only logits, "
                        "dporec/training/dpo_trainer.py); trl: TRL's own")
    own, rest = p.parse_known_args(argv)
    cfg = parse_args(__doc__, rest)[1]
    torch.manual_seed(cfg["seed"])
    backend = backends.backend_for(cfg)
    train_exs, val_exs = training.load_stage_data(cfg)
    adapter = runs.sft_adapter_path(cfg) if cfg["dpo"]["init"] == "sft" else None
    model, tok = backends.load_for_training(cfg, backend, adapter=adapter)
    print(f"RSS with the model loaded: {psutil.Process().memory_info().rss / 2**30:.2f} GiB")
    fmt = cfg["data"]["prompt_format"]
    ds = training.to_dataset(records.to_dpo_rows(train_exs, fmt, tok))
    import tempfile

    from trl import DPOTrainer
    if own.trainer == "ours":
        DPOTrainer = dpo_trainer.trainer_class(backend)  # noqa: N806
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DPOTrainer(model=model, ref_model=None, args=training.dpo_config(cfg, tmp, backend),
                             train_dataset=ds, processing_class=tok,
                             eval_dataset=training.to_dataset(records.to_dpo_rows(val_exs, fmt, tok)))
        compat.adapters_to_fp32(trainer, backend)
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
        trainer.training_step(trainer.model, first)  # warm-up: first-call allocations, thread pools
        rss0 = psutil.Process().memory_info().rss
        from torch.profiler import ProfilerActivity, profile
        walls = []
        with PeakRSS() as peak, profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            for _ in range(own.steps):
                batch = next(batches, first)
                t = time.perf_counter()
                trainer.training_step(trainer.model, batch)
                walls.append(time.perf_counter() - t)
        print(f"step wall time: {', '.join(f'{w:.1f} s' for w in walls)} (profiler overhead included)")
        print(f"RSS before the profiled steps {rss0 / 2**30:.2f} GiB, peak during them "
              f"{peak.peak / 2**30:.2f} GiB")
        table = prof.key_averages()
        print(table.table(sort_by="self_cpu_time_total", row_limit=own.rows, max_name_column_width=40))
        print(table.table(sort_by="self_cpu_memory_usage", row_limit=12, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
