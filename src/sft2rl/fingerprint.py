"""Content digests: what a resumable stage's restart guard keys on, and what a rule's code is.

A checkpoint may only be resumed by a job that would compute the same thing: the same
init model *weights*, the same data *bytes*, the same package *source* and the same
parameters. Paths never enter a key (a moved checkout or another mount point resumes; a
retrained model at the same path does not).

The code a stage runs is found, not listed by hand: :func:`module_closure` follows the
``sft2rl`` imports (module level and inside functions) from an entry module or a workflow
script, so a rule's code inputs and a guard's code digest are complete by construction.
This module imports nothing heavy: Snakemake imports it while it builds the DAG.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

PACKAGE = "sft2rl"
PACKAGE_DIR = Path(__file__).resolve().parent
_CHUNK = 1 << 20
#: Files inside a model/data directory that do not change what it computes (our own reports, temp files).
IGNORED_NAMES = {"merge_report.json", "pretrain_metrics.json", ".DS_Store"}


def _hasher():
    return hashlib.sha256()


def file_digest(path: str | os.PathLike) -> str:
    h = _hasher()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(path: str | os.PathLike) -> str:
    """Digest of a file, or of a directory's files (relative names and bytes, in sorted order).

    Hidden entries (temporary files of an atomic write) and :data:`IGNORED_NAMES` are left out.
    A path that does not exist locally (a hub id such as ``Qwen/Qwen2.5-0.5B``) is keyed by its
    name: the hub revision it resolves to is not known before the job downloads it.
    """
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if not p.is_dir():
        return hashlib.sha256(f"name:{path}".encode()).hexdigest()
    h = _hasher()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts) or f.name in IGNORED_NAMES:
            continue
        h.update(rel.as_posix().encode() + b"\0" + file_digest(f).encode() + b"\n")
    return h.hexdigest()


# ------------------------------------------------------------------ the code a stage runs
# Module names are dotted paths inside the package: ``grpo``, ``tasks.games.sokoban``; a
# package is named by its folder (``tasks.games`` is tasks/games/__init__.py) and the
# package itself by ``__init__``.
def module_file(name: str) -> Path:
    """The source file of a package module name (see above)."""
    if name == "__init__":
        return PACKAGE_DIR / "__init__.py"
    base = PACKAGE_DIR.joinpath(*name.split("."))
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"


def _is_module(name: str) -> bool:
    return bool(name) and module_file(name).is_file()


def _with_parents(name: str) -> set[str]:
    """A module and the packages that importing it runs (their ``__init__``)."""
    parts = name.split(".")
    return {"__init__", *(".".join(parts[:i]) for i in range(1, len(parts) + 1))}


def _imported_modules(source: str, current: str | None) -> set[str]:
    """``sft2rl`` modules imported anywhere in ``source`` (absolute or relative imports)."""
    if current is None or current == "__init__":
        package = ""
    elif (PACKAGE_DIR.joinpath(*current.split(".")) / "__init__.py").is_file():
        package = current  # a package's own __init__
    else:
        package = current.rpartition(".")[0]
    found: set[str] = set()

    def add(mod: str, names: list[str]) -> None:
        if mod:
            found.add(mod)
        for alias in names:  # from <mod> import x: x may itself be a module
            sub = f"{mod}.{alias}" if mod else alias
            if _is_module(sub):
                found.add(sub)
        if not mod:
            found.add("__init__")

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(".".join(parts[1:]) or "__init__")
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names = [a.name for a in node.names]
            if node.level == 0:
                if mod == PACKAGE or mod.startswith(PACKAGE + "."):
                    add(mod[len(PACKAGE) + 1:], names)
            elif current is not None:
                up = package.split(".") if package else []
                up = up[: len(up) - (node.level - 1)] if node.level > 1 else up
                add(".".join([*up, *([mod] if mod else [])]), names)
    out: set[str] = set()
    for m in found:
        if _is_module(m):
            out |= {p for p in _with_parents(m) if _is_module(p)}
    return out


@lru_cache(maxsize=None)
def _module_imports(module: str) -> frozenset[str]:
    return frozenset(_imported_modules(module_file(module).read_text(encoding="utf-8"), module))


def module_closure(modules: Iterable[str] = (), scripts: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Sorted names of every package module reached from ``modules`` and the imports of ``scripts``."""
    todo = set(modules)
    for script in scripts:
        todo |= _imported_modules(Path(script).read_text(encoding="utf-8"), None)
    for m in todo:
        if not _is_module(m):
            raise ValueError(f"no module {PACKAGE}.{m} ({module_file(m)})")
    todo = set().union(*(_with_parents(m) for m in todo)) if todo else set()
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo |= _module_imports(m) - seen
    return sorted(seen)


def code_digest(modules: Iterable[str]) -> str:
    """Digest of the source of the given package modules (names as returned by :func:`module_closure`)."""
    h = _hasher()
    for m in sorted(set(modules)):
        h.update(m.encode() + b"\0" + file_digest(module_file(m)).encode() + b"\n")
    return h.hexdigest()


def library_versions(names: Iterable[str] = ("torch", "transformers", "peft", "verl")) -> dict[str, str | None]:
    """Versions of the libraries that compute a stage's numbers (part of a restart key)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = None
    return out


def params_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------ restart keys
def run_key(*, models: dict[str, str] | None = None, data: dict[str, str] | None = None,
            modules: Iterable[str] = (), params: Any = None, libraries: Iterable[str] = ()) -> dict[str, Any]:
    """The identity of a resumable run: one digest per part, and ``key`` over them all.

    ``models``/``data`` map a role (``init``, ``train``) to a path whose *content* is hashed.
    """
    parts: dict[str, Any] = {}
    for role, path in (models or {}).items():
        parts[f"model:{role}"] = tree_digest(path)
    for role, path in (data or {}).items():
        parts[f"data:{role}"] = tree_digest(path)
    parts["code"] = code_digest(modules)
    parts["params"] = params_digest(params)
    if libraries:
        parts["libraries"] = params_digest(library_versions(libraries))
    return {"key": params_digest(parts)[:32], "parts": parts}


def changed_parts(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Names of the parts whose digest differs between two run keys (for the log)."""
    if not old:
        return ["(no key recorded)"]
    a, b = old.get("parts", {}), new["parts"]
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
