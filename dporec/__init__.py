"""dporec: does DPO give better ranking adherence than SFT when a 4-bit Llama 3 recommends movies?

Subpackages by pipeline stage, imports flowing downward only (pyproject.toml's import-linter contracts,
which tests/test_architecture.py holds this list to; docs/development.md):
cli -> experiment -> preflight | inference | onpolicy -> evaluation | training -> modeling | report ->
analysis | runs -> weights -> config -> arms -> data -> costmodel | files | log | compat.
`a | b`: packages of one layer, which never import each other.
"""
import errno
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: configs/, requirements*.txt, the scripts


class UserError(Exception):
    """A problem with the user's input (config, data file, paths): printed without a traceback."""


def broken_link(path) -> str | None:
    """What is wrong when `path`, or a folder above it, is a symbolic link loop or a link to nothing
    (both read as 'missing' to Path.exists); None when no link is broken."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.is_symlink():
            try:
                part.resolve(strict=True)
            except RuntimeError:  # a loop, as Python 3.11 reports it
                return f"{path}: {part} is a symbolic link loop"
            except OSError as e:
                if e.errno == errno.ELOOP:  # a loop, as later Pythons report it
                    return f"{path}: {part} is a symbolic link loop"
                return f"{path}: {part} is a symbolic link to {os.readlink(part)}, which does not exist"
    return None


def not_found(path, what: str = "file") -> str:
    """The message for a path that cannot be opened because it is not there (a broken link named as such)."""
    return broken_link(path) or f"{what} not found: {path}"


def read_text(path) -> str:
    """A user's text file (data, config, candidate sets) as str, or a UserError naming the file and what
    is wrong: missing, a folder, unreadable, UTF-16 or binary (UTF-8 only; a BOM is allowed)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a file") from None
    except FileNotFoundError:
        raise UserError(not_found(path)) from None
    except OSError as e:
        raise UserError(broken_link(path) or f"cannot read {path}: {e.strerror or e}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path} is saved as UTF-16; save it as UTF-8")
    if b"\x00" in raw:  # UTF-16 without a BOM, or a binary file; both would decode into nonsense
        line = raw[:raw.index(b"\x00")].count(b"\n") + 1
        raise UserError(f"{path}:{line}: holds NUL bytes: a binary or UTF-16 file, not UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                        "save it as UTF-8") from None
