"""Preflight of the run's inputs: the model (found, and how much memory it needs), the data files (valid,
balanced, user-disjoint, no rejected == chosen, within max_seq_length), free disk, the adapters an
evaluation would load, and the predicted time of the whole run.
Each check asks the runtime's own rules (records, splits, runs), never copies of them.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from dporec import UserError, runs
from dporec.data import records, splits
from dporec.data.sources import forms
from dporec.modeling.backends import check_model_name
from dporec.modeling.hardware import free_memory
from dporec.preflight.table import FAIL, GB, OK, WARN, row
from dporec.weights import is_local_name, model_folder, projection_shapes


def _build_hint(name: str) -> str:
    if "smollm2" in name.lower():
        return f"python scripts/prepare_smollm2.py --out {name}"
    if "tiny" in name.lower():
        return f"python scripts/build_tiny_model.py --out {name}"
    return "point model.name at a folder with config.json, or a hub id"


def check_model(ctx):
    name = ctx.cfg["model"]["name"]
    try:  # the loader's own check: what it would refuse, verify refuses
        check_model_name(name)
    except UserError as e:
        return row(FAIL, "model", str(e), _build_hint(name))
    folder = model_folder(name)
    if folder is not None:
        ctx.cache["model_config"] = folder / "config.json"
        where = (f"local folder {name}" if is_local_name(name)
                 else f"{name} in the Hugging Face cache ({folder})")
        return row(OK, "model", f"{where}, weights complete")
    if not is_local_name(name) and "/" in name.strip("/") and " " not in name:
        return row(WARN, "model", f"{name} is not cached: it will be downloaded from the hub on first use")
    return row(FAIL, "model", f"{name!r} is neither a local folder nor a valid hub id", _build_hint(name))


def _param_counts(config_file: Path) -> tuple[int, int]:
    """(total parameters, parameters in embeddings/LM head that stay unquantized), built on 'meta'."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    conf = AutoConfig.from_pretrained(config_file.parent)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf)
    total = sum(p.numel() for p in model.parameters())
    layers = (model.get_input_embeddings(), model.get_output_embeddings())
    emb = {id(p): p.numel() for m in layers if m is not None for p in m.parameters()}
    return total, sum(emb.values())


def check_memory(ctx):
    if "model_config" not in ctx.cache:
        return row(WARN, "memory", "model config not available: cannot estimate the memory needed")
    total, emb = _param_counts(ctx.cache["model_config"])
    ctx.cache["n_params"] = total
    four_bit = ctx.cfg["model"]["load_in_4bit"]
    wide = 2 if ctx.cuda else 4  # bf16/fp16 on GPU, fp32 on CPU (see backends.compute_dtype)
    # NF4 with double quantization ~0.55 byte/param; embeddings and LM head stay in the compute dtype.
    weights = (total - emb) * (0.55 if four_bit else wide) + emb * wide
    # LoRA weights + optimizer states, activations at this sequence length, and the CUDA/torch runtime.
    overhead = 0.25 * weights + (1.5 if ctx.cuda else 1.0) * GB
    need = weights + overhead
    free, cap, where = free_memory(ctx.cuda)
    size = f"{total / 1e9:.2f}B" if total >= 1e9 else f"{total / 1e6:.1f}M"
    detail = (f"{size} params -> about {need / GB:.1f} GiB to train "
              f"({'4-bit' if four_bit else 'unquantized'}); {where} "
              f"free {free / GB:.1f} of {cap / GB:.1f} GiB")
    if need > cap:
        return row(FAIL, "memory", detail, "use a smaller model, or a machine with more memory")
    if need > free:
        return row(WARN, "memory", detail, "close other programs/notebooks holding memory")
    return row(OK, "memory", detail)


# ---------------------------------------------------------------------------------------------
# Data

def _prepare_hint(ctx) -> str:
    folder = Path(ctx.cfg["data"]["train_file"]).parent
    if ctx.cfg["data"]["source"]:
        return f"python data/prepare_movielens.py --config {ctx.config_path}"
    return f"python data/prepare_movielens.py --source SOURCE --out {folder} (SOURCE: {forms()})"


def check_data(ctx):
    d = ctx.cfg["data"]
    files = {split: Path(d[f"{split}_file"]) for split in ("train", "val", "test")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        if d["source"]:
            source = d["source"]
            local = not source.startswith(("recbole:", "synthetic", "thesis:"))
            if local and not Path(source).exists():
                from dporec.data.sources.movielens import URL
                return row(WARN, "data", f"not built yet, and its source {source} is not there: download it "
                                         f"next (curl -L -o {source} {URL}), then build the data",
                           _prepare_hint(ctx))
            return row(WARN, "data", f"not built yet: build it next from data.source={source} "
                                     f"(run_experiment.py also builds it)", _prepare_hint(ctx))
        return row(FAIL, "data", f"missing {', '.join(missing)}", _prepare_hint(ctx))
    loaded, rows = {}, []
    for split, path in files.items():
        try:
            loaded[split] = records.load_examples(path)
        except UserError as e:
            rows.append(row(FAIL, f"data: {split}", str(e),
                            f"fix the line(s) above, or rebuild: {_prepare_hint(ctx)} --force"))
    if rows:
        return rows
    ctx.cache["examples"] = loaded
    parts, warnings = [], []
    for split, exs in loaded.items():
        b = splits.balance(exs)
        limit = d.get(f"max_{split}_examples")
        used = f", first {limit} used" if limit and limit < b["n"] else ""
        parts.append(f"{split} {b['n']} (A {100 * b['a_fraction']:.0f}%{used})")
        w = splits.balance_warning(exs, str(files[split]))
        if w:
            warnings.append(w)
    rows.append(row(OK, "data: files", "; ".join(parts)))
    for w in warnings:
        rows.append(row(WARN, "data: balance", w, "python data/check_dataset.py ... --rebalance OUT.jsonl"))
    rows.append(_check_users(loaded))
    rows.append(_check_pairs(loaded))
    rows.append(_check_ids(loaded))
    return rows


def check_lengths(ctx):
    """Every training and validation example within model.max_seq_length, measured with the model's own
    tokenizer as the stages measure it (records.check_lengths) before they train."""
    if "examples" not in ctx.cache or "model_config" not in ctx.cache:
        return row(WARN, "data: lengths", "not measured: needs the data files and the model's tokenizer")
    from dporec.modeling.backends import load_tokenizer
    d, limit = ctx.cfg["data"], ctx.cfg["model"]["max_seq_length"]
    tok = ctx.cache["tokenizer"] = load_tokenizer(str(ctx.cache["model_config"].parent))
    exs = (ctx.cache["examples"]["train"][:d["max_train_examples"] or None]
           + ctx.cache["examples"]["val"][:d["max_val_examples"] or None])
    longest = 0
    try:
        for to_rows in (records.to_sft_rows, records.to_dpo_rows):
            rows = to_rows(exs, d["prompt_format"], tok)
            records.check_lengths(exs, rows, tok, limit)
            longest = max(longest, *records.token_lengths(rows, tok))
    except UserError as e:
        return row(FAIL, "data: lengths", str(e), "raise model.max_seq_length, or shorten the histories")
    return row(OK, "data: lengths", f"longest training sequence {longest} tokens "
                                    f"(model.max_seq_length {limit})")


def _check_users(loaded):
    """Users shared by two splits (splits.shared_between, as data/check_dataset.py asks)."""
    users = {s: {e.user_id for e in exs} for s, exs in loaded.items()}
    if any(None in u for u in users.values()):
        return row(WARN, "data: users", "some records have no user_id: cannot "
                                        "check that splits are user-disjoint")
    for a, b, both in splits.shared_between(loaded, lambda e: e.user_id)[:1]:
        ex = next(e for e in loaded[b] if e.user_id in set(both))
        return row(FAIL, "data: users", f"{len(both)} user(s) in both {a} and {b} (e.g. user {ex.user_id} "
                                         f"at {ex.source}): test scores would leak training users",
                   "rebuild the splits by user with data/prepare_movielens.py")
    n = {s: len(u) for s, u in users.items()}
    return row(OK, "data: users", f"disjoint across splits (train {n['train']}, "
                                  f"val {n['val']}, test {n['test']} users)")


def _check_pairs(loaded):
    for exs in loaded.values():
        problems = splits.pair_problems(exs)
        if problems:
            return row(FAIL, "data: pairs", problems[0], "fix that record's options/reasons, or drop it")
    return row(OK, "data: pairs", "every rejected answer differs from its chosen answer")


def _check_ids(loaded):
    for a, b, ids in splits.shared_between(loaded, lambda e: e.pair_id)[:1]:
        where = {split: next(e.source for e in loaded[split] if e.pair_id == ids[0]) for split in (a, b)}
        return row(FAIL, "data: ids", f"id {ids[0]!r} at {where[a]} and at {where[b]}",
                   "give every example a unique id (data/prepare_movielens.py does)")
    return row(OK, "data: ids", f"{sum(len(exs) for exs in loaded.values())} "
                                "unique ids across the three files")


# ---------------------------------------------------------------------------------------------
# Disk and adapters

def _lora_params(config_file: Path, r: int, targets) -> int:
    c = json.loads(config_file.read_text())
    shapes = projection_shapes(c)  # (in, out) features; LoRA adds r * (in + out) per projection
    per_layer = sum(r * sum(shapes[t]) for t in targets if t in shapes)
    return per_layer * c.get("num_hidden_layers", 0)


def check_disk(ctx):
    out = Path(ctx.cfg["output_dir"]).resolve()
    try:  # the stages' own check, which they run before any model loads
        for folder in (out, *(runs.stage_dir(ctx.cfg, s) for s in runs.MARKERS)):
            if folder == out or folder.exists():
                runs.check_writable(folder)
    except UserError as e:
        return row(FAIL, "disk", str(e), "set output_dir=<a writable folder>")
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = 1 * GB  # unknown model: a generous floor for adapters, checkpoints and results
    if "model_config" in ctx.cache:
        lc = ctx.cfg["lora"]
        lora = _lora_params(ctx.cache["model_config"], lc["r"], lc["target_modules"])
        # fp32 adapter + two Adam states per checkpoint, save_total_limit checkpoints + the final adapter,
        # for SFT, DPO (which also saves its frozen ref copy) and the control arm.
        per_stage = lora * 4 * (3 * ctx.cfg["train"]["save_total_limit"] + 2)
        need = max(3 * per_stage + 100 * 1024 ** 2, 200 * 1024 ** 2)
    detail = f"{free / GB:.1f} GiB free at {probe}; checkpoints need about {need / GB:.2f} GiB"
    if free < need:
        return row(FAIL, "disk", detail, "free disk space or set output_dir=<a roomier disk>")
    return row(OK, "disk", detail)


def check_adapters(ctx):
    """The adapters evaluate_dpo.py will load (runs.eval_adapters, its own list), plus the control arm's."""
    try:
        adapters = runs.eval_adapters(ctx.cfg, with_control=True)
    except UserError as e:
        return row(FAIL, "adapters", str(e), "fix eval.models / eval.adapters")
    rows = []
    for name, path in adapters.items():
        if path is None:  # the base model
            continue
        label = f"adapter: {name}"
        if not runs.has_adapter(path):
            what = ("folder exists but holds no adapter yet (training unfinished? rerun with --resume)"
                    if path.is_dir() else "not trained yet")
            if ctx.for_eval:
                rows.append(row(FAIL, label, f"{path}: {what}",
                                f"train it first (python run_experiment.py --config {ctx.config_path})"))
            else:
                rows.append(row(WARN, label, f"{path}: {what}"))
            continue
        try:
            acfg = runs.check_adapter(path, ctx.cfg["model"]["name"])
        except UserError as e:
            rows.append(row(FAIL, label, str(e), "retrain it on this model.name, "
                                                 "or set model.name to its base"))
            continue
        rows.append(row(OK, label, f"{path} (r={acfg.get('r')}, base {acfg.get('base_model_name_or_path')})"))
    return rows or [row(OK, "adapters", "none to evaluate besides the base model")]


# ---------------------------------------------------------------------------------------------
# Time and memory

def check_time(ctx):
    """The predicted wall time and peak memory of the configured run, stage by stage (preflight.cost): on
    this GPU, or on an RTX 3090 and a T4 on a machine without one."""
    from dporec.modeling.backends import choose_backend
    from dporec.preflight import cost
    cfg = ctx.cfg
    if "model_config" in ctx.cache:
        shape = cost.shape_from_config(json.loads(Path(ctx.cache["model_config"]).read_text()))
    elif re.search(r"llama-?3.*8b", cfg["model"]["name"], re.IGNORECASE):
        shape = cost.LLAMA3_8B
    else:
        return row(WARN, "time", "not predicted: the model's config.json is not on disk yet")
    data = cost.data_shape(cfg, ctx.cache.get("tokenizer")) if "examples" in ctx.cache else None
    if data is None:
        if not str(cfg["data"]["source"] or "").endswith(("ml-1m.zip", "ml-1m", "ml-1m/")):
            return row(WARN, "time", "not predicted: build the data first (its size decides the time)")
        data = cost.ML1M_BUILD
    gpus = [ctx.cache["gpu_name"]] if ctx.cache.get("gpu_name") else [cost.RTX_3090, cost.T4]
    lines = []
    for gpu in gpus:
        requested = cfg["model"]["backend"]
        # without a GPU here, predict the GPU install (requirements.txt installs unsloth)
        has_unsloth = ctx.cache.get("has_unsloth", True) if ctx.cuda else True
        try:
            pick = {stage: choose_backend(requested, True, has_unsloth, shared_prompt=stage == "dpo"
                                          and cfg["dpo"]["prefix_sharing"])[0]
                    for stage in ("sft", "dpo", "eval")}
            pred = cost.predict(cfg, shape, data, pick, gpu)
        except (UserError, ValueError) as e:
            lines.append(f"{gpu}: not predicted ({e})")
            continue
        lines += cost.format_prediction(pred, data)
    return row(OK, "time", "\n".join(lines))
