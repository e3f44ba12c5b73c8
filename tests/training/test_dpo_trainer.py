"""Answer-only logits in DPO (dporec/completion_logits.py): TRL's numbers, fewer logits.

One real batch of the tiny config, a 4-bit base with a started-from-SFT-style trainable adapter and
its frozen 'ref' copy (the train_dpo.py setup): TRL's DPOTrainer and ours must give the same loss,
logged metrics, token count and LoRA gradients, while our LM head sees only the batch's answer tail.
"""
from __future__ import annotations

import pytest
import torch

from dporec import compat
from dporec.data import records
from dporec.training import dpo_trainer
from dporec.training import trainer as glue
from tests.helpers import TINY_CONFIG, tiny_overrides


def _trainer(cls, cfg, tmp_path, tok, model, rows):
    ds = glue.to_dataset(rows)
    tr = cls(model=model, ref_model=None, args=glue.dpo_config(cfg, tmp_path, "hf"),
             train_dataset=ds, eval_dataset=ds, processing_class=tok)
    compat.adapters_to_fp32(tr, "hf")
    return tr


def _step(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.item(), grads, metrics


def test_answer_only_logits_equal_trl(tiny_data, tiny_model, tmp_path):
    from trl import DPOTrainer

    from dporec.config import load_config
    from dporec.modeling.backends import load_for_training

    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path) + ["lora.dropout=0.0"])
    torch.manual_seed(0)  # the LoRA init and the perturbations below: the same whatever ran before
    model, tok = load_for_training(cfg, "hf")
    twin, _ = load_for_training(cfg, "hf")  # each trainer adds its own 'ref' copy of the adapter
    with torch.no_grad():  # a non-zero adapter, so policy and gradients are not trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
        twin_params = dict(twin.named_parameters())
        for n, p in model.named_parameters():
            if "lora_" in n:
                twin_params[n].copy_(p)
    exs = records.load_examples(tiny_data / "train.jsonl", 4)
    rows = records.to_dpo_rows(exs, "alpaca", tok)
    theirs = _trainer(DPOTrainer, cfg, tmp_path / "a", tok, model, rows)
    ours = _trainer(dpo_trainer.answer_only_trainer_class(), cfg, tmp_path / "b", tok, twin, rows)
    # Move the policy away from its frozen 'ref' copy (the same way in both models): otherwise the rewards
    # are rounding noise around 0 and rewards/accuracies would compare noise, not the two trainers.
    with torch.no_grad():
        twin_params = dict(twin.named_parameters())
        gen = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n and ".default." in n:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
                twin_params[n].copy_(p)
    batch = theirs.data_collator([theirs.train_dataset[i] for i in range(len(rows))])
    start = dpo_trainer.first_needed_column(batch["completion_mask"])
    assert batch["input_ids"].shape[1] // 2 < start  # the prompt is most of the batch

    head_rows = []
    hooks = [m.get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(o.shape[1]))
             for m in (model, twin)]
    loss_a, grads_a, m_a = _step(theirs, batch)
    loss_b, grads_b, m_b = _step(ours, batch)
    for h in hooks:
        h.remove()

    width = batch["input_ids"].shape[1]
    assert head_rows == [width, width, width - start, width - start]  # policy + reference, each trainer
    assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-6)
    assert set(m_a) == set(m_b)
    for k in m_a:
        assert m_b[k] == pytest.approx(m_a[k], rel=1e-4, abs=1e-5), k
    assert m_b["num_tokens"] == m_a["num_tokens"] == int(batch["attention_mask"].sum())
    assert abs(m_a["rewards/margins"]) > 1e-3  # the rewards compared above are not rounding noise
    assert grads_a and set(grads_a) == set(grads_b)
    assert all("lora_" in n and ".ref." not in n for n in grads_a)  # the reference copy stays frozen
    for n in grads_a:
        # float rounding differs between the two matmul shapes: compare per tensor, relative to its norm
        assert (grads_a[n] - grads_b[n]).norm() <= 1e-4 * grads_a[n].norm() + 1e-9, n
    assert any(g.abs().sum() > 0 for g in grads_a.values())
