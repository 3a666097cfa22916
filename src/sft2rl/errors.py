"""The project's error classes, in one module with no heavy imports.

Every one of them is a problem the user can fix (bad input, a bad config value, a merge
that changed nothing, a paper that does not compile, a run whose steps do not add up);
``sft2rl.logutil.script_errors`` turns each into one line and a non-zero exit.
"""
from __future__ import annotations

import os


class DataError(ValueError):
    """Bad input data. The message names the file, the line (1-based) and the field."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, problem: str):
        where = str(path) + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {problem}")
        self.path, self.line, self.field, self.problem = str(path), line, field, problem


class ConfigError(ValueError):
    """A config value that cannot be used (names the key and what is allowed)."""


class VerlConfigError(ConfigError):
    """A config value the verl backend cannot honour (one line, names the key)."""


class MergeError(RuntimeError):
    """A LoRA merge that would write a wrong model (unmerged base, logits that differ)."""


class PaperBuildError(RuntimeError):
    """latexmk failed; the message carries the first LaTeX error."""


class RunError(RuntimeError):
    """A training run that did not do what was planned (steps run != steps planned)."""


#: What ``script_errors`` reports as one line (everything else keeps its traceback).
USER_ERRORS = (ValueError, MergeError, PaperBuildError, RunError, FileNotFoundError)
