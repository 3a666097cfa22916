"""Atomic file and directory writes, and jsonl/parquet reading with clear errors.

Every rule writes through these helpers: output goes to a temporary sibling first and
is renamed into place only when complete, so an interrupted job never leaves a file
or model directory that looks finished.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from .errors import DataError  # noqa: F401  (re-exported: io.DataError)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success (with the
    permissions a plain ``open`` would give: mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _stale_siblings(path: Path) -> list[Path]:
    """What a killed :func:`atomic_dir` of ``path`` left beside it: its temporary directory
    (``.<name>.<8 random characters>.tmp``) or the previous run's copy (``.<name>.old-<pid>``).
    Only that target's names match (``.<name>.x.<random>.tmp`` belongs to another target)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:[a-z0-9_]{{8}}\.tmp|old-\d+)")
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)] if path.parent.is_dir() else []


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; swap it in on success.

    An existing ``path`` (a previous run) is replaced only once the new one is complete. What a
    killed earlier write of ``path`` left beside it (a whole model, for a model directory) is
    removed first (:func:`_stale_siblings`).
    """
    path = Path(path)
    for stale in _stale_siblings(path):
        shutil.rmtree(stale, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's are owner-only
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_parquet(path: str | os.PathLike, rows: list[dict] | pd.DataFrame) -> None:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_parquet_records(path: str | os.PathLike, records: Iterable[dict], batch_size: int = 50_000) -> int:
    """Write dict records to parquet through Arrow, ``batch_size`` Python dicts at a time (a
    million rows never exist as Python objects at once); returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, batch = [], []
    for rec in records:
        batch.append(rec)
        if len(batch) == batch_size:
            tables.append(pa.Table.from_pylist(batch))
            batch = []
    if batch or not tables:
        tables.append(pa.Table.from_pylist(batch))
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


UTF8_BOM = b"\xef\xbb\xbf"


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """All ``(line_number, object)`` pairs of a jsonl file (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` pairs of a jsonl file, one line at a time; blank lines
    are skipped.

    Lines are read as bytes and decoded as UTF-8 one by one: a UTF-8 byte-order mark at the
    start (what Excel and Windows editors write) is skipped, CRLF line ends and a last line
    without a newline are fine. Raises DataError naming the file, line and column for a
    missing or empty file, bytes that are not UTF-8 (e.g. Latin-1), a UTF-16 file, a NUL
    byte, malformed JSON, or a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    found = False
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise DataError(path, 1, None, "the file is UTF-16 (byte-order mark FF FE or FE FF); save it as UTF-8")
                if raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(raw[:exc.start].decode("utf-8", errors="replace")) + 1
                raise DataError(path, lineno, None, f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {column} "
                                                    f"(a Latin-1 or Windows-1252 file? save it as UTF-8)") from None
            if "\x00" in line:
                raise DataError(path, lineno, None, f"NUL byte at column {line.index(chr(0)) + 1}")
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))  # columns count within the line
            except json.JSONDecodeError as exc:
                raise DataError(path, lineno, None, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(path, lineno, None, f"expected a JSON object, got {type(obj).__name__}")
            found = True
            yield lineno, obj
    if not found:
        raise DataError(path, None, None, "file is empty (no JSON rows)")


def read_rows(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """All ``(row_number, object)`` pairs of a jsonl or a parquet file (see :func:`iter_rows`)."""
    return list(iter_rows(path))


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(row_number, object)`` pairs of a jsonl or a parquet file (chosen by extension; row
    numbers are 1-based, the line number for jsonl), with DataErrors naming the file; jsonl
    is streamed line by line."""
    path = Path(path)
    if path.suffix.lower() != ".parquet":  # data.parquet and DATA.PARQUET alike
        yield from iter_jsonl(path)
        return
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    try:
        rows = list(enumerate(read_parquet_rows(path), start=1))
    except Exception as exc:  # pyarrow's errors: not a parquet file, truncated, ...
        raise DataError(path, None, None, f"not a readable parquet file ({type(exc).__name__}: {exc})") from None
    if not rows:
        raise DataError(path, None, None, "no rows")
    yield from rows


def read_parquet_rows(path: str | os.PathLike) -> list[dict]:
    """Read a parquet file into a list of plain-Python dicts (nested lists/structs kept)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
