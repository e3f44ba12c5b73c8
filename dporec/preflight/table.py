"""The preflight table: the facts checks share, the rows they return (✓ fine, ! worth knowing, ✗ must be
fixed, each with its fix), running checks without ever showing a traceback, and printing the rows.

Facts are typed and found once, when a check first asks for one, so no check depends on which check ran
before it. The process setup (modeling.runtime) is the one exception that must come first, and verify()
makes it before any check.
"""
from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from dporec import UserError

OK, WARN, FAIL = "ok", "warn", "fail"
GB = 1024 ** 3
SYMBOLS = {OK: "✓", WARN: "!", FAIL: "✗"}
ASCII_SYMBOLS = {OK: "OK", WARN: "!", FAIL: "X"}


@dataclass
class Loaded:
    """The data files as the stages would load them: examples per split, or what is wrong with each."""
    examples: dict          # {split: [Example]} of the files that loaded
    errors: dict            # {split: message} of those that did not
    missing: list           # paths of the files that are not there


class Facts:
    """What checks share about the config, the machine and the inputs."""

    def __init__(self, cfg: dict, config_path: str, for_eval: bool = False, cuda: bool = False,
                 utilisation: Path | None = None):
        self.cfg, self.config_path, self.for_eval, self.cuda = cfg, config_path, for_eval, cuda
        self.utilisation = utilisation     # a benchmark's utilisation file, for the time row
        self.runtime = None                # modeling.runtime.Runtime, set by setup()
        self.setup_error: str | None = None

    def setup(self) -> None:
        """The process setup a run would make (importing Unsloth where the run would, before transformers);
        what stops it is kept for the rows that explain it."""
        from dporec.modeling import runtime
        try:
            self.runtime = runtime.setup(self.cfg, "sft")
        except UserError as e:
            self.setup_error = str(e)

    @cached_property
    def has_unsloth(self) -> bool:
        import importlib.util
        return importlib.util.find_spec("unsloth") is not None

    @cached_property
    def nvidia_smi(self) -> dict | None:
        from dporec.modeling.hardware import nvidia_smi
        return nvidia_smi()

    @cached_property
    def gpu_name(self) -> str | None:
        if not self.cuda:
            return None
        import torch
        return torch.cuda.get_device_name(0)

    @cached_property
    def model_folder(self) -> Path | None:
        """The model's folder on disk (local, or in the Hugging Face cache), when loading would accept it."""
        from dporec.modeling.backends import check_model_name
        from dporec.weights import model_folder
        try:
            check_model_name(self.cfg["model"]["name"])
        except UserError:
            return None
        return model_folder(self.cfg["model"]["name"])

    @cached_property
    def model_config(self) -> dict | None:
        folder = self.model_folder
        return json.loads((folder / "config.json").read_text()) if folder else None

    @cached_property
    def shape(self):
        """costmodel.ModelShape of the model (its config.json, or Llama 3 8B's by name before a download)."""
        import re

        from dporec.costmodel import LLAMA3_8B, ModelShape
        if self.model_config:
            try:
                return ModelShape.from_config(self.model_config)
            except KeyError:  # not a decoder config the cost model can count
                return None
        return LLAMA3_8B if re.search(r"llama-?3.*8b", self.cfg["model"]["name"], re.IGNORECASE) else None

    @cached_property
    def data(self) -> Loaded:
        from dporec.data import records
        d = self.cfg["data"]
        files = {split: Path(d[f"{split}_file"]) for split in ("train", "val", "test")}
        loaded, errors = {}, {}
        for split, path in files.items():
            if not path.is_file():
                continue
            try:
                loaded[split] = records.load_examples(path)
            except UserError as e:
                errors[split] = str(e)
        return Loaded(loaded, errors, [str(p) for p in files.values() if not p.is_file()])

    @cached_property
    def data_shape(self):
        """preflight.cost.DataShape of the data files (token sizes with the model's tokenizer when it is on
        disk), or None when they are missing or invalid: the memory and time rows both read it."""
        if self.data.missing or self.data.errors:
            return None
        from dporec.preflight import cost
        return cost.data_shape(self.cfg, self.tokenizer)

    @cached_property
    def tokenizer(self):
        """The model's tokenizer, when the model is on disk."""
        if self.model_folder is None:
            return None
        from dporec.modeling.backends import load_tokenizer
        return load_tokenizer(str(self.model_folder))


def row(status, name, detail, fix=""):
    return (status, name, detail, fix)


def run_checks(checks, facts) -> list[tuple]:
    """Run each check; an unexpected exception becomes a ✗ row, never a traceback."""
    rows = []
    for check in checks:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        try:
            out = check(facts)
        except Exception as e:
            last = traceback.extract_tb(e.__traceback__)[-1]
            out = row(FAIL, name, f"the check itself failed: {type(e).__name__}: {e} "
                                  f"({Path(last.filename).name}:{last.lineno})",
                      "report this output; the other rows are still valid")
        rows += out if isinstance(out, list) else [out]
    return rows


def format_rows(rows, symbols=SYMBOLS) -> str:
    width = max(len(r[1]) for r in rows)
    lines = []
    for status, name, detail, fix in rows:
        first, *rest = str(detail).splitlines() or [""]
        lines.append(f" {symbols[status]:<2} {name:<{width}}  {first}")
        lines += [f"    {'':<{width}}  {more.strip()}" for more in rest]
        if fix and status != OK:
            lines.append(f"    {'':<{width}}  fix: {fix}")
    return "\n".join(lines)


def symbols():
    """✓/!/✗ where the console can print them, else OK/!/X."""
    try:
        "✓✗".encode(sys.stdout.encoding or "ascii")
        return SYMBOLS
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS
