"""CPU tests of the Unsloth-path fixes that a CPU can run for real (issue 11).

- prompt_format chat: a template that writes the BOS as text, with a tokenizer that adds one on
  encoding (Llama 3 Instruct), gives exactly one BOS in SFT, DPO and scoring: records.format_prompt
  strips it once, for every stage.
- scoring refuses sequences longer than the model's max_seq_length (Unsloth cuts input_ids to that
  length keeping the left end, which with left padding drops the scored answer).
"""
from __future__ import annotations

import pytest
import torch

from dporec import UserError
from dporec.config import load_config
from dporec.data import records
from dporec.evaluation import generation, model_limits, scoring, sequences
from dporec.modeling.backends import load_base, load_tokenizer, lora_config
from tests.helpers import TINY_CONFIG


def bos_adding_tokenizer(tiny_model, adds_bos: bool = True):
    """The tiny tokenizer made to behave like Llama 3 Instruct's: BOS in the chat template text and,
    optionally, a BOS prepended on every encode."""
    from tokenizers import processors
    tok = load_tokenizer(str(tiny_model))
    if adds_bos:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.bos_token_id)])
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    return tok


def n_bos(ids, tok) -> int:
    return list(ids).count(tok.bos_token_id)


@pytest.fixture(scope="module")
def examples(tiny_data):
    return records.load_examples(tiny_data / "train.jsonl", 4)


def test_template_bos_is_stripped_when_the_tokenizer_adds_one(tiny_model, examples):
    tok = bos_adding_tokenizer(tiny_model)
    raw = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                  add_generation_prompt=True)
    assert raw.startswith("<s>") and tok(raw)["input_ids"][:2] == [tok.bos_token_id] * 2  # the bug
    prompt = records.format_prompt(examples[0], "chat", tok)
    assert not prompt.startswith("<s>")
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and n_bos(ids, tok) == 1


def test_template_bos_is_kept_when_the_tokenizer_adds_none(tiny_model, examples):
    tok = bos_adding_tokenizer(tiny_model, adds_bos=False)
    prompt = records.format_prompt(examples[0], "chat", tok)
    assert prompt.startswith("<s>")
    assert n_bos(tok(prompt)["input_ids"], tok) == 1
    assert records.format_prompt(examples[0], "alpaca", tok).startswith("### Instruction")  # alpaca untouched


def test_one_bos_in_sft_dpo_and_scoring(tiny_model, examples, tmp_path):
    """The rows each stage gets, tokenized by TRL's own SFT and DPO dataset preparation and by scoring."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
    tok = bos_adding_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    common = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none")
    sft = SFTTrainer(model=model, args=SFTConfig(**common), processing_class=tok,
                     train_dataset=Dataset.from_list(records.to_sft_rows(examples, "chat", tok)))
    assert all(n_bos(r["input_ids"], tok) == 1 and r["input_ids"][0] == tok.bos_token_id
               for r in sft.train_dataset)
    dpo = DPOTrainer(model=model, args=DPOConfig(**common), processing_class=tok,
                     train_dataset=Dataset.from_list(records.to_dpo_rows(examples, "chat", tok)))
    assert all(n_bos(r["prompt_ids"], tok) == 1 for r in dpo.train_dataset)
    for pair in sequences.build_pairs(examples, tok, "chat"):
        for seq in pair:
            assert n_bos(seq.ids, tok) == 1 and seq.ids[0] == tok.bos_token_id


def test_scoring_refuses_sequences_longer_than_max_seq_length(tiny_model, tiny_data):
    cfg = load_config(TINY_CONFIG, [f"model.name={tiny_model}"])
    model, tok = load_base(cfg, "hf")
    exs = records.load_examples(tiny_data / "test.jsonl", 2)
    longest = max(len(s.ids) for p in sequences.build_pairs(exs, tok, "alpaca") for s in p)
    assert model_limits.length_limit(model) is None  # plain transformers: nothing is cut
    rows = scoring.score_answers(model, tok, exs, "alpaca", 4)
    # What Unsloth's FastLanguageModel sets; PEFT wrapping must not hide it.
    model.max_seq_length = longest - 1
    assert model_limits.length_limit(model) == longest - 1
    with pytest.raises(UserError,
                       match=f"max_seq_length {longest - 1}.*longest {longest}.*at least {longest}"):
        scoring.score_answers(model, tok, exs, "alpaca", 4)
    with pytest.raises(UserError, match="prompt \\+ max_new_tokens"):
        generation.generate_choices(model, tok, exs, "alpaca", 8, max_new_tokens=longest)
    model.max_seq_length = longest  # exactly fits: scores are those of the unlimited model
    again = scoring.score_answers(model, tok, exs, "alpaca", 4)
    assert [r["logp_a"] for r in again] == pytest.approx([r["logp_a"] for r in rows], abs=1e-6)

    from peft import get_peft_model
    wrapped = get_peft_model(model, lora_config(cfg))
    model.max_seq_length = 7
    assert model_limits.length_limit(wrapped) == 7


def test_unsloth_model_without_a_limit_is_an_error():
    class Forward(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    Forward.forward.__module__ = "unsloth.models.llama"  # what can_share_prefix looks at
    with pytest.raises(RuntimeError, match="exposes no max_seq_length"):
        model_limits.length_limit(Forward())
