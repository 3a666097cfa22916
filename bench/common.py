"""Shared pieces of the bench/ scripts: interleaved timing, the CPU's matmul rate, output.

Absolute times on a shared machine move by +-50%, so every comparison is made in one
process, with the contenders' repetitions interleaved (A B C A B C ...), and reported as
the median with its spread (min-max); ratios are ratios of medians.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("SFT2RL_BENCH_RESULTS") or REPO / "bench" / "results")
sys.path.insert(0, str(REPO / "src"))


def machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}


def interleaved(contenders: dict[str, Callable[[], float | None]], reps: int, warmup: int = 1) -> dict[str, dict]:
    """Run each contender ``warmup + reps`` times, round-robin. A contender returns the seconds
    to count (or None: its own wall time is taken). Returns median, min, max and all times."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(warmup + reps):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            got = fn()
            dt = time.perf_counter() - t0 if got is None else got
            if r >= warmup:
                times[name].append(dt)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "reps": len(v), "times_s": v}
            for k, v in times.items()}


def matmul_gflops(threads: int, n: int = 1024, reps: int = 20) -> float:
    """The CPU's measured fp32 matmul rate with ``threads`` threads (the FLOP bound we compare to)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(old)
    return 2 * n ** 3 / best / 1e9


def write(name: str, payload: dict, rows: list[dict] | None = None) -> Path:
    """``bench/results/<name>.json`` (everything) and ``<name>.csv`` (the table rows)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    if rows:
        with open(RESULTS / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return out


def publish(name: str, payload: dict, rows: list[dict]) -> Path:
    """Write ``bench/results/<name>.{json,csv}`` (the machine and the table added to the JSON)
    and print the table."""
    path = write(name, {**payload, "table": rows, "machine": machine()}, rows)
    print_table(rows)
    print("->", path)
    return path


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def tiny_model(vocab: int = 1024, hidden: int = 128, layers: int = 4, seed: int = 0):
    """A randomly initialised model of the embedded default's shape, with a tokenizer trained on
    a few sentences (for runs that have no built base model: CI's reduced bench)."""
    import torch

    from sft2rl.model import build_tiny_model, build_tokenizer

    torch.manual_seed(seed)
    texts = [f"What is {a} plus {b}? The answer is {a + b}. The capital of Land{a} is City{b}."
             for a in range(1, 10) for b in range(1, 10)]
    tok = build_tokenizer(texts, vocab)
    arch = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_layers=layers, num_heads=4, num_kv_heads=2,
                max_position_embeddings=512)
    model = build_tiny_model(tok, arch).eval()
    with torch.no_grad():  # some rows stop early, as a trained policy's do
        model.get_input_embeddings().weight[tok.eos_token_id] *= 8
    return model, tok
