"""Ablation tables: one row per ablation point, mean and std over seeds, plus reference rows.

Columns: ``ablation, variant, kind, init, beta, sft_samples, n_seeds`` then
``<metric>_mean`` and ``<metric>_std`` for every metric in METRICS. ``kind`` is ``rl`` for
GRPO runs, ``sft-only`` for the merged SFT model before RL, ``base-only`` for the base model.
Also written as a LaTeX table for the paper.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .io import atomic_file, write_text
from .runs import parse_rl, parse_sft

METRICS = [
    "mean_reward", "accuracy", "accuracy_knowable", "accuracy_unknowable", "format_rate", "sampled_format_rate",
    "proactive_rate_knowable", "proactive_rate_unknowable", "sampled_proactive_rate_knowable",
    "sampled_proactive_rate_unknowable",
]
LATEX_COLUMNS = {
    "mean_reward": "reward", "accuracy_knowable": "acc (known)", "format_rate": "format",
    "proactive_rate_knowable": "proactive (known)", "proactive_rate_unknowable": "proactive (unknown)",
}


def _metrics(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _row(ablation: str, variant: str, kind: str, model_names: list[str], metric_files: list[str]) -> dict[str, Any]:
    frame = pd.DataFrame([_metrics(f) for f in metric_files])
    first = model_names[0]
    info: dict[str, Any] = {"ablation": ablation, "variant": variant, "kind": kind, "n_seeds": len(metric_files)}
    if kind == "rl":
        p = parse_rl(first)
        info.update(init=p["init"], beta=p["beta"])
        init = p["init"]
    else:
        info.update(init=first, beta=None)
        init = first
    info["sft_samples"] = parse_sft(init)["n"] if init.startswith("sft") else 0
    for m in METRICS:
        col = pd.to_numeric(frame[m], errors="coerce") if m in frame else pd.Series([float("nan")] * len(frame))
        info[f"{m}_mean"] = float(col.mean())
        info[f"{m}_std"] = float(col.std(ddof=1)) if len(col) > 1 else float("nan")
    return info


def build_table(ablation: str, groups: list[dict[str, Any]]) -> pd.DataFrame:
    """``groups``: dicts with variant, kind, models (names) and metrics (json paths), in row order."""
    return pd.DataFrame([_row(ablation, g["variant"], g["kind"], g["models"], g["metrics"]) for g in groups])


def write_table(frame: pd.DataFrame, csv_path: str, tex_path: str | None = None) -> None:
    with atomic_file(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    if tex_path:
        write_text(tex_path, to_latex(frame))


def _fmt(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "--"
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} $\\pm$ {std:.3f}"


def to_latex(frame: pd.DataFrame) -> str:
    cols = list(LATEX_COLUMNS)
    header = " & ".join(["variant", "seeds"] + [LATEX_COLUMNS[c] for c in cols]) + r" \\"
    lines = [r"\begin{tabular}{l r " + "c " * len(cols) + "}", r"\toprule", header, r"\midrule"]
    for _, r in frame.iterrows():
        cells = [str(r["variant"]).replace("_", r"\_"), str(int(r["n_seeds"]))]
        cells += [_fmt(r[f"{c}_mean"], r[f"{c}_std"]) for c in cols]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)
