"""The DPO trainer (dporec/training/dpo_trainer.py): TRL's numbers from less work.

One real batch of the tiny config, a 4-bit base with a started-from-SFT-style trainable adapter and
its frozen 'ref' copy (the train_dpo.py setup): TRL's DPOTrainer and ours must give the same loss,
logged metrics, token count and LoRA gradients, while our LM head sees only the batch's answer tail
and, with the shared prompt, the decoder runs one row per pair instead of two.
"""
from __future__ import annotations

import pytest
import torch

from dporec import compat
from dporec.data import records
from dporec.training import arguments, dpo_trainer, stages
from tests.helpers import TINY_CONFIG, tiny_overrides


def _trainer(cls, cfg, tmp_path, tok, model, rows):
    ds = stages.to_dataset(rows)
    tr = cls(model=model, ref_model=None, args=arguments.dpo_config(cfg, tmp_path, "hf"),
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


@pytest.mark.parametrize("shared,precompute", [(False, False), (True, False), (True, True)],
                         ids=["answer-only", "shared-prompt", "shared-prompt-precomputed-reference"])
def test_our_dpo_trainer_equals_trl(shared, precompute, tiny_data, tiny_model, tmp_path):
    from trl import DPOTrainer

    from dporec.config import load_config
    from dporec.modeling.backends import load_for_training

    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path)
                      + ["lora.dropout=0.0", f"dpo.precompute_ref_log_probs={str(precompute).lower()}"])
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
    # with precompute_ref_log_probs the reference runs when the trainer is built: watch its decoder then
    built_rows = []
    watch = dpo_trainer._decoder(twin).register_forward_hook(
        lambda m, a, k, o: built_rows.append(tuple(k["input_ids"].shape)), with_kwargs=True)
    ours = _trainer(dpo_trainer.answer_only_trainer_class(shared), cfg, tmp_path / "b", tok, twin, rows)
    watch.remove()
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

    if shared:  # the first batch's check (three forwards) runs here, not inside the counted step
        ours._views(batch)
    head_rows, decoder_rows = [], []
    hooks = [m.get_output_embeddings().register_forward_hook(lambda m, i, o: head_rows.append(o.shape[1]))
             for m in (model, twin)]
    hooks += [dpo_trainer._decoder(m).register_forward_hook(
        lambda m, a, k, o: decoder_rows.append(tuple(k["input_ids"].shape)), with_kwargs=True)
        for m in (model, twin)]
    loss_a, grads_a, m_a = _step(theirs, batch)
    loss_b, grads_b, m_b = _step(ours, batch)
    for h in hooks:
        h.remove()

    width, rows2 = batch["input_ids"].shape[1], batch["input_ids"].shape[0]
    per_trainer = 1 if precompute else 2  # decoder forwards in the step: the policy (+ the reference)
    assert head_rows == [width] * per_trainer + [width - start] * per_trainer
    theirs_rows, ours_rows = decoder_rows[:per_trainer], decoder_rows[per_trainer:]
    assert theirs_rows == [(rows2, width)] * per_trainer
    if shared:  # one row per pair, holding prompt + chosen + rejected: fewer positions than TRL's two rows
        assert all(r[0] == rows2 // 2 and r[0] * r[1] < rows2 * width for r in ours_rows)
        assert ours.shared_prompt == "on"  # the first batch's check found the layout equal to TRL's
    else:
        assert ours_rows == theirs_rows
    if precompute:  # the reference ran once, before training, through our decoder view too
        # its forward (after the first batch's three-forward check) ran one row per pair, not TRL's two
        assert built_rows and built_rows[-1][0] == len(rows), built_rows
        theirs_ref = theirs.data_collator([theirs.train_dataset[i] for i in range(len(rows))])
        ours_ref = ours.data_collator([ours.train_dataset[i] for i in range(len(rows))])
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            assert torch.allclose(theirs_ref[key], ours_ref[key], rtol=1e-5, atol=1e-4), key
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


def test_shared_prompt_layout_and_mask_by_hand():
    """Two pairs: prompts of 2 and 3 tokens, answers of different lengths, TRL's right-padded rows."""
    ids = torch.tensor([[1, 2, 10, 11, 0, 0],      # pair 0 chosen: prompt 1 2, answer 10 11
                        [5, 6, 7, 20, 0, 0],       # pair 1 chosen: prompt 5 6 7, answer 20
                        [1, 2, 12, 0, 0, 0],       # pair 0 rejected: answer 12
                        [5, 6, 7, 21, 22, 23]])    # pair 1 rejected: answer 21 22 23
    mask = (ids > 0).long()
    cm = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    lay = dpo_trainer.shared_prompt_layout(ids, mask, cm, pad_id=0)
    assert lay["ids"].tolist() == [[1, 2, 10, 11, 12, 0, 0], [5, 6, 7, 20, 21, 22, 23]]
    assert lay["positions"].tolist() == [[0, 1, 2, 3, 2, 0, 0], [0, 1, 2, 3, 3, 4, 5]]
    assert lay["seg"].tolist() == [[0, 0, 1, 1, 2, -1, -1], [0, 0, 0, 1, 2, 2, 2]]
    # TRL's rejected row of pair 1 reads its prompt from packed columns 0-2 and its answer from 4-6
    assert lay["gather"][3].tolist()[:6] == [0, 1, 2, 4, 5, 6]
    allowed = dpo_trainer.shared_prompt_mask(lay["seg"], None)[1, 0]
    assert allowed[4].tolist() == [True, True, True, False, True, False, False]  # rejected: prompt + itself
    assert allowed[3].tolist() == [True, True, True, True, False, False, False]  # chosen: causal
    additive = dpo_trainer.shared_prompt_mask(lay["seg"], torch.float32)[1, 0]
    assert (additive == 0).equal(allowed)
    different = ids.clone()
    different[2, 1] = 9  # the two rows of pair 0 no longer share their prompt: TRL's layout is kept
    assert dpo_trainer.shared_prompt_layout(different, mask, cm, pad_id=0) is None


def test_a_model_that_ignores_the_mask_is_caught(tiny_data, tiny_model, tmp_path, monkeypatch):
    """If the decoder does not honour the 4D mask (as Unsloth's patched Llama in training), the first
    batch's check turns the shared prompt off and training continues in TRL's layout."""
    from dporec.config import load_config
    from dporec.modeling.backends import load_for_training
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path) + ["lora.dropout=0.0"])
    model, tok = load_for_training(cfg, "hf")
    rows = records.to_dpo_rows(records.load_examples(tiny_data / "train.jsonl", 4), "alpaca", tok)
    real_mask = dpo_trainer.shared_prompt_mask
    causal_only = lambda seg, dtype: real_mask(seg.clamp(max=1), dtype)  # noqa: E731 - rejected sees chosen
    monkeypatch.setattr(dpo_trainer, "shared_prompt_mask", causal_only)
    # the check runs at the first batch the trainer sees: here the reference precompute, at construction
    ours = _trainer(dpo_trainer.answer_only_trainer_class(True), cfg, tmp_path / "c", tok, model, rows)
    batch = ours.data_collator([ours.train_dataset[i] for i in range(len(rows))])
    loss, _, _ = _step(ours, batch)
    assert ours.shared_prompt.startswith("off: the rejected answer sees the chosen one")
    assert torch.isfinite(torch.tensor(loss))


def test_the_private_trl_hooks_are_registered_and_called(tiny_data, tiny_model, tmp_path, monkeypatch):
    """The trainer overrides exactly the private TRL methods compat.TRL_DPO_HOOKS registers, and training
    calls each of them (an override of a renamed TRL method would never run: compat refuses that TRL)."""
    import trl

    from dporec import UserError
    from dporec.config import load_config
    from dporec.modeling.backends import load_for_training
    cls = dpo_trainer.answer_only_trainer_class(True)
    private = {n for n in vars(cls)
               if n.startswith("_") and not n.startswith("__") and hasattr(trl.DPOTrainer, n)}
    assert private == set(compat.TRL_DPO_HOOKS)
    calls = dict.fromkeys(compat.TRL_DPO_HOOKS, 0)
    for hook in compat.TRL_DPO_HOOKS:
        def counted(self, *args, _original=getattr(cls, hook), _name=hook, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(cls, hook, counted)
    cfg = load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path)
                      + ["dpo.max_steps=2", "dpo.precompute_ref_log_probs=true", "train.eval_steps=100"])
    model, tok = load_for_training(cfg, "hf")
    rows = records.to_dpo_rows(records.load_examples(tiny_data / "train.jsonl", 8), "alpaca", tok)
    trainer = _trainer(cls, cfg, tmp_path / "run", tok, model, rows)
    assert calls["_compute_ref_log_probs"] >= 1  # the precompute, when the trainer was built
    trainer.train()
    assert calls["_compute_loss"] >= 2  # every training step
    with pytest.raises(UserError, match="_compute_ref_log_probs"):
        compat.check_trl_dpo_hooks(type("RenamedInANewerTRL", (), {"_compute_loss": lambda self: None}))
