"""JSON, JSON Lines and YAML files as the project reads and writes them: every reader names FILE (and
LINE) in its error, every JSON writer goes through a temporary file renamed into place, so a half-written
file never looks finished.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml

from dporec import UserError, read_text


def jsonable(obj):
    """Tuples -> lists, numpy scalars -> Python, NaN/inf -> None (JSON has no NaN), paths -> str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, content) -> Path:
    """JSON (indent 2, NaN as null, anything else unknown as its str) through a temporary file renamed
    into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(jsonable(content), indent=2, allow_nan=False, default=str)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path) -> dict:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last silently, so a
    second `sft:` section would drop the first one's settings without a word."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1}): the second would replace the first",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where) -> object:
    """Parse YAML text (safe types only, no key twice in one mapping); UserError naming `where`."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({e})") from None


def read_yaml(path) -> dict:
    return load_yaml(read_text(path), path) or {}


def jsonl_lines(path) -> Iterator[tuple[int, str, object]]:
    """(line number, "FILE:LINE", decoded object) for every non-blank line of a JSON Lines file; a line
    that is not JSON comes with a UserError naming it in place of the object, for the caller to collect,
    raise or pass over."""
    # \r\n, \n and a lone \r (an old Mac file) all end a line; JSON escapes them inside strings
    for n, line in enumerate(re.split(r"\r\n|\r|\n", read_text(path)), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            yield n, where, json.loads(line)
        except json.JSONDecodeError as e:
            yield n, where, UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})")


def write_jsonl(path, rows) -> Path:
    """One JSON object per line, UTF-8, non-ASCII kept as it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
