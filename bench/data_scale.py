"""Raw data at scale: processing a 1,000,000-row RL jsonl and a 100,000-conversation SFT jsonl.

Generates the two files (not committed: a temporary directory), then runs the workflow's own
processing functions on them, each in a fresh process, and measures wall time and peak
resident memory (``resource.getrusage`` of the child). A third run puts a malformed line at
row 999,999 of the RL file and checks that the error names that line.

    python bench/data_scale.py --rl-rows 1000000 --sft-rows 100000
    -> bench/results/data_scale.json and a printed table

Goal (issue "Reliability"): each step <= 60 s and <= 2 GB on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {src!r})
from sft2rl.errors import DataError
from sft2rl.tasks.qa.data import process_rl, process_sft
kind, raw, out = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
error = None
try:
    if kind == "rl":
        counts = process_rl(raw, out + "/train.parquet", out + "/test.parquet", system_prompt="S",
                            data_source="bench", train_fraction=0.95, seed=42)
    else:
        counts = process_sft(raw, out + "/train.jsonl", out + "/train.parquet", out + "/val.parquet", n=50000,
                             seed=42, val_size=1000, with_thinking=False)
except DataError as exc:
    counts, error = None, str(exc)
seconds = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_mb": peak_mb, "counts": counts, "error": error}}))
"""


def write_rl(path: Path, n: int, bad_line: int | None = None) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            if bad_line is not None and i + 1 == bad_line:
                fh.write('{"id": %d, "messages": [\n' % i)
                continue
            fh.write(json.dumps({"id": i, "messages": [
                {"role": "user", "content": f"What is the capital of country number {i}?"},
                {"role": "assistant", "content": f"City {i}"}],
                "answer": {"knowable": i % 2 == 0, "kind": "capital"}, "sub_category": "geo"}) + "\n")


def write_sft(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "messages": [
                {"role": "system", "content": "You are a helpful proactive assistant."},
                {"role": "user", "content": f"What is the capital of country number {i}? Please think first."},
                {"role": "assistant", "content": f"<think>Country {i} is one I know.</think>\nThe capital is City {i}."},
            ]}) + "\n")


def run(kind: str, raw: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    code = CHILD.format(src=str(REPO / "src"))
    proc = subprocess.run([sys.executable, "-c", code, kind, str(raw), str(out)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rl-rows", type=int, default=1_000_000)
    ap.add_argument("--sft-rows", type=int, default=100_000)
    ap.add_argument("--out", default=str(REPO / "bench/results/data_scale.json"))
    args = ap.parse_args()
    results = {"machine": platform.platform(), "python": platform.python_version(), "cpus": _cpus(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_rl(tmp / "rl.jsonl", args.rl_rows)
        write_sft(tmp / "sft.jsonl", args.sft_rows)
        bad = args.rl_rows - 1
        write_rl(tmp / "rl_bad.jsonl", args.rl_rows, bad_line=bad)
        print(f"generated in {time.perf_counter() - t:.1f} s", flush=True)
        for name, kind, raw in (("rl", "rl", tmp / "rl.jsonl"), ("sft", "sft", tmp / "sft.jsonl"),
                                ("rl_bad_line", "rl", tmp / "rl_bad.jsonl")):
            r = run(kind, raw, tmp / f"out_{name}")
            r.update(name=name, rows=args.rl_rows if kind == "rl" else args.sft_rows,
                     file_mb=raw.stat().st_size / 2**20)
            if name == "rl_bad_line":
                r["bad_line"] = bad
                r["error_names_line"] = bool(r["error"]) and f":{bad}:" in r["error"]
            results["runs"].append(r)
            print(f"{name:12s} rows {r['rows']:>9,d}  file {r['file_mb']:7.1f} MB  {r['seconds']:6.1f} s  "
                  f"peak {r['peak_mb']:7.0f} MB  {r['error'] or r['counts']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
