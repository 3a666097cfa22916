"""Row checks and readers every task shares.

The chat roles of a message list, the held-out overlap policies, the prompt/response row check of the games' and the
medical task's data, the removal of ``<think>`` blocks (SFT targets without thinking, the
medical doctor's visible reply), and the pretraining documents of a tiny base. A malformed
row raises a DataError naming file, row and field.
"""
from __future__ import annotations

import re
from pathlib import Path

from .io import DataError, read_rows

THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.IGNORECASE | re.DOTALL)
ROLES = {"system", "user", "assistant"}
#: ``data.test_overlap``, ``games.test_overlap``, ``med.test_overlap``: what a held-out item
#: that your own training data also holds does (refused, dropped from the held-out split, kept)
OVERLAP_POLICIES = ("refuse", "drop", "allow")


def check_overlap_policy(key: str, policy: str) -> None:
    """ValueError naming the config ``key`` unless ``policy`` is one of :data:`OVERLAP_POLICIES`."""
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"{key} = {policy!r}: expected one of {list(OVERLAP_POLICIES)}")


def check_prompt_response(path: Path, n: int, row: dict, user: str = "the user's") -> tuple[list[dict], str]:
    """The ``prompt`` (a non-empty message list ending with ``user``'s turn) and the ``response``
    string of a prompt/response row (the games' and the medical task's schema); DataError
    naming file, row and field otherwise."""
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise DataError(path, n, "prompt", f"must be a non-empty list of messages, got {type(prompt).__name__}")
    for j, m in enumerate(prompt):
        if (not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES
                or not isinstance(m.get("content"), str)):
            raise DataError(path, n, f"prompt[{j}]", "must be {role: system|user|assistant, content: string}")
    if prompt[-1]["role"] != "user":
        raise DataError(path, n, "prompt", f"the last message must be {user}")
    resp = row.get("response")
    if not isinstance(resp, str):
        raise DataError(path, n, "response", f"must be a string, got {type(resp).__name__}")
    return prompt, resp


def strip_thinking(text: str) -> str:
    """Remove every <think>...</think> block (and the whitespace after it)."""
    return THINK_BLOCK.sub("", text).strip()


def load_corpus(path: str | Path) -> list[str]:
    """Pretraining documents: the ``text`` field of each jsonl / parquet row (DataError otherwise)."""
    texts = []
    for n, row in read_rows(path):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise DataError(path, n, "text", "must be a non-empty string (one pretraining document per row)")
        texts.append(row["text"])
    return texts
