"""The preflight table: a check's context and rows (✓ fine, ! worth knowing, ✗ must be fixed, each with
its fix), running checks without ever showing a traceback, and printing the rows."""
from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "fail"
GB = 1024 ** 3
SYMBOLS = {OK: "✓", WARN: "!", FAIL: "✗"}
ASCII_SYMBOLS = {OK: "OK", WARN: "!", FAIL: "X"}


@dataclass
class Ctx:
    cfg: dict
    config_path: str
    for_eval: bool = False
    cuda: bool = False
    cache: dict = field(default_factory=dict)  # facts shared between checks (model config, backend, ...)


def row(status, name, detail, fix=""):
    return (status, name, detail, fix)


def run_checks(checks, ctx) -> list[tuple]:
    """Run each check; an unexpected exception becomes a ✗ row, never a traceback."""
    rows = []
    for check in checks:
        name = check.__name__.removeprefix("check_").replace("_", " ")
        try:
            out = check(ctx)
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
