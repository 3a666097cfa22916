"""The medical tables (results/med/eval.csv, results/med/ablation_thinking.csv), their LaTeX
versions and the figure.

``eval.csv``: one row per doctor and category ("all" first): the base model, the SFT runs of
the first seed (with and without thinking), the scripted doctor and the random-question
doctor. ``ablation_thinking.csv``: per ``with_thinking`` value, the mean and the sample
standard deviation over the training seeds of each metric (all cases) with a bootstrap
interval (``eval.ci_level``), and a row ``think - nothink``: the mean and standard deviation of the per-seed
differences and the *paired* bootstrap interval of the difference.

Intervals (:func:`paired_bootstrap`, the scheme of :func:`sft2rl.stats.bootstrap_row`):
percentile bootstrap, hierarchical: each draw resamples the seeds (a drawn seed brings both
its runs, with and without thinking: paired by seed) and then the held-out cases (one
resample shared by every seed and both variants: paired by case); a variant's value is the
mean over the drawn seeds. Every metric with an interval is a ratio of per-case sums
(accuracy = correct / cases, ``ir_precision`` = answered / patient replies, ...), so a
resample is a few sums. Corpus BLEU has no per-case decomposition: mean and std only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...io import atomic_file, write_text
from ...stats import ci_label

METRICS = ["accuracy", "diag_rougeL", "rec_rougeL", "diag_bleu1", "diag_bleu2", "rec_bleu1", "rec_bleu4", "turns",
           "repeated_question_rate", "invalid_format_rate", "ir_precision", "diagnosed_rate"]
COLUMNS = ["doctor", "label", "with_thinking", "seed", "category", "cases", "accuracy", "accuracy_lo", "accuracy_hi",
           *METRICS[1:]]
#: metrics with a bootstrap interval, as (per-case numerator, per-case denominator) of a consultation record
RATIO_METRICS = {
    "accuracy": ("correct", "one"), "diag_rougeL": ("diag_rougeL", "one"), "rec_rougeL": ("rec_rougeL", "one"),
    "turns": ("turns", "one"), "repeated_question_rate": ("repeated", "questions"),
    "invalid_format_rate": ("invalid", "turns"), "ir_precision": ("answered", "patient_replies"),
    "diagnosed_rate": ("diagnosed", "one"),
}


def label(doctor: str, runs: dict[str, dict[str, Any]]) -> str:
    if doctor in runs:
        return "SFT, with thinking" if runs[doctor]["with_thinking"] else "SFT, without thinking"
    return {"base": "base model", "scripted": "scripted doctor", "random": "random-question doctor"}.get(doctor, doctor)


def _read(path: str) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def eval_frame(summaries: list[str], doctors: list[str], runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    by_doctor = {rows[0]["doctor"]: rows for rows in map(_read, summaries)}
    out = []
    for d in doctors:
        for row in by_doctor[d]:
            run = runs.get(d, {})
            out.append({**row, "label": label(d, runs), "with_thinking": run.get("with_thinking"),
                        "seed": run.get("seed")})
    return pd.DataFrame(out)[COLUMNS]


def correct_value(record: dict[str, Any]) -> float:
    """A consultation's ``correct`` as 1.0 / 0.0, or NaN where exact match is undefined (None:
    cases without exact disease names), so accuracy columns stay empty instead of reading 0."""
    return float("nan") if record["correct"] is None else float(bool(record["correct"]))


def case_arrays(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-case numerators and denominators of :data:`RATIO_METRICS`, in case-id order."""
    from .consult import rouge_l

    recs = sorted(records, key=lambda r: str(r["case"]))
    a = {"case": np.array([str(r["case"]) for r in recs]), "one": np.ones(len(recs))}
    for k in ("turns", "repeated", "questions", "invalid", "patient_replies"):
        a[k] = np.array([float(r[k]) for r in recs])
    a["correct"] = np.array([correct_value(r) for r in recs])  # NaN without exact names: accuracy stays empty
    a["diagnosed"] = np.array([float(r["diagnosed"]) for r in recs])
    a["answered"] = np.array([float(r["patient_replies"] - r["sorry"]) for r in recs])
    a["diag_rougeL"] = np.array(rouge_l([r["diagnosis"] for r in recs], [r["truth_diagnosis"] for r in recs]))
    a["rec_rougeL"] = np.array(rouge_l([r["recommendation"] for r in recs], [r["truth_recommendation"] for r in recs]))
    return a


def _ratio(a: dict[str, np.ndarray], metric: str, idx: np.ndarray) -> np.ndarray:
    """The metric on each resample (rows of ``idx``); NaN where the denominator is 0."""
    num, den = RATIO_METRICS[metric]
    n, d = a[num][idx].sum(axis=-1), a[den][idx].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)


def paired_bootstrap(think: list[dict[str, np.ndarray]], nothink: list[dict[str, np.ndarray]], *,
                     n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Bootstrap intervals of each variant and of think - nothink; ``think[i]`` and
    ``nothink[i]`` are the case arrays of the same seed. Returns {"true"|"false"|"diff":
    {<metric>_ci_low, <metric>_ci_high}}."""
    if len(think) != len(nothink):
        raise ValueError("the thinking ablation needs both variants for every seed")
    cases = think[0]["case"]
    for a in think + nothink:
        if not np.array_equal(a["case"], cases):
            raise ValueError("the runs of the thinking ablation must consult the same held-out cases")
    rng = np.random.default_rng(seed)
    n_q, n_s = len(cases), len(think)
    q_idx = rng.integers(0, n_q, size=(n_boot, n_q))
    s_idx = rng.integers(0, n_s, size=(n_boot, n_s)) if n_s > 1 else np.zeros((n_boot, 1), dtype=int)
    alpha = (1 - level) / 2
    out: dict[str, dict[str, float]] = {"true": {}, "false": {}, "diff": {}}

    def interval(draws: np.ndarray) -> tuple[float, float]:
        if np.isnan(draws).mean() > 0.05:  # undefined in more than 5% of the draws (an empty denominator)
            return float("nan"), float("nan")
        lo, hi = np.nanquantile(draws, [alpha, 1 - alpha])
        return float(lo), float(hi)

    for m in RATIO_METRICS:
        per = {}
        for name, arrays in (("true", think), ("false", nothink)):
            stacked = np.stack([_ratio(a, m, q_idx) for a in arrays])  # (S, B)
            per[name] = stacked[s_idx.T, np.arange(n_boot)].mean(axis=0)  # mean over the drawn seeds
        for name, draws in (("true", per["true"]), ("false", per["false"]), ("diff", per["true"] - per["false"])):
            out[name][f"{m}_ci_low"], out[name][f"{m}_ci_high"] = interval(draws)
    return out


#: the random-question doctor's name among the evaluated doctors
RANDOM = "random"


def ablation_frame(summaries: list[str], runs: dict[str, dict[str, Any]], consultations: list[str] | None = None,
                   bootstrap: dict[str, Any] | None = None) -> pd.DataFrame:
    """The thinking ablation: each variant over seeds, ``think - nothink``, and the random-question
    doctor where it was evaluated (a row "random doctor": one run, its interval a bootstrap over
    the same cases)."""
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
            r[f"{m}_ci_low"] = r[f"{m}_ci_high"] = float("nan")
        return r

    for value in sorted(by_value, reverse=True):
        seeds = sorted(by_value[value])
        out.append(row(str(value).lower(), [by_value[value][s] for s in seeds], seeds))
    if set(by_value) == {True, False}:
        seeds = sorted(set(by_value[True]) & set(by_value[False]))
        diffs = [{m: by_value[True][s][m] - by_value[False][s][m] for m in METRICS} for s in seeds]
        out.append(row("think - nothink", diffs, seeds))
        if consultations:
            recs = {Path(p).stem: _read_jsonl(p) for p in consultations}
            run_of = {(info["with_thinking"], info["seed"]): run for run, info in runs.items()}
            arrays = {v: [case_arrays(recs[run_of[(v, s)]]) for s in seeds] for v in (True, False)}
            bs = bootstrap or {}
            ci = paired_bootstrap(arrays[True], arrays[False], n_boot=bs.get("bootstrap_samples", 2000),
                                  level=bs.get("ci_level", 0.95), seed=bs.get("bootstrap_seed", 0))
            for r in out:
                r.update(ci[{"true": "true", "false": "false"}.get(r["with_thinking"], "diff")])
    if RANDOM in alls:  # the no-information doctor on the same cases (the embedded clinic's)
        r = dict(row("random doctor", [alls[RANDOM]], []), n_seeds=1)  # one run, no training seed
        recs = {Path(p).stem: p for p in consultations or []}
        if RANDOM in recs and by_value:
            arrays = [case_arrays(_read_jsonl(recs[RANDOM]))]
            bs = bootstrap or {}
            r.update(paired_bootstrap(arrays, arrays, n_boot=bs.get("bootstrap_samples", 2000),
                                      level=bs.get("ci_level", 0.95), seed=bs.get("bootstrap_seed", 0))["true"])
        out.insert(len(by_value), r)  # after the variants, before their difference
    return pd.DataFrame(out)


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "--" if x is None or pd.isna(x) else f"{x:{spec}}"


def eval_latex(frame: pd.DataFrame, level: float = 0.95) -> str:
    ci = ci_label(level, latex=True)
    lines = [r"\begin{tabular}{lrrrrrrrr}", r"\toprule",
             rf"doctor & cases & accuracy [{ci} CI] & diag. R-L & rec. R-L & turns & repeated q. & bad format & "
             r"info. prec. \\", r"\midrule"]
    for _, r in frame[frame["category"] == "all"].iterrows():
        lines.append(f"{r.label} & {r.cases} & {_fmt(r.accuracy)} [{_fmt(r.accuracy_lo)}, {_fmt(r.accuracy_hi)}] & "
                     f"{_fmt(r.diag_rougeL)} & {_fmt(r.rec_rougeL)} & {_fmt(r.turns)} & "
                     f"{_fmt(r.repeated_question_rate)} & {_fmt(r.invalid_format_rate)} & {_fmt(r.ir_precision)} \\\\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def ablation_latex(frame: pd.DataFrame) -> str:
    shown = ["accuracy", "diag_rougeL", "rec_rougeL", "turns", "ir_precision"]
    lines = [r"\begin{tabular}{lr" + "r" * len(shown) + "}", r"\toprule",
             r"with thinking & seeds & accuracy & diag. R-L & rec. R-L & turns & info. prec. \\", r"\midrule"]
    for _, r in frame.iterrows():
        cells = [f"{_fmt(r[f'{m}_mean'])} $\\pm$ {_fmt(r[f'{m}_std'])} [{_fmt(r.get(f'{m}_ci_low'))}, "
                 f"{_fmt(r.get(f'{m}_ci_high'))}]" for m in shown]
        lines.append(f"{r.with_thinking} & {r.n_seeds} & " + " & ".join(cells) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def write_tables(summaries: list[str], doctors: list[str], runs: dict[str, dict[str, Any]], out,
                 consultations: list[str] | None = None, bootstrap: dict[str, Any] | None = None) -> tuple:
    frame = eval_frame(summaries, doctors, runs)
    ablation = ablation_frame(summaries, runs, consultations, bootstrap)
    for df, path in ((frame, out.eval), (ablation, out.ablation)):
        with atomic_file(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
    write_text(out.tex, eval_latex(frame, (bootstrap or {}).get("ci_level", 0.95)))
    write_text(out.ablation_tex, ablation_latex(ablation))
    return frame, ablation


def _save(fig, outputs: list[str]) -> list[str]:
    """Write the figure to every path (png, pdf) atomically (no timestamps in the files)."""
    written = []
    for path in sorted(outputs):
        ext = Path(path).suffix.lstrip(".")
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, metadata=meta)
        written.append(str(path))
    return written


def _mark_undefined(ax, positions) -> None:
    """An "n/a" mark, not a bar, at each x of ``positions`` (accuracy undefined there)."""
    for pos in positions:
        ax.text(pos, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="0.35",
                transform=ax.get_xaxis_transform())


def figure(eval_csv: str, ablation_csv: str, outputs: list[str], level: float = 0.95) -> list[str]:
    """Left: diagnosis accuracy (Wilson interval at ``level``) and diagnosis ROUGE-L per doctor.
    Right: accuracy per with_thinking value, mean over seeds with its bootstrap interval
    (:func:`paired_bootstrap`: seeds, then cases; without the consultations, which the workflow
    always passes, the standard deviation over seeds), and the random doctor (one run). Where
    accuracy is undefined (NaN: cases without exact disease names, "--" in the tables) there is
    no bar but an "n/a" mark, not a bar at 0."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    frame = pd.read_csv(eval_csv)
    frame = frame[frame["category"] == "all"].reset_index(drop=True)
    ablation = pd.read_csv(ablation_csv)
    ablation = ablation[ablation["with_thinking"].isin(["true", "false", "random doctor"])].reset_index(drop=True)
    fig = Figure(figsize=(9.5, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)
    ax = axes[0][0]
    x = np.arange(len(frame))
    ok = frame["accuracy"].notna().to_numpy()
    acc = frame["accuracy"][ok]
    err = [(acc - frame["accuracy_lo"][ok]).fillna(0), (frame["accuracy_hi"][ok] - acc).fillna(0)]
    ax.bar(x[ok] - 0.2, acc, 0.4, yerr=err, capsize=3, label=f"diagnosis accuracy ({ci_label(level)} Wilson CI)", color="C0")
    _mark_undefined(ax, x[~ok] - 0.2)
    ax.bar(x + 0.2, frame["diag_rougeL"], 0.4, label="diagnosis ROUGE-L", color="C1")
    ax.set_xticks(x, [lbl.replace(", ", ",\n").replace(" doctor", "\ndoctor") for lbl in frame["label"]], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    ax.set_title("held-out consultations")
    ax = axes[0][1]
    ok = ablation["accuracy_mean"].notna().to_numpy()
    mean, pos = ablation["accuracy_mean"][ok], np.arange(len(ablation))[ok]
    if "accuracy_ci_low" in ablation and ablation["accuracy_ci_low"][ok].notna().all():
        yerr = [mean - ablation["accuracy_ci_low"][ok], ablation["accuracy_ci_high"][ok] - mean]
        what = f"mean over seeds, {ci_label(level)} bootstrap CI"
    else:
        yerr, what = ablation["accuracy_std"][ok].fillna(0), "mean ± std over seeds"
    ax.bar(pos, mean, yerr=yerr, capsize=3, color=[c for c, shown in zip(("C2", "C3", "C7"), ok) if shown])
    _mark_undefined(ax, np.arange(len(ablation))[~ok])
    ax.set_xticks(range(len(ablation)), [v.replace(" ", "\n") if v == "random doctor" else f"with_thinking\n{v}"
                                         for v in ablation["with_thinking"]], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"diagnosis accuracy\n({what})")
    ax.set_title("thinking ablation")
    return _save(fig, outputs)
