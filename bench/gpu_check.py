"""The GPU check of the local backend: the reduced workflow's GRPO runs and the rollout bench
on whatever device torch finds (a CUDA GPU: bf16 where it has it), in one command.

From a fresh copy of this tree (nothing built), it runs:

1. the real workflow (``snakemake``) on the reduced config ``tests/config/reduced.yaml`` with
   ``bench/gpu_check.yaml`` over it (bf16 autocast in pretraining and SFT where the device has
   it; GRPO uses it there by default): the tiny QA base, its SFT model and the reduced QA
   GRPO; the games' tiny base, the FrozenLake SFT model and the reduced multi-turn FrozenLake
   GRPO. Every model is built there, from nothing;
2. ``bench/rollout.py`` on the QA SFT model and RL prompts at the GRPO batch shape: the lean
   engine against ``model.generate`` in tokens/s (weights in ``--dtype``), with its exactness;
3. one JSON (``--out``/gpu_check.json, beside the rollout bench's gpu_check_rollout.json/.csv): the device and library versions; per GRPO run its
   precision, steps, median step time, rollout tokens/s, the engine's log-prob gap (the
   largest |rollout log-prob - trainer log-prob| of a sampled token over the steps, the
   figure verl logs as ``training/rollout_probs_diff_max``), reward first and last; the
   workflow's wall time per job; the rollout bench's table and exactness. The logs of a job
   that failed are copied there too.

    python bench/gpu_check.py --out DIR [--work DIR] [--cores 8] [--dtype bf16]

On a device machine that has torch, transformers and peft but not this project's other
packages, install those first from wheels built here (``make gpu-wheels``, which fills
``.whl/``; carry it along), e.g.::

    python3 -m pip install -q --no-index --find-links .whl -r bench/gpu_requirements.txt
    PYTHONPATH=src python3 bench/gpu_check.py --out "$OUT"

Without a GPU it runs the same on the CPU (fp32), which is how it is tested.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO

#: The GRPO runs the reduced config builds: name -> the run's summary.json.
RUNS = {
    "qa_grpo": "results/rl/rl-sft16_seed42-beta0.3-seed1/summary.json",
    "frozenlake_grpo": "results/games/rl/rl-frozenlake-seed1/summary.json",
}
QA_SFT_MODEL = "results/models/sft16_seed42/merged"
QA_RL_DATA = "data/processed/rl/train.parquet"
#: Not copied into the fresh tree: what is built, caches, the carried wheels.
SKIP = {".git", ".venv", ".snakemake", "results", ".whl", ".pytest_cache", ".hypothesis", "__pycache__"}


def fresh_tree(work: Path) -> None:
    """A copy of this tree with nothing built (``results/``, ``data/processed`` left out)."""
    if work.exists():
        shutil.rmtree(work)

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in SKIP or n.endswith(".egg-info")}
        if Path(directory).resolve() == (REPO / "data").resolve():
            skip.add("processed")
        return skip

    shutil.copytree(REPO, work, ignore=ignore, symlinks=True)


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": cuda,
           "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
           "bf16": bool(cuda and torch.cuda.is_bf16_supported())}
    for lib in ("transformers", "peft", "snakemake"):
        try:
            out[lib] = __import__(lib).__version__
        except Exception as exc:  # reported, not fatal: the workflow step says what is missing
            out[lib] = f"not importable: {exc}"
    return out


def run_summary(path: Path) -> dict:
    """The figures of one GRPO run from its summary.json (the per-step history the trainer
    also writes to TensorBoard)."""
    s = json.loads(path.read_text())
    hist = [h for h in s.get("history", []) if "step_seconds" in h]
    timed = [h["step_seconds"] for h in hist[1:]] or [h["step_seconds"] for h in hist]  # the first warms up
    return {"precision": s.get("precision"), "train_mode": s.get("train_mode"), "steps": s.get("steps"),
            "seconds": s.get("seconds"), "median_step_s": statistics.median(timed) if timed else None,
            "tokens_per_s_median": statistics.median([h["tokens_per_s"] for h in hist]) if hist else None,
            "rollout_logprob_diff_max": max((h.get("rollout_logprob_diff_max", 0.0) for h in hist), default=None),
            "reward_first": hist[0].get("reward_mean") if hist else None,
            "reward_last": hist[-1].get("reward_mean") if hist else None,
            "val_success_last": (s.get("last") or {}).get("val_success")}


def job_times(work: Path) -> dict[str, float]:
    """Seconds of wall time per workflow job (Snakemake's benchmark files)."""
    out = {}
    for f in sorted((work / "results/benchmarks").rglob("*.tsv")):
        rows = list(csv.DictReader(f.open(), delimiter="\t"))
        if rows:
            out[str(f.relative_to(work / "results/benchmarks"))] = float(rows[-1]["s"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json (and the logs of a failed job)")
    ap.add_argument("--work", default=None, help="where the fresh tree is built (default: a temporary folder)")
    ap.add_argument("--cores", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                    help="the rollout bench's weights (default: bf16 on a GPU with bf16, else fp32)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else Path(os.environ.get("TMPDIR", "/tmp")) / "sft2rl-gpu-check"
    env = environment()
    report: dict = {"what": "GPU check of the local backend (reduced workflow + rollout bench)", "environment": env}
    t0 = time.perf_counter()
    fresh_tree(work)
    pythonpath = os.pathsep.join(p for p in (str(work / "src"), os.environ.get("PYTHONPATH", "")) if p)
    child_env = dict(os.environ, PYTHONPATH=pythonpath)
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(a.cores), "--configfile",
           "tests/config/reduced.yaml", "bench/gpu_check.yaml", "--", *RUNS.values()]
    proc = subprocess.run(cmd, cwd=work, env=child_env, capture_output=True, text=True, errors="replace")
    report["workflow"] = {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
                          "seconds": time.perf_counter() - t0, "job_seconds": job_times(work)}
    if proc.returncode != 0:
        (out / "workflow.log").write_text(proc.stdout[-200_000:] + proc.stderr[-200_000:])
        failed = [log for log in sorted((work / "results/logs").rglob("*.log"))
                  if "Error" in log.read_text(errors="replace")] if (work / "results/logs").is_dir() else []
        for log in failed[:4]:  # a device machine returns a few files only
            shutil.copy(log, out / log.name)
    report["runs"] = {name: run_summary(work / path) for name, path in RUNS.items() if (work / path).is_file()}

    dtype = a.dtype or ("bf16" if env["bf16"] else "fp32")
    device = "cuda" if env["cuda"] else "cpu"
    if (work / QA_SFT_MODEL).is_dir():
        bench = subprocess.run([sys.executable, str(work / "bench/rollout.py"), "--model", str(work / QA_SFT_MODEL),
                                "--data", str(work / QA_RL_DATA), "--device", device, "--dtype", dtype,
                                "--reps", "5", "--out", "gpu_check_rollout"],
                               cwd=work, env=dict(child_env, SFT2RL_BENCH_RESULTS=str(out)),
                               capture_output=True, text=True, errors="replace")
        got = out / "gpu_check_rollout.json"
        report["rollout_bench"] = (json.loads(got.read_text()) if bench.returncode == 0 and got.is_file()
                                   else {"returncode": bench.returncode, "output": bench.stdout[-5000:] + bench.stderr[-5000:]})
    report["seconds"] = time.perf_counter() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps({"environment": env, "runs": report["runs"],
                      "rollout": [{k: r[k] for k in ("engine", "tokens_per_s", "speedup_vs_generate")}
                                  for r in report.get("rollout_bench", {}).get("table", [])],
                      "exactness": report.get("rollout_bench", {}).get("exactness"),
                      "seconds": round(report["seconds"], 1)}, indent=1, default=str))
    ok = proc.returncode == 0 and len(report["runs"]) == len(RUNS) and "table" in report.get("rollout_bench", {})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
