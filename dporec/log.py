"""The package's console: every module logs through `logging.getLogger(__name__)`; setup() (called once by
each entry point, dporec.cli) shows those messages as they read ("[eval] scored ..."), information on
stdout and warnings on stderr, from the main process only (under `accelerate launch` every process runs the
same code, and one console line per process helps nobody).
"""
from __future__ import annotations

import logging
import os
import sys

ROOT_LOGGER = "dporec"


def is_main_process() -> bool:
    """Rank 0 of a launch (accelerate and torchrun set RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


class _Console(logging.Handler):
    """Writes to sys.stdout or sys.stderr as they are at the time of the message (a notebook's or a test's
    capture replaces them after setup)."""

    def __init__(self, stream: str, low: int, high: int):
        super().__init__()
        self.stream_name, self.low, self.high = stream, low, high
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record) -> bool:
        return self.low <= record.levelno < self.high and (record.levelno >= logging.ERROR
                                                           or is_main_process())

    def emit(self, record) -> None:
        stream = getattr(sys, self.stream_name)
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream must not end a training run
            self.handleError(record)


def setup(level: int = logging.INFO) -> logging.Logger:
    """Install the console handlers on the package's logger (once; later calls only set the level)."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(level)
    if not any(isinstance(h, _Console) for h in logger.handlers):
        logger.addHandler(_Console("stdout", logging.NOTSET, logging.WARNING))
        logger.addHandler(_Console("stderr", logging.WARNING, logging.CRITICAL + 1))
        logger.propagate = False  # the root logger's handlers (if an application set some) would repeat it
    return logger
