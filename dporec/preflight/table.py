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

from dporec import ROOT, UserError, broken_link

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
        absent = [p for p in files.values() if not p.exists() and not broken_link(p)]  # not built yet
        for split, path in files.items():
            if path in absent:
                continue  # a folder, a broken link or a bad file is loaded, to say what is wrong with it
            try:
                loaded[split] = records.load_examples(path)
            except UserError as e:
                errors[split] = str(e)
        return Loaded(loaded, errors, [str(p) for p in absent])

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


def _where(e: BaseException) -> str:
    """FILE:LINE of the project's line that failed, and of the library line under it when the error was
    raised inside a library."""
    def project(f) -> bool:  # the checkout's own files, not the libraries of a venv inside it
        p = Path(f.filename).resolve()
        return p.is_relative_to(ROOT) and "site-packages" not in p.parts

    def at(f) -> str:
        p = Path(f.filename)
        return f"{p.resolve().relative_to(ROOT) if project(f) else p.name}:{f.lineno}"

    frames = traceback.extract_tb(e.__traceback__.tb_next or e.__traceback__)  # below run_checks' own line
    ours = [f for f in frames if project(f)]
    if not ours or ours[-1] is frames[-1]:
        return at(frames[-1])
    return f"{at(ours[-1])}, raised in {at(frames[-1])}"


def run_checks(checks, facts) -> list[tuple]:
    """Run each check; an unexpected exception becomes a ✗ row, never a traceback."""
    rows = []
    for check in checks:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        try:
            out = check(facts)
        except Exception as e:
            out = row(FAIL, name, f"the check itself failed: {type(e).__name__}: {e} ({_where(e)})",
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
