"""Logging for workflow scripts: to the rule's log file and to stderr.

``script_errors`` turns a bad-input error (DataError, ConfigError, ValueError from our
own checks) or a refused merge into one clear line on stderr and in the log, and a non-zero exit, instead
of a traceback; Snakemake then removes the rule's outputs, so nothing downstream runs.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator

from .config import ConfigError
from .io import DataError

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


@contextlib.contextmanager
def script_errors(snakemake) -> Iterator[logging.Logger]:
    from .merge import MergeError

    log = setup_logging(str(snakemake.log[0]) if snakemake.log else None)
    try:
        yield log
    except (DataError, ConfigError, MergeError) as err:
        log.error("ERROR: %s", err)
        sys.exit(1)
