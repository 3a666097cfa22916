"""Ablation tables: one row per ablation point, with bootstrap intervals, plus reference rows.

Columns: ``ablation, variant, kind, init, beta, sft_samples, n_seeds``; for every metric
of :data:`sft2rl.stats.TABLE_METRICS`: ``<metric>_mean`` (mean over seeds), ``<metric>_std``
(std over seeds, NaN for one seed), ``<metric>_ci_low`` / ``_ci_high`` (the interval of
:func:`sft2rl.stats.bootstrap_row`), and for GRPO rows the paired difference to the run's
init model, ``<metric>_diff`` with ``_diff_ci_low`` / ``_diff_ci_high``. The column ``ci``
states the method. ``kind`` is ``rl`` for GRPO runs, ``sft-only`` for the merged SFT model
before RL, ``base-only`` for the base model. Also written as a LaTeX table for the paper.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from ...io import atomic_file, read_jsonl, write_text
from ...stats import TABLE_METRICS, bootstrap_row, ci_label, question_arrays
from .runs import parse_rl, parse_sft

METRICS = list(TABLE_METRICS)
LATEX_COLUMNS = {
    "mean_reward": "reward", "kind_only_mean_reward": "kind only",
    "accuracy_knowable": "acc (known)", "kind_only_accuracy_knowable": "kind only", "format_rate": "format",
    "hedge_recall": "hedge (unknown)",
    "false_hedge_rate": "hedge (known)", "kind_only_false_hedge_rate": "kind only",
    "hedge_auroc": "AUROC", "kind_only_hedge_auroc": "kind only",
}
BOOTSTRAP_DEFAULTS = {"bootstrap_samples": 2000, "ci_level": 0.95, "bootstrap_seed": 0}


def ci_method(n_seeds: int, boot: dict[str, Any]) -> str:
    over = "test questions and seeds (hierarchical)" if n_seeds > 1 else "test questions"
    return (f"{ci_label(boot['ci_level'])} percentile bootstrap, {boot['bootstrap_samples']} draws over {over}; "
            "diff: paired per question vs the init model")


def _answers(path: str) -> dict:
    return question_arrays([rec for _, rec in read_jsonl(path)])


def _row(ablation: str, group: dict[str, Any], boot: dict[str, Any]) -> dict[str, Any]:
    variant, kind, model_names = group["variant"], group["kind"], group["models"]
    first = model_names[0]
    info: dict[str, Any] = {"ablation": ablation, "variant": variant, "kind": kind, "n_seeds": len(model_names)}
    if kind == "rl":
        p = parse_rl(first)
        info.update(init=p["init"], beta=p["beta"])
        init = p["init"]
    else:
        info.update(init=first, beta=None)
        init = first
    info["sft_samples"] = parse_sft(init)["n"] if init.startswith("sft") else 0
    ref = _answers(group["ref_answers"]) if group.get("ref_answers") else None
    stats = bootstrap_row([_answers(f) for f in group["answers"]], ref, n_boot=boot["bootstrap_samples"],
                          level=boot["ci_level"], seed=boot["bootstrap_seed"])
    info.update(stats)
    info["ci"] = ci_method(len(model_names), boot)
    return info


def build_table(ablation: str, groups: list[dict[str, Any]], boot: dict[str, Any] | None = None) -> pd.DataFrame:
    """``groups``: dicts with variant, kind, models (names), answers (answers.jsonl per model) and,
    for GRPO rows, ref_answers (the init model's), in row order. A group marked ``refused`` (runs
    the config refuses to build, e.g. RL from the base model with the SFT term on) stops the table
    with that reason: its runs, built under another config, are not shown as this config's."""
    refused = [f"row {g['variant']!r}: {g['refused']}" for g in groups if g.get("refused")]
    if refused:
        raise ValueError(f"table ablation_{ablation} not built; " + "; ".join(refused))
    boot = {**BOOTSTRAP_DEFAULTS, **(boot or {})}
    return pd.DataFrame([_row(ablation, g, boot) for g in groups])


def write_table(frame: pd.DataFrame, csv_path: str, tex_path: str | None = None) -> None:
    with atomic_file(csv_path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    if tex_path:
        write_text(tex_path, to_latex(frame))


def _fmt(mean: float, lo: float, hi: float) -> str:
    if pd.isna(mean):
        return "--"
    if pd.isna(lo):
        return f"{mean:.2f}"
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def to_latex(frame: pd.DataFrame) -> str:
    """Mean and interval (the table's ``ci`` level) of the key metrics, one row per variant."""
    cols = list(LATEX_COLUMNS)
    header = " & ".join(["variant", "seeds"] + [LATEX_COLUMNS[c] for c in cols]) + r" \\"
    lines = [r"\begin{tabular}{l r " + "c " * len(cols) + "}", r"\toprule", header, r"\midrule"]
    for _, r in frame.iterrows():
        cells = [str(r["variant"]).replace("_", r"\_"), str(int(r["n_seeds"]))]
        cells += [_fmt(r[f"{c}_mean"], r[f"{c}_ci_low"], r[f"{c}_ci_high"]) for c in cols]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)
