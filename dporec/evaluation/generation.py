"""Generation: greedy answers in both option orders (the reasoning-quality metric, judged by
analysis.reasoning), recommend.py's explanation, and the on-policy stage's sampled answers.

A second view next to likelihood scoring (the measure): a decision counts only when its sentence names
exactly one option (task.parse_answer / task.parse_choice), so a parser can never prefer a letter.
"""
from __future__ import annotations

import json
import random

from dporec.analysis.reasoning import SAMPLE_SEED
from dporec.data import records, task
from dporec.data.records import orders
from dporec.evaluation.batches import encode, model_device, pad, pad_id, run_batches
from dporec.evaluation.scoring import check_lengths, length_limit, row_identity


def _eos_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the model's own stop tokens (Llama 3 Instruct ends turns with <|eot_id|>)."""
    ids = [tokenizer.eos_token_id]
    gc = getattr(model, "generation_config", None)
    extra = getattr(gc, "eos_token_id", None)
    ids += extra if isinstance(extra, (list, tuple)) else [extra]
    return [i for k, i in enumerate(ids) if i is not None and i not in ids[:k]]


def _generate(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int,
              desc: str, k: int = 1, **sampling) -> list[list[str]]:
    """k generated continuations per prompt (greedy unless `sampling` sets do_sample), batched with left
    padding, longest prompts first; one list of k texts per prompt, in the prompts' order."""
    check_lengths([len(ids) + max_new_tokens for ids in prompt_ids], length_limit(model),
                  "prompt + max_new_tokens")
    dev = model_device(model)
    pad_token = pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)

    def generate(batch):
        ids, mask, _ = pad(batch, pad_token)
        out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), num_return_sequences=k,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_token, eos_token_id=eos,
                             **{"do_sample": False, **sampling})
        texts = [tokenizer.decode(seq, skip_special_tokens=True) for seq in out[:, ids.shape[1]:].cpu()]
        return [texts[i * k:(i + 1) * k] for i in range(len(batch))]  # generate groups a prompt's k

    return run_batches(model, prompt_ids, batch_size, len, generate, desc)


def generate_choices(model, tokenizer, examples, fmt: str, batch_size: int, max_new_tokens: int,
                     model_name: str = "model", desc: str | None = None) -> list[dict]:
    """Greedy generation for every example in both orders, batched with left padding.

    Rows carry the identity fields of the scoring rows plus "generated" and "parsed" (A, B or
    None): recommend.py's explanation.
    """
    return [{**row_identity(model_name, ex, order, e), "generated": text, "parsed": task.parse_choice(text)}
            for ex, order, e, text in _greedy_both_orders(model, tokenizer, examples, fmt, batch_size,
                                                          max_new_tokens, desc)]


def _greedy_both_orders(model, tokenizer, examples, fmt: str, batch_size: int, max_new_tokens: int,
                        desc: str | None) -> list[tuple]:
    """(pair as in the file, order, pair in that order, greedy answer) for every example in both orders."""
    items = [(ex, order, e) for ex in examples for order, e in orders(ex)]
    prompt_ids = [encode(tokenizer, records.format_prompt(e, fmt, tokenizer)) for _, _, e in items]
    texts = _generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, desc or "generating")
    return [(ex, order, e, text) for (ex, order, e), (text,) in zip(items, texts)]


def reasoning_subset(examples: list, n: int | None) -> list:
    """The test pairs whose answers are generated and judged: all (n None or >= their number), or a
    seeded sample of n, the same for every model and training seed, in the file's order."""
    if n is None or n >= len(examples):
        return list(examples)
    keep = set(random.Random(f"reasoning-{SAMPLE_SEED}").sample(range(len(examples)), n))
    return [e for i, e in enumerate(examples) if i in keep]


def _history_field(e) -> str:
    """The structured history as JSON where the prompt shows no genres (the judge needs it then), else ''."""
    if task.shown_genres(task.history_text(e.input)) or not e.extra.get("history"):
        return ""
    return json.dumps(e.extra["history"], ensure_ascii=False)


def generate_answers(model, tokenizer, examples, fmt: str, batch_size: int, max_new_tokens: int,
                     model_name: str = "model", desc: str | None = None) -> list[dict]:
    """Greedy answers for every example in both orders, stopping at EOS: the generation rows of
    analysis.reasoning (what was asked, the answer, and the data's own answer to judge beside it)."""
    return [{"model": model_name, "pair_id": ex.pair_id, "order": order,
             # without a user id, the pair is its own cluster (as in the prediction rows)
             "user_id": str(ex.user_id) if ex.user_id is not None else ex.pair_id,
             "label": e.label, "input": e.input, "history": _history_field(e), "generated": text.strip(),
             "reference": records.sft_output(e)}
            for ex, order, e, text in _greedy_both_orders(model, tokenizer, examples, fmt, batch_size,
                                                          max_new_tokens, desc)]


def sample_answers(model, tokenizer, prompts: list[str], k: int, temperature: float, top_p: float,
                   max_new_tokens: int, batch_size: int, desc: str | None = None) -> list[list[str]]:
    """k sampled answers per prompt (temperature, top-p): the on-policy stage's generation. Returns one
    list of k texts per prompt, in the prompts' order."""
    return _generate(model, tokenizer, [encode(tokenizer, p) for p in prompts], max_new_tokens, batch_size,
                     desc or "sampling", k=k, do_sample=True, temperature=temperature, top_p=top_p)
