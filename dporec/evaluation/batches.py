"""Token batches for a causal LM: encode, pad (with positions that count real tokens only), and run
batches longest first in eval mode. Shared by scoring, generation and ranking."""
from __future__ import annotations

from contextlib import contextmanager

import torch


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    return pid if pid is not None else tokenizer.eos_token_id


def pad(seqs: list[list[int]], pad_token: int, left: bool = True):
    """(ids, attention mask, position ids), padded on the left (or right)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[r, cols] = torch.tensor(s, dtype=torch.long)
        mask[r, cols] = 1
    # Positions count real tokens only, so a left-padded sequence sees the same positions as alone.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


@contextmanager
def inference(model):
    """The model in eval mode without autograd for the block, then back in the mode it was in."""
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        if was_training:
            model.train()


def run_batches(model, items: list, batch_size: int, length, fn, desc: str | None) -> list:
    """fn(batch) for batches of `batch_size` items, longest first, in inference mode; results in the
    items' order."""
    from tqdm.auto import tqdm

    # Longest first: an out-of-memory error shows up in the first batch, not after an hour.
    order = sorted(range(len(items)), key=lambda k: -length(items[k]))
    results: list = [None] * len(items)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with inference(model):
        for b in tqdm(batches, desc=desc or "scoring", unit="batch", leave=False):
            for k, r in zip(b, fn([items[k] for k in b])):
                results[k] = r
    return results
