"""Generate-and-parse: greedy answers in both option orders, parsed by the task's strict parser.

A second view next to likelihood scoring (the measure): an answer counts only when its decision
sentence names exactly one option (task.parse_choice), so a parser can never prefer a letter.
"""
from __future__ import annotations

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
    None); merge them into scoring rows with attach_generations().
    """
    items = [(ex, order, e) for ex in examples for order, e in orders(ex)]
    prompt_ids = [encode(tokenizer, records.format_prompt(e, fmt, tokenizer)) for _, _, e in items]
    texts = _generate(model, tokenizer, prompt_ids, max_new_tokens, batch_size, desc or "generating")
    rows = []
    for (ex, order, e), (text,) in zip(items, texts):
        row = row_identity(model_name, ex, order, e)
        row.update({"generated": text, "parsed": task.parse_choice(text)})
        rows.append(row)
    return rows


def sample_answers(model, tokenizer, prompts: list[str], k: int, temperature: float, top_p: float,
                   max_new_tokens: int, batch_size: int, desc: str | None = None) -> list[list[str]]:
    """k sampled answers per prompt (temperature, top-p): the on-policy stage's generation. Returns one
    list of k texts per prompt, in the prompts' order."""
    return _generate(model, tokenizer, [encode(tokenizer, p) for p in prompts], max_new_tokens, batch_size,
                     desc or "sampling", k=k, do_sample=True, temperature=temperature, top_p=top_p)


def attach_generations(rows: list[dict], gen_rows: list[dict]) -> list[dict]:
    """Scoring rows with "generated"/"parsed" copied from the matching generation rows."""
    gen = {(g["model"], g["pair_id"], g["order"]): g for g in gen_rows}
    out = []
    for r in rows:
        g = gen.get((r["model"], r["pair_id"], r["order"]))
        if g is None:
            raise ValueError(f"no generation for model {r['model']!r}, pair "
                             f"{r['pair_id']!r}, order {r['order']!r}")
        out.append({**r, "generated": g["generated"], "parsed": g["parsed"]})
    return out
