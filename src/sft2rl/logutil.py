"""Logging for workflow scripts: to the rule's log file and to stderr.

``script_errors`` turns a problem the user can fix (bad data, a bad config value, a refused
merge, a run whose steps do not add up: the classes of ``sft2rl.errors`` and any
``ValueError``) into one clear line on stderr and in the log, and a non-zero exit, instead
of a traceback; Snakemake then removes the rule's outputs, so nothing downstream runs.
This module imports nothing heavy (no torch), so the data, table and figure scripts stay light.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from .errors import USER_ERRORS

LOG = logging.getLogger("sft2rl")


def setup_logging(log_path: str | None = None) -> logging.Logger:
    LOG.setLevel(logging.INFO)
    LOG.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    for h in handlers:
        h.setFormatter(fmt)
        LOG.addHandler(h)
    return LOG


def one_line(err: BaseException) -> str:
    """The error as one line: its message, newlines folded, prefixed by its class where that helps."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if type(err).__module__.startswith("sft2rl") else f"{type(err).__name__}: {text}"


@contextlib.contextmanager
def script_errors(snakemake) -> Iterator[logging.Logger]:
    log = setup_logging(str(snakemake.log[0]) if snakemake.log else None)
    try:
        yield log
    except USER_ERRORS as err:
        log.error("ERROR: %s", one_line(err))
        sys.exit(1)
