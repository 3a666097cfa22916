"""Time and peak memory per pipeline stage, from Snakemake's ``benchmark:`` files.

Every compute rule writes ``results/benchmarks/<stage>/<job>.tsv`` (or ``<stage>.tsv`` for
a one-job stage; the games' and the medical task's under ``games/`` and ``med/``).
:func:`collect` reads them into one row per job, :func:`summarize` into one row per stage
(jobs, summed and longest wall time, CPU time, peak resident memory), :func:`markdown`
renders that table for the README and the report. Snakemake samples a job's CPU time
while it runs, so it undercounts short jobs: the CSV keeps it, the Markdown table shows
wall time and peak memory only.
"""
from __future__ import annotations

import csv
from pathlib import Path

#: Snakemake's benchmark columns we keep: wall seconds, peak RSS (MB), CPU seconds.
COLUMNS = {"s": "seconds", "max_rss": "max_rss_mb", "cpu_time": "cpu_seconds"}
TASK_DIRS = ("games", "med")


#: Stage names with an underscore, in the one-level file names of the task folders.
COMPOUND = ("base_model", "user_rows")


def _stage_and_job(rel: Path) -> tuple[str, str]:
    parts = list(rel.with_suffix("").parts)
    prefix = ""
    if parts[0] in TASK_DIRS and len(parts) > 1:
        prefix = parts.pop(0) + "/"
    if len(parts) > 1:
        return prefix + parts[0], "/".join(parts[1:])
    name = parts[0]
    if not prefix:
        return name, ""
    # games/sft-sokoban-seed1, med/eval_base, games/user_rows_sokoban: the stage, then the job
    for stage in COMPOUND:
        if name == stage or name.startswith(stage + "_"):
            return prefix + stage, name[len(stage) + 1:]
    cut = min((i for i in (name.find("-"), name.find("_")) if i > 0), default=len(name))
    return prefix + name[:cut], name[cut + 1:]


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # Snakemake writes "-" where it could not measure


def collect(bench_dir: str | Path) -> list[dict]:
    """One row per benchmark file: stage, job, seconds, max_rss_mb, cpu_seconds (the last repeat)."""
    root = Path(bench_dir)
    rows = []
    for path in sorted(root.rglob("*.tsv")):
        with open(path, newline="") as f:
            records = list(csv.DictReader(f, delimiter="\t"))
        if not records:
            continue
        rec = records[-1]
        stage, job = _stage_and_job(path.relative_to(root))
        rows.append({"stage": stage, "job": job, **{out: _number(rec.get(col)) for col, out in COLUMNS.items()}})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """One row per stage, in order of first appearance of the stage in ``ORDER`` then by name."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["stage"], []).append(r)
    out = []
    for stage in sorted(by, key=_order):
        rs = by[stage]
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        rss = [r["max_rss_mb"] for r in rs if r["max_rss_mb"] is not None]
        cpu = [r["cpu_seconds"] for r in rs if r["cpu_seconds"] is not None]
        out.append({"stage": stage, "jobs": len(rs), "total_s": round(sum(secs), 1),
                    "max_job_s": round(max(secs), 1) if secs else None,
                    "cpu_s": round(sum(cpu), 1) if cpu else None,
                    "peak_rss_mb": round(max(rss)) if rss else None})
    return out


#: The QA pipeline's stages in the order they run; anything else follows by name.
ORDER = ("world", "rl_data", "sft_data", "base_model", "sft", "merge", "grpo", "export", "eval", "samples",
         "tables", "figures", "paper")


def _order(stage: str) -> tuple[int, str]:
    head = stage.split("/")[0]
    if head in TASK_DIRS:
        return (len(ORDER) + TASK_DIRS.index(head), stage)
    return (ORDER.index(head) if head in ORDER else len(ORDER) - 1, stage)


def write_csv(rows: list[dict], path: str | Path) -> None:
    from .io import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["stage"])
        w.writeheader()
        w.writerows(rows)


def markdown(summary: list[dict]) -> str:
    """The per-stage table as Markdown (README, report)."""
    head = "| stage | jobs | wall time, all jobs (s) | longest job (s) | peak memory (MB) |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    fmt = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
    for r in summary:
        lines.append(f"| {r['stage']} | {r['jobs']} | {fmt(r['total_s'])} | {fmt(r['max_job_s'])} | "
                     f"{fmt(r['peak_rss_mb'])} |")
    return "\n".join(lines) + "\n"
