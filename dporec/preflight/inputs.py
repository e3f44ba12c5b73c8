"""Preflight of the run's inputs: the model (found, and how much memory it needs), the data files (valid,
balanced, user-disjoint, built as the config says, no rejected == chosen, within max_seq_length), free
disk, the adapters an evaluation would load, and the predicted time of the whole run.
Each check asks the runtime's own rules (records, splits, data.built, runs, costmodel), never copies of
them, and reads what it needs from the shared Facts (preflight.table).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from dporec import UserError, arms
from dporec.data import balance, built, records, splits
from dporec.data.sources import forms
from dporec.modeling.backends import check_model_name
from dporec.modeling.hardware import free_memory
from dporec.preflight.table import FAIL, GB, OK, WARN, row
from dporec.runs.adapters import check_adapter, eval_adapters, has_adapter, run_stages
from dporec.runs.lifecycle import check_writable
from dporec.weights import is_local_name


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
    folder = ctx.model_folder
    if folder is not None:
        where = (f"local folder {name}" if is_local_name(name)
                 else f"{name} in the Hugging Face cache ({folder})")
        return row(OK, "model", f"{where}, weights complete{_four_bit_note(ctx)}")
    if not is_local_name(name) and "/" in name.strip("/") and " " not in name:
        return row(WARN, "model", f"{name} is not cached: it will be downloaded from the hub on first use")
    return row(FAIL, "model", f"{name!r} is neither a local folder nor a valid hub id", _build_hint(name))


def check_trainer_names(ctx):
    """train.optim, train.lr_scheduler and train.report_to are names transformers knows (the stages'
    own check, training.arguments.check_names)."""
    from dporec.training.arguments import check_names
    try:
        check_names(ctx.cfg)
    except UserError as e:
        return row(FAIL, "trainer settings", str(e), "fix the name in your config")
    t = ctx.cfg["train"]
    return row(OK, "trainer settings", f"optimizer {t['optim']}, schedule {t['lr_scheduler']}, "
                                       f"logging to {t['report_to']}")


def _four_bit_note(ctx) -> str:
    """What the 4-bit matmuls compute in: the loader sets every 4-bit layer to the run's compute dtype
    (backends.set_4bit_compute_dtype), also over a pre-quantized checkpoint's own bnb_4bit_compute_dtype."""
    from dporec.modeling.backends import compute_dtype
    from dporec.modeling.hardware import cuda_capability
    if not ctx.cfg["model"]["load_in_4bit"]:
        return ""
    try:
        dtype = str(compute_dtype(ctx.cfg, cuda_capability() if ctx.cuda else None)).replace("torch.", "")
    except UserError:  # the dtype row of the backend check says why
        return ""
    saved = ((ctx.model_config or {}).get("quantization_config") or {}).get("bnb_4bit_compute_dtype")
    if saved and saved != dtype:
        return (f"; pre-quantized with bnb_4bit_compute_dtype={saved}: the 4-bit matmuls are set to run in "
                f"{dtype}, the training dtype here")
    return f"; 4-bit matmuls in {dtype}" + ("" if ctx.cuda else " here (bf16 or fp16 on a GPU)")


def _size(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def check_memory(ctx):
    """The training stages' predicted peak memory (preflight.cost.peak_memory: the one estimate, which the
    time row's table repeats) against what this machine has free."""
    from dporec.preflight import cost
    if ctx.shape is None:
        return row(WARN, "memory", "model config not available: cannot estimate the memory needed")
    data = ctx.data_shape
    try:
        backends = _backends(ctx)
    except UserError:  # the backend row says why; the memory of a DPO stage without a shared prompt
        backends = {"dpo": None}
    peaks = cost.peak_memory(ctx.cfg, ctx.shape, data or cost.expected_shape(ctx.cfg) or cost.ML1M_BUILD,
                             backends, gpu=ctx.cuda)
    need = max(peaks.values()) * GB
    free, cap, where = free_memory(ctx.cuda)
    four_bit = ctx.cfg["model"]["load_in_4bit"]
    detail = (f"{_size(ctx.shape.params)} params -> about {need / GB:.1f} GiB to train "
              f"({'4-bit' if four_bit else 'unquantized'}; SFT {peaks['SFT']:.1f}, DPO {peaks['DPO']:.1f} GiB"
              f"{'' if data else ', token sizes of an ML-1M build'}); {where} free {free / GB:.1f} of "
              f"{cap / GB:.1f} GiB")
    if need > cap:
        return row(FAIL, "memory", detail, "use a smaller model, or a machine with more memory")
    if need > free:
        return row(WARN, "memory", detail, "close other programs/notebooks holding memory")
    return row(OK, "memory", detail)


def _backends(ctx) -> dict[str, str]:
    """{stage kind: backend} the run would use: on this GPU, or, without one, on a GPU install
    (requirements.txt installs unsloth); a UserError when the config cannot run a stage there."""
    from dporec.modeling import runtime
    from dporec.modeling.backends import world_size
    has_unsloth = ctx.has_unsloth if ctx.cuda else True
    return runtime.backends_of(runtime.plan(ctx.cfg, True, has_unsloth, world_size()))


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
    missing = ctx.data.missing
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
    if ctx.data.errors:
        return [row(FAIL, f"data: {split}", message,
                    f"fix the line(s) above, or rebuild: {_prepare_hint(ctx)} --force")
                for split, message in ctx.data.errors.items()]
    loaded, rows = ctx.data.examples, []
    parts, warnings = [], []
    for split, exs in loaded.items():
        b = balance.balance(exs)
        limit = d.get(f"max_{split}_examples")
        used = f", first {limit} used" if limit and limit < b["n"] else ""
        parts.append(f"{split} {b['n']} (A {100 * b['a_fraction']:.0f}%{used})")
        w = balance.balance_warning(exs, str(files[split]))
        if w:
            warnings.append(w)
    rows.append(row(OK, "data: files", "; ".join(parts)))
    for w in warnings:
        rows.append(row(WARN, "data: balance", w, "python data/check_dataset.py ... --rebalance OUT.jsonl"))
    problems = built.disagreements(d)  # the stages' own rule: they refuse to train on these files
    if problems:
        rows.append(row(FAIL, "data: built", "; ".join(problems), _prepare_hint(ctx) + " (into another "
                                                                                       "folder)"))
    rows.append(_check_users(loaded))
    rows.append(_check_pairs(loaded))
    rows.append(_check_ids(loaded))
    return rows


def check_lengths(ctx):
    """Every training and validation example within model.max_seq_length, measured with the model's own
    tokenizer as the stages measure it (records.check_lengths) before they train."""
    if ctx.data.missing or ctx.data.errors or ctx.tokenizer is None:
        return row(WARN, "data: lengths", "not measured: needs the data files and the model's tokenizer")
    d, limit = ctx.cfg["data"], ctx.cfg["model"]["max_seq_length"]
    tok, examples = ctx.tokenizer, ctx.data.examples
    exs = (examples["train"][:d["max_train_examples"] or None]
           + examples["val"][:d["max_val_examples"] or None])
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

def check_disk(ctx):
    out = Path(ctx.cfg["output_dir"]).resolve()
    try:  # the stages' own check, which they run before any model loads
        for folder in (out, *(s.folder(out) for s in arms.stages())):
            if folder == out or folder.exists():
                check_writable(folder)
    except UserError as e:
        return row(FAIL, "disk", str(e), "set output_dir=<a writable folder>")
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = 1 * GB  # unknown model: a generous floor for adapters, checkpoints and results
    if ctx.shape is not None:
        lc = ctx.cfg["lora"]
        lora = ctx.shape.lora_params(lc["r"], lc["target_modules"])
        # fp32 adapter + two Adam states per checkpoint, save_total_limit checkpoints + the final adapter,
        # for every training stage (DPO also saves its frozen ref copy)
        per_stage = lora * 4 * (3 * ctx.cfg["train"]["save_total_limit"] + 2)
        training = sum(s.kind in arms.TRAINING_KINDS for s in run_stages(ctx.cfg))
        need = max(training * per_stage + 100 * 1024 ** 2, 200 * 1024 ** 2)
    detail = f"{free / GB:.1f} GiB free at {probe}; checkpoints need about {need / GB:.2f} GiB"
    if free < need:
        return row(FAIL, "disk", detail, "free disk space or set output_dir=<a roomier disk>")
    return row(OK, "disk", detail)


def check_adapters(ctx):
    """The adapters evaluate_dpo.py will load (runs.adapters.eval_adapters, its own list, arms included)."""
    try:
        adapters = eval_adapters(ctx.cfg)
    except UserError as e:
        return row(FAIL, "adapters", str(e), "fix eval.models / eval.adapters")
    rows = []
    for name, path in adapters.items():
        if path is None:  # the base model
            continue
        label = f"adapter: {name}"
        if not has_adapter(path):
            what = ("folder exists but holds no adapter yet (training unfinished? rerun with --resume)"
                    if path.is_dir() else "not trained yet")
            if ctx.for_eval:
                rows.append(row(FAIL, label, f"{path}: {what}",
                                f"train it first (python run_experiment.py --config {ctx.config_path})"))
            else:
                rows.append(row(WARN, label, f"{path}: {what}"))
            continue
        try:
            acfg = check_adapter(path, ctx.cfg["model"]["name"])
        except UserError as e:
            rows.append(row(FAIL, label, str(e), "retrain it on this model.name, "
                                                 "or set model.name to its base"))
            continue
        rows.append(row(OK, label, f"{path} (r={acfg.get('r')}, base {acfg.get('base_model_name_or_path')})"))
    return rows or [row(OK, "adapters", "none to evaluate besides the base model")]


# ---------------------------------------------------------------------------------------------
# Time

def check_time(ctx):
    """The predicted wall time of the configured run, stage by stage (preflight.cost): on this GPU, or on an
    RTX 3090 and a T4 on a machine without one; at the utilisation --utilisation FILE measured, else the
    assumed one."""
    from dporec.costmodel import RTX_3090, T4, gpu_spec
    from dporec.preflight import cost
    cfg = ctx.cfg
    if ctx.shape is None:
        return row(WARN, "time", "not predicted: the model's config.json is not on disk yet")
    # not built yet: what data.source builds (from data.max_users users at most)
    data = ctx.data_shape or cost.expected_shape(cfg)
    if data is None:
        return row(WARN, "time", "not predicted: build the data first (its size decides the time)")
    try:
        measured = cost.read_utilisation(ctx.utilisation) if ctx.utilisation else None
    except UserError as e:
        return row(FAIL, "time", str(e), "measure again, or leave out --utilisation")
    gpus = [ctx.gpu_name] if ctx.gpu_name else [RTX_3090, T4]
    lines = []
    labels = {(gpu_spec(g) or {}).get("label") for g in gpus}
    if measured and not labels & set(measured):  # measured on another GPU: every figure below is assumed
        lines.append(f"--utilisation {ctx.utilisation} was measured on {', '.join(measured)}, not on "
                     f"{' or '.join(sorted(x for x in labels if x))}: the assumed utilisations apply")
    for gpu in gpus:
        try:
            pred = cost.predict(cfg, ctx.shape, data, _backends(ctx), gpu, measured)
        except (UserError, ValueError) as e:
            lines.append(f"{gpu}: not predicted ({e})")
            continue
        lines += cost.format_prediction(pred, data)
        lines += cost.format_routes(cost.dpo_routes(cfg, ctx.shape, data, _backends(ctx), gpu, measured))
    return row(OK, "time", "\n".join(lines))
