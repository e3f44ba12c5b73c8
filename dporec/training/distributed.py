"""Processes: one, or several under `accelerate launch` (DDP through the Trainer).

The Trainer shards the data and averages gradients over the group itself; what is ours is that the
run folder is prepared, and run_info.json / metrics.json written, by the main process alone, and a
report of which training examples each process saw (ShardLog), so a launch that trains N copies
on the same data is visible.
"""
from __future__ import annotations

import hashlib
import math

import torch

from dporec import compat


def processes():
    """accelerate's process state: one process, or the group `accelerate launch` started."""
    from accelerate import PartialState
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes > 1 and state.device.type == "cpu":
        compat.allow_indexed_cpu_storages()
    return state


class ShardLog:
    """Wraps a data collator and fingerprints every example this process collates.

    Under `accelerate launch` each process must train on its own shard; metrics.json reports how
    many training examples each process saw and how many two processes both saw (0 within one
    epoch), so a misconfigured launch that trains N copies on the same data is visible.
    """

    def __init__(self, collator):
        self.collator, self.seen = collator, []

    def __call__(self, features):
        for f in features:
            key = [f[k] for k in sorted(f) if k.endswith("_ids")]
            self.seen.append(hashlib.sha1(repr(key).encode()).hexdigest()[:16])
        return self.collator(features)


def shard_report(trainer, log: ShardLog) -> dict:
    """Training examples each process saw, and how many of one epoch's shards two processes shared."""
    from accelerate.utils import gather_object
    state = processes()
    probe = ShardLog(lambda f: f)
    probe(list(trainer.train_dataset))
    train_keys = set(probe.seen)
    mine = [k for k in log.seen if k in train_keys]  # evaluation batches go through the collator too
    per_process = gather_object([mine]) if state.num_processes > 1 else [mine]
    # Within one epoch the shards must be disjoint; later epochs reshuffle, so only the first is compared.
    epoch = [set(s[:math.ceil(len(train_keys) / state.num_processes)]) for s in per_process]
    shared = set().union(*[a & b for i, a in enumerate(epoch) for b in epoch[i + 1:]])
    return {"world_size": state.num_processes, "examples_per_process": [len(s) for s in per_process],
            "first_epoch_examples_per_process": [len(s) for s in epoch],
            "first_epoch_examples_in_two_processes": len(shared)}
