"""The workflow as a user meets it: the headline from a fresh clone, and ``snakemake -n`` after it.

``--headline`` clones this checkout (its committed state) into a temporary directory and
runs ``snakemake --cores all results/ablation_beta.csv`` there with this environment's
Snakemake, as ``make run`` does after setup: wall time and peak memory of the whole run,
and the per-stage table from the clone's ``benchmark:`` files (sft2rl.stages). Then, in
that finished clone, ``snakemake -n`` (nothing to do) as a whole process, ``--reps`` times.
Without ``--headline`` only the dry run is timed, in ``--workdir`` (default: this checkout,
which must have run the headline).

The SLURM executor plugin asks ``scontrol show config`` when Snakemake starts; where SLURM's
client tools are installed but no controller answers, that call waits up to 10 s. The
probe's own time is measured and reported next to the dry run.

    python bench/workflow.py --headline   -> bench/results/workflow.json, workflow_stages.csv
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, publish, write

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
HEADLINE = "results/ablation_beta.csv"


def timed(cmd: list[str], cwd: Path) -> tuple[float, int, subprocess.CompletedProcess]:
    """Wall seconds, peak RSS (MB) of the child tree, and the process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return dt, max(peak, before) // 1024, proc


def scontrol_probe() -> float | None:
    if not shutil.which("scontrol"):
        return None
    t0 = time.perf_counter()
    try:
        subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return time.perf_counter() - t0


def dry_run(workdir: Path, reps: int) -> dict:
    times, jobs = [], None
    for _ in range(reps):
        dt, _, proc = timed([SNAKEMAKE, "-n", HEADLINE], workdir)
        if proc.returncode != 0:
            raise SystemExit(f"snakemake -n failed in {workdir}:\n{proc.stderr[-2000:]}")
        times.append(dt)
        jobs = "Nothing to be done" in proc.stdout + proc.stderr
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times,
            "nothing_to_do": jobs, "scontrol_probe_s": scontrol_probe()}


def main(argv=None) -> int:
    from sft2rl.stages import collect, markdown, summarize

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--headline", action="store_true", help="run the headline in a fresh clone first")
    ap.add_argument("--workdir", default=str(REPO))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", help="keep the clone here instead of a temporary directory")
    a = ap.parse_args(argv)
    payload: dict = {"what": "headline from a fresh clone; snakemake -n on the finished workflow"}
    tmp = None
    work = Path(a.workdir)
    if a.headline:
        tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="sft2rl-headline-"))
        work = tmp / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
        print(f"headline in {work} (commit {commit[:10]}) ...", flush=True)
        dt, peak, proc = timed([SNAKEMAKE, "--cores", "all", HEADLINE], work)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return 1
        stages = summarize(collect(work / "results/benchmarks"))
        payload["headline"] = {"seconds": dt, "peak_rss_mb_largest_job": peak, "commit": commit,
                               "stages": stages, "stages_markdown": markdown(stages)}
        write("workflow_stages", {"stages": stages}, stages)
        print(f"headline: {dt:.0f} s")
        print(markdown(stages))
    payload["dry_run"] = dry_run(work, a.reps)
    rows = [{"measure": "snakemake -n (whole process, median)", "seconds": payload["dry_run"]["median_s"]}]
    if payload["dry_run"]["scontrol_probe_s"] is not None:
        rows.append({"measure": "  of which could be the SLURM plugin's scontrol probe",
                     "seconds": payload["dry_run"]["scontrol_probe_s"]})
    if a.headline:
        rows.insert(0, {"measure": "headline from a fresh clone", "seconds": payload["headline"]["seconds"]})
    publish("workflow", payload, rows)
    if tmp is not None and not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
