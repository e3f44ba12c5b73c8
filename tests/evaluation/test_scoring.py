"""Likelihood scoring (dporec/evaluation/scoring.py, logprobs.py, sequences.py) on the tiny random
Llama: agreement with TRL's own DPO
log-probs, padding invariance, option swapping, exposure of an always-"A" model, and the strict
parser of generated answers."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dporec.analysis import metrics
from dporec.config import load_config
from dporec.data import balance, records, task
from dporec.evaluation import generation, logprobs, scoring, sequences
from dporec.modeling import adapters, backends
from tests.helpers import TINY_CONFIG, tiny_overrides


def _cfg(tiny_data, tiny_model, tmp_path, *extra):
    return load_config(TINY_CONFIG, tiny_overrides(tiny_data, tiny_model, tmp_path / "run") + list(extra))


@pytest.fixture(scope="module")
def heldout_examples(tiny_data):
    return records.load_examples(tiny_data / "test.jsonl")


@pytest.fixture(scope="module")
def base_4bit(tiny_data, tiny_model, tmp_path_factory):
    cfg = _cfg(tiny_data, tiny_model, tmp_path_factory.mktemp("b4"))
    return backends.load_base(cfg, "hf")


def _by_key(rows):
    return {(r["pair_id"], r["order"]): r for r in rows}


def test_full_answer_scores_match_trl_dpo_logps(tiny_data, tiny_model, tmp_path, heldout_examples):
    """Our full-answer log-probs are the chosen/rejected sums TRL's DPOTrainer computes."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    cfg = _cfg(tiny_data, tiny_model, tmp_path, "model.load_in_4bit=false")
    model, tok = backends.load_base(cfg, "hf")
    exs = heldout_examples[:3]
    rows = records.to_dpo_rows(exs)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False, report_to="none",
                     per_device_train_batch_size=len(exs))
    # plain model + peft_config: TRL's reference is the base model (adapter disabled)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=backends.lora_config(cfg))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(exs))])
    with torch.no_grad():
        trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.model, batch)

    with trainer.model.disable_adapter():
        ours = _by_key(scoring.score_answers(trainer.model, tok, exs, "alpaca", 4))
    for i, ex in enumerate(exs):
        row = ours[(ex.pair_id, "original")]
        chosen = row[f"logp_{ex.label.lower()}_full"]
        rejected = row[f"logp_{ex.other.lower()}_full"]
        assert chosen == pytest.approx(trl_chosen[i].item(), abs=1e-4)
        assert rejected == pytest.approx(trl_rejected[i].item(), abs=1e-4)


def test_batching_and_padding_do_not_change_scores(base_4bit, heldout_examples):
    model, tok = base_4bit
    exs = heldout_examples[:4]  # 16 sequences of different lengths: two padded batches of 8
    one = scoring.score_answers(model, tok, exs, "alpaca", 1)
    eight = scoring.score_answers(model, tok, exs, "alpaca", 8)
    assert len(one) == len(eight) == 2 * len(exs)
    for a, b in zip(one, eight):
        assert (a["pair_id"], a["order"]) == (b["pair_id"], b["order"])
        for k in ("logp_a", "logp_b", "logp_a_full", "logp_b_full"):
            assert a[k] == pytest.approx(b[k], abs=1e-4), k


@pytest.fixture(scope="module")
def lora_4bit(tiny_data, tiny_model, tmp_path_factory):
    """4-bit base + a LoRA adapter with random (non-zero) weights: the PEFT path with an adapter that acts."""
    cfg = _cfg(tiny_data, tiny_model, tmp_path_factory.mktemp("lora"))
    torch.manual_seed(0)
    model, tok = backends.load_for_training(cfg, "hf")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    return model, tok


def test_shared_prefix_equals_full_sequences(lora_4bit, heldout_examples):
    """Prefix sharing (one cached forward over prompt + common answer tokens, then the two
    continuations) gives the per-answer scores of full sequences, under 4-bit + LoRA."""
    model, tok = lora_4bit
    exs = heldout_examples[:3]
    full = scoring.score_answers(model, tok, exs, "alpaca", 8, share_prefix=False)
    for bs in (1, 8):  # one example-order per batch; six (12 answers) of different lengths padded together
        info = logprobs.ScoringInfo()
        shared = scoring.score_answers(model, tok, exs, "alpaca", bs, info=info)
        assert info.n_sequences == 4 * len(exs) and info.forward_passes == 2 * -(-2 * len(exs) // bs)
        for a, b in zip(shared, full):
            assert a["choice"] == b["choice"] and a["choice_full"] == b["choice_full"]
            for k in ("logp_a", "logp_b", "logp_a_full", "logp_b_full"):
                assert a[k] == pytest.approx(b[k], abs=1e-4), k
    assert max(abs(a["logp_a"] - a["logp_b"]) for a in full) > 1e-3  # the adapter makes A and B differ

    # Splits whatever the tokenizer does: the shared part ends at the longest common token prefix,
    # anywhere in the answer; a continuation may be a single token; one answer may be a prefix of the other.
    p1, p2 = (tok(records.format_prompt(e))["input_ids"] for e in exs[:2])
    eos = tok.eos_token_id
    cases = [(p1, [7, 8, 9, eos], [7, 11, eos]),   # split mid-answer, different lengths
             (p2, [7, eos], [8, 9, eos]),          # split right after the prompt
             (p2, [7, 8, eos], [7, 8, 9, eos]),    # A's continuation is its EOS alone
             (p1, [7, 8, eos], [7, 8])]            # B is a prefix of A: split one token earlier
    pairs = [(sequences.Seq(p, a, 1, True), sequences.Seq(p, b, 1, True)) for p, a, b in cases]
    assert len({len(p) for p in (p1, p2)}) == 2
    with torch.inference_mode():
        got = logprobs.pair_logps(model, tok, pairs)
        want = logprobs.token_logps(model, tok, [s for pair in pairs for s in pair])
    for (ga, gb), wa, wb in zip(got, want[0::2], want[1::2]):
        assert ga.shape == wa.shape and gb.shape == wb.shape
        assert torch.allclose(ga, wa, atol=1e-4) and torch.allclose(gb, wb, atol=1e-4)


def test_decision_only_scoring_equals_the_full_path(lora_4bit, heldout_examples):
    """The default (eval.full_answer=false): one context per pair-order, its last logits read the
    decision's words and both letters; the same decision scores as scoring both full answers, in
    batches of contexts of different lengths, and no full-answer fields."""
    model, tok = lora_4bit
    exs = heldout_examples[:4]
    full = scoring.score_answers(model, tok, exs, "alpaca", 8)
    for bs in (1, 3, 8):
        info = logprobs.ScoringInfo()
        fast = scoring.score_decisions(model, tok, exs, "alpaca", bs, info=info)
        assert info.n_sequences == 2 * len(exs) and info.forward_passes == -(-2 * len(exs) // bs)
        for a, b in zip(fast, full):
            assert {k: a[k] for k in ("pair_id", "order", "label", "choice")} == \
                {k: b[k] for k in ("pair_id", "order", "label", "choice")}
            assert a["logp_a"] == pytest.approx(b["logp_a"], abs=1e-4)
            assert a["logp_b"] == pytest.approx(b["logp_b"], abs=1e-4)
            assert "logp_a_full" not in a
    assert max(abs(a["logp_a"] - a["logp_b"]) for a in full) > 1e-3  # the adapter makes A and B differ


def test_decision_score_is_the_answer_prefix(base_4bit, heldout_examples):
    """logp_a/logp_b sum exactly the tokens of 'The better recommendation is Option X' (checked
    against an unpadded forward with all logits), and the span is an exact token prefix."""
    model, tok = base_4bit
    ex = heldout_examples[0]
    info = logprobs.ScoringInfo()
    row = _by_key(scoring.score_answers(model, tok, [ex], "alpaca", 4, info=info))[(ex.pair_id, "original")]
    assert info.n_sequences == 4 and info.fallback_decision_spans == 0
    prompt = records.format_prompt(ex)
    p_ids = tok(prompt)["input_ids"]
    for letter in "AB":
        ids = tok(prompt + task.ANSWER_PREFIX + letter)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        expected = sum(lp[j - 1, ids[j]].item() for j in range(len(p_ids), len(ids)))
        assert row[f"logp_{letter.lower()}"] == pytest.approx(expected, abs=1e-4)
    assert row["logp_a_full"] < row["logp_a"]  # the full answer has many more tokens


def test_swapped_order_exchanges_options_and_flips_label(base_4bit, heldout_examples):
    model, tok = base_4bit
    ex = heldout_examples[0]
    plain = replace(ex, extra={}, pair_id="no-ids")  # option ids fall back to texts
    rows = _by_key(scoring.score_answers(model, tok, [ex, plain], "alpaca", 8))
    o, s = rows[(ex.pair_id, "original")], rows[(ex.pair_id, "swapped")]
    assert o["label"] == ex.label and s["label"] == ex.other
    assert (s["option_a_id"], s["option_b_id"]) == (o["option_b_id"], o["option_a_id"])
    assert o["option_a_id"] == str(ex.extra["option_a"]["item_id"])
    po, ps = rows[("no-ids", "original")], rows[("no-ids", "swapped")]
    assert (po["option_a_id"], po["option_b_id"]) == (ex.option_a, ex.option_b)
    assert (ps["option_a_id"], ps["option_b_id"]) == (ex.option_b, ex.option_a)
    # what the model actually read in the swapped order
    (_, orig), (_, swapped) = records.orders(ex)
    prompt = records.format_prompt(swapped)
    assert f"Option A: {ex.option_b}" in prompt and f"Option B: {ex.option_a}" in prompt
    assert records.chosen_output(swapped).startswith(task.ANSWER_PREFIX + ex.other)
    # the correct movie is the same in both orders, and stats accepts the rows
    assert o[f"option_{o['label'].lower()}_id"] == s[f"option_{s['label'].lower()}_id"]
    metrics.model_metrics([r for r in rows.values()])
    # choices agree with the scores, exact ties excepted
    for r in rows.values():
        assert r["choice"] == ("A" if r["logp_a"] > r["logp_b"] else "B" if r["logp_b"] > r["logp_a"]
                               else "tie")
        assert r["correct"] == (r["choice"] == r["label"])


@pytest.fixture(scope="module")
def always_a_adapter(tiny_data, tiny_model, tmp_path_factory):
    """SFT on training data whose answers are all Option A (the precursor's data).

    TRL's SFTTrainer directly, not train_sft.py: the tiny model's frozen output layer is random with
    tiny weights, so LoRA on the attention/MLP layers alone cannot move the letter in a few steps
    (16 steps of train_sft.py at lr 1e-2 leave |logp_A - logp_B| < 0.1). Adding lm_head to the LoRA
    targets needs TRL's plain 'nll' loss, which train_sft.py does not expose.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    out = tmp_path_factory.mktemp("always_a")
    train = [e if e.label == "A" else records.swap(e)
             for e in records.load_examples(tiny_data / "train.jsonl")]
    assert balance.balance(train)["A"] == len(train)
    cfg = _cfg(tiny_data, tiny_model, out, "model.load_in_4bit=false",
               "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]")
    torch.manual_seed(0)
    model, tok = backends.load_for_training(cfg, "hf")
    args = SFTConfig(output_dir=str(out / "trainer"), use_cpu=True, bf16=False, report_to="none",
                     per_device_train_batch_size=8, max_steps=6, learning_rate=1e-2,
                     lr_scheduler_type="constant", loss_type="nll", save_strategy="no", logging_steps=6,
                     completion_only_loss=True, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(records.to_sft_rows(train)),
                         processing_class=tok)
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    return out / "adapter"


def test_always_a_model_is_exposed_not_rewarded(always_a_adapter, tiny_data, tiny_model, tmp_path,
                                                heldout_examples):
    cfg = _cfg(tiny_data, tiny_model, tmp_path)  # evaluated on the 4-bit base, as in evaluate_dpo.py
    base, tok = backends.load_base(cfg, "hf")
    model = adapters.attach_adapters(base, {"always_a": always_a_adapter}, str(tiny_model))
    assert 0.4 <= balance.balance(heldout_examples)["a_fraction"] <= 0.6

    rows = scoring.score_answers(model, tok, heldout_examples, "alpaca", 8, model_name="always_a")
    # it really answers A: by a wide margin, in every decision
    assert min(r["logp_a"] - r["logp_b"] for r in rows) > 1.0
    m = metrics.model_metrics(rows)
    assert m["first_option_rate"] == 1.0
    assert m["accuracy"] == 0.5
    assert m["consistency"] == 0.0
    assert m["accuracy_both_orders"] == 0.0

    # The precursor's setting: every test answer in position A. One-order accuracy would be 100%;
    # the two-order accuracy stays at chance.
    all_a = [e if e.label == "A" else records.swap(e) for e in heldout_examples]
    m_a = metrics.model_metrics(scoring.score_answers(model, tok, all_a, "alpaca", 8, model_name="always_a"))
    assert m_a["accuracy_original_order"] == 1.0
    assert m_a["accuracy"] == 0.5 and m_a["consistency"] == 0.0


@pytest.mark.parametrize("text, expected", [
    ("The better recommendation is Option A. Reasoning: it fits.", "A"),
    ("The better recommendation is Option B.", "B"),
    ("Option B", "B"),
    ("I would go with option A here, since the user likes comedies.", "A"),
    ("Looking at the history, the user likes dramas. Option B fits better. Option A does not.", "B"),
    ("The better recommendation is Option A or Option B.", None),   # both named: invalid, not A
    ("Option B is better than Option A.", None),                    # both named in the decision sentence
    ("Both Option A and Option B are fine", None),
    ("The better recommendation is the first movie.", None),        # neither named
    ("", None),
    ("Optional Actions", None),
    ("The better recommendation is Option C.", None),
])
def test_parse_choice_is_strict_and_unbiased(text, expected):
    assert task.parse_choice(text) == expected


def test_generate_choices_rows(base_4bit, heldout_examples):
    model, tok = base_4bit
    exs = heldout_examples[:3]
    gen = generation.generate_choices(model, tok, exs, "alpaca", batch_size=4, max_new_tokens=6,
                                      model_name="base")
    assert len(gen) == 2 * len(exs)
    assert {(g["pair_id"], g["order"]) for g in gen} == {(e.pair_id, o) for e in exs for o in task.ORDERS}
    for g in gen:
        assert isinstance(g["generated"], str)
        assert g["parsed"] == task.parse_choice(g["generated"])
    # batched left-padded greedy decoding gives what one-at-a-time decoding gives
    single = generation.generate_choices(model, tok, exs[:1], "alpaca", batch_size=1, max_new_tokens=6,
                                         model_name="base")
    gen_by = _by_key(gen)
    for g in single:
        assert g["generated"] == gen_by[(g["pair_id"], g["order"])]["generated"]
    # the reasoning's rows: the same greedy answers, with what was asked and the data's own answer
    answers = generation.generate_answers(model, tok, exs, "alpaca", batch_size=4, max_new_tokens=6,
                                          model_name="base")
    assert [a["generated"] for a in answers] == [g["generated"].strip() for g in gen]
    for a, (ex, (order, e)) in zip(answers, [(x, o) for x in exs for o in records.orders(x)]):
        assert (a["pair_id"], a["order"], a["input"], a["label"]) == (ex.pair_id, order, e.input, e.label)
        assert a["reference"] == records.sft_output(e)
    subset = generation.reasoning_subset(heldout_examples, 2)
    assert len(subset) == 2 and subset == generation.reasoning_subset(heldout_examples, 2)  # seeded
    assert generation.reasoning_subset(heldout_examples, None) == list(heldout_examples)
