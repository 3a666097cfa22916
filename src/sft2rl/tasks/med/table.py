"""The medical tables (results/med/eval.csv, results/med/ablation_thinking.csv), their LaTeX
versions and the figure.

``eval.csv``: one row per doctor and category ("all" first): the base model, the SFT runs of
the first seed (with and without thinking), the scripted doctor and the random-question
doctor. ``ablation_thinking.csv``: per ``with_thinking`` value, the mean and the sample
standard deviation over the training seeds of each metric (all cases), and a row
``think - nothink``: the mean and standard deviation of the per-seed differences (paired by
seed).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...io import atomic_file, write_text

METRICS = ["accuracy", "diag_rougeL", "rec_rougeL", "diag_bleu1", "diag_bleu2", "rec_bleu1", "rec_bleu4", "turns",
           "repeated_question_rate", "invalid_format_rate", "ir_precision", "diagnosed_rate"]
COLUMNS = ["doctor", "label", "with_thinking", "seed", "category", "cases", "accuracy", "accuracy_lo", "accuracy_hi",
           *METRICS[1:]]


def label(doctor: str, runs: dict[str, dict[str, Any]]) -> str:
    if doctor in runs:
        return "SFT, with thinking" if runs[doctor]["with_thinking"] else "SFT, without thinking"
    return {"base": "base model", "scripted": "scripted doctor", "random": "random-question doctor"}.get(doctor, doctor)


def _read(path: str) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())


def eval_frame(summaries: list[str], doctors: list[str], runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    by_doctor = {rows[0]["doctor"]: rows for rows in map(_read, summaries)}
    out = []
    for d in doctors:
        for row in by_doctor[d]:
            run = runs.get(d, {})
            out.append({**row, "label": label(d, runs), "with_thinking": run.get("with_thinking"),
                        "seed": run.get("seed")})
    return pd.DataFrame(out)[COLUMNS]


def ablation_frame(summaries: list[str], runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    alls = {rows[0]["doctor"]: rows[0] for rows in map(_read, summaries)}
    by_value: dict[bool, dict[int, dict[str, Any]]] = {}
    for run, info in runs.items():
        by_value.setdefault(info["with_thinking"], {})[info["seed"]] = alls[run]
    out = []

    def row(name: str, per_seed: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
        r: dict[str, Any] = {"with_thinking": name, "seeds": " ".join(map(str, seeds)), "n_seeds": len(seeds)}
        for m in METRICS:
            vals = np.array([p[m] for p in per_seed], dtype=float)
            r[f"{m}_mean"] = float(np.mean(vals))
            r[f"{m}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
        return r

    for value in sorted(by_value, reverse=True):
        seeds = sorted(by_value[value])
        out.append(row(str(value).lower(), [by_value[value][s] for s in seeds], seeds))
    if set(by_value) == {True, False}:
        seeds = sorted(set(by_value[True]) & set(by_value[False]))
        diffs = [{m: by_value[True][s][m] - by_value[False][s][m] for m in METRICS} for s in seeds]
        out.append(row("think - nothink", diffs, seeds))
    return pd.DataFrame(out)


def _fmt(x: Any) -> str:
    return "--" if x is None or pd.isna(x) else f"{x:.2f}"


def eval_latex(frame: pd.DataFrame) -> str:
    lines = [r"\begin{tabular}{lrrrrrrrr}", r"\toprule",
             r"doctor & cases & accuracy [95\% CI] & diag. R-L & rec. R-L & turns & repeated q. & bad format & "
             r"info. prec. \\", r"\midrule"]
    for _, r in frame[frame["category"] == "all"].iterrows():
        lines.append(f"{r.label} & {r.cases} & {_fmt(r.accuracy)} [{_fmt(r.accuracy_lo)}, {_fmt(r.accuracy_hi)}] & "
                     f"{_fmt(r.diag_rougeL)} & {_fmt(r.rec_rougeL)} & {_fmt(r.turns)} & "
                     f"{_fmt(r.repeated_question_rate)} & {_fmt(r.invalid_format_rate)} & {_fmt(r.ir_precision)} \\\\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def ablation_latex(frame: pd.DataFrame) -> str:
    shown = ["accuracy", "diag_rougeL", "rec_rougeL", "turns", "invalid_format_rate"]
    lines = [r"\begin{tabular}{lr" + "r" * len(shown) + "}", r"\toprule",
             r"with thinking & seeds & accuracy & diag. R-L & rec. R-L & turns & bad format \\", r"\midrule"]
    for _, r in frame.iterrows():
        cells = [f"{_fmt(r[f'{m}_mean'])} $\\pm$ {_fmt(r[f'{m}_std'])}" for m in shown]
        lines.append(f"{r.with_thinking} & {r.n_seeds} & " + " & ".join(cells) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def write_tables(summaries: list[str], doctors: list[str], runs: dict[str, dict[str, Any]], out) -> tuple:
    frame = eval_frame(summaries, doctors, runs)
    ablation = ablation_frame(summaries, runs)
    for df, path in ((frame, out.eval), (ablation, out.ablation)):
        with atomic_file(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    write_text(out.tex, eval_latex(frame))
    write_text(out.ablation_tex, ablation_latex(ablation))
    return frame, ablation


def figure(eval_csv: str, ablation_csv: str, outputs: list[str]) -> list[str]:
    """Left: diagnosis accuracy (95% CI) and diagnosis ROUGE-L per doctor. Right: accuracy per
    with_thinking value, mean +- std over seeds."""
    from ...plots import _figure, save_figure

    frame = pd.read_csv(eval_csv)
    frame = frame[frame["category"] == "all"].reset_index(drop=True)
    ablation = pd.read_csv(ablation_csv)
    ablation = ablation[ablation["with_thinking"].isin(["true", "false"])].reset_index(drop=True)
    fig, axes = _figure(1, 2, figsize=(9.5, 3.4))
    ax = axes[0][0]
    x = np.arange(len(frame))
    acc = frame["accuracy"].fillna(0)
    err = [(frame["accuracy"] - frame["accuracy_lo"]).fillna(0), (frame["accuracy_hi"] - frame["accuracy"]).fillna(0)]
    ax.bar(x - 0.2, acc, 0.4, yerr=err, capsize=3, label="diagnosis accuracy (95% CI)", color="C0")
    ax.bar(x + 0.2, frame["diag_rougeL"], 0.4, label="diagnosis ROUGE-L", color="C1")
    ax.set_xticks(x, [lbl.replace(", ", ",\n").replace(" doctor", "\ndoctor") for lbl in frame["label"]], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("held-out consultations")
    ax = axes[0][1]
    ax.bar(range(len(ablation)), ablation["accuracy_mean"], yerr=ablation["accuracy_std"].fillna(0), capsize=3,
           color=["C2", "C3"][: len(ablation)])
    ax.set_xticks(range(len(ablation)), [f"with_thinking\n{v}" for v in ablation["with_thinking"]], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("diagnosis accuracy\n(mean ± std over seeds)")
    ax.set_title("thinking ablation")
    stems = {str(Path(o).with_suffix("")) for o in outputs}
    return [path for stem in sorted(stems) for path in save_figure(fig, stem)]
