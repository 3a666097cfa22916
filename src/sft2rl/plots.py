"""Figures (GRPO training curves, ablations); the paper build is :mod:`sft2rl.paper`.

Every figure is written twice, as ``<stem>.png`` and ``<stem>.pdf``, each through
:func:`sft2rl.io.atomic_file` (temporary sibling, then ``os.replace``), so an interrupted
job never leaves a half-written figure.

Inputs:

* TensorBoard event files of the GRPO runs (``results/rl/<run>/tensorboard/``), read with
  TensorBoard's own EventAccumulator: a resumed run (several event files in one directory,
  the later one starting with a purge at the resume step) reads as one curve, and for a
  step logged twice the later event wins.
* the ablation tables of :mod:`sft2rl.tasks.qa.tables` (``results/ablation_<name>.csv``).

Every metric is drawn beside its no-information baseline where the table has it (a policy that
sees only the question's kind; :mod:`sft2rl.stats`): the mean reward beside
``kind_only_mean_reward``, the knowable accuracy beside ``kind_only_accuracy_knowable``, the
false-hedge rate beside ``kind_only_false_hedge_rate`` (at the row's own hedge recall), and the
risk–coverage curves beside the risk at full coverage (everything answered: no ranking). The
hedge recall's is 1 (hedging everything).

matplotlib and pandas are imported lazily, so importing this module (as the workflow does
at DAG time for the list of figure names) costs nothing.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Mapping

from .io import DataError, atomic_file
from .tasks.qa.runs import parse_rl  # the curves group the QA task's RL runs by init and beta
from .tblog import read_scalars  # noqa: F401  (re-exported: plots.read_scalars)

# ------------------------------------------------------------------ names
FIGURE_FORMATS = ("png", "pdf")
CURVE_TAGS = {"reward_curves": ("rl/reward_mean", "mean reward (training batch)"),
              "kl_curves": ("rl/kl", "KL to reference (low-var)")}
ABLATION_NAMES = ("beta", "sft_samples", "sft", "sft_style")


def figure_stems(ablations: Iterable[str] = ABLATION_NAMES) -> tuple[str, ...]:
    """Figure names for the ablation tables ``ablations`` (the workflow's list)."""
    return (*CURVE_TAGS, *(f"ablation_{a}" for a in ablations), "hedging_vs_beta", "risk_coverage")


FIGURE_STEMS = figure_stems()

# Metrics of the ablation figures (column prefix in the table -> panel title). Every model is
# evaluated with the reward at config reward.beta (evaluate.smk), so the beta ablation's rows
# are not scored at the beta they trained with.
ABLATION_METRICS = {
    "mean_reward": "mean reward (at the default β)",
    "accuracy_knowable": "accuracy (knowable)",
    "hedge_recall": "hedge recall (unknowable: block present)",
    "false_hedge_rate": "false-hedge rate (knowable: block present)",
}
# The no-information baseline of a metric (column prefix in the table); optional columns.
KIND_ONLY = {"mean_reward": "kind_only_mean_reward", "accuracy_knowable": "kind_only_accuracy_knowable",
             "false_hedge_rate": "kind_only_false_hedge_rate",
             "sampled_false_hedge_rate": "kind_only_sampled_false_hedge_rate"}
KIND_ONLY_LABEL = "kind-only policy at the same recall"
KIND_ONLY_BAR_LABEL = "kind-only policy (sees only the question's kind; false hedges: at the row's recall)"
TABLE_COLUMNS = ["ablation", "variant", "kind", "n_seeds", "init", "beta", "sft_samples"]
ABLATION_TITLES = {"beta": r"Ablation: reward weight $\beta$", "sft_samples": "Ablation: number of SFT samples",
                   "sft": "Ablation: SFT warm-up before GRPO",
                   "sft_style": "Ablation: SFT targets (hedge only where unknowable vs a block on every answer)"}
DPI = 150


def figure_paths(out_dir: str | os.PathLike, stems: Iterable[str] = FIGURE_STEMS) -> list[str]:
    """The files :func:`make_figures` writes under ``out_dir`` (PNG and PDF of every stem)."""
    return [str(Path(out_dir) / f"{s}.{ext}") for s in stems for ext in FIGURE_FORMATS]


# ------------------------------------------------------------------ reading
def load_curves(tb_dirs: Mapping[str, str | os.PathLike], tag: str) -> dict[str, list[tuple[int, float]]]:
    """``{run: [(step, value), ...]}`` for one tag; runs without that tag are left out."""
    curves = {}
    for run, d in tb_dirs.items():
        series = read_scalars(d).get(tag)
        if series:
            curves[run] = series
    return curves


def read_ablation(path: str | os.PathLike):
    """An ablation table (CSV of :mod:`sft2rl.tasks.qa.tables`) as a DataFrame, columns checked."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    frame = pd.read_csv(path)
    for col in TABLE_COLUMNS + [f"{m}_{s}" for m in ABLATION_METRICS for s in ("mean", "ci_low", "ci_high")]:
        if col not in frame.columns:
            raise DataError(path, None, col, "missing column (expected an ablation table of sft2rl.tasks.qa.tables)")
    return frame


# ------------------------------------------------------------------ drawing helpers
def _figure(nrows: int = 1, ncols: int = 1, figsize=(7.0, 4.0)):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, stem: str | os.PathLike) -> list[str]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` atomically; returns the two paths."""
    written = []
    for ext in FIGURE_FORMATS:
        path = Path(f"{stem}.{ext}")
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        with atomic_file(path) as tmp:  # tmp ends in .tmp: pass the format explicitly
            fig.savefig(tmp, format=ext, dpi=DPI, metadata=meta)
        written.append(str(path))
    return written


def smooth_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard-style debiased exponential moving average (weight 0: unchanged)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, last, norm = [], 0.0, 0.0
    for v in values:
        if math.isnan(v):
            out.append(float("nan"))
            continue
        last = weight * last + (1.0 - weight) * v
        norm = weight * norm + (1.0 - weight)
        out.append(last / norm)
    return out


def _run_group(run: str) -> tuple[tuple, str]:
    """Sort key and legend label of the configuration of a run (init and beta; seeds share it)."""
    try:
        p = parse_rl(run)
    except ValueError:
        return (2, run, 0.0), run
    init = p["init"]
    n = int(init[3:].split("_")[0]) if init.startswith("sft") else -1
    return (0 if init == "base" else 1, n, p["beta"]), f"init={init}, β={p['beta']:g}"


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


# ------------------------------------------------------------------ figures
#: the legend entry of the reward curves' no-information lines
KIND_ONLY_CURVE_LABEL = "kind-only policy on the training rows (per β, dotted)"


def plot_curves(curves: Mapping[str, list[tuple[int, float]]], ylabel: str, stem: str | os.PathLike, *,
                title: str = "", smooth: float = 0.6, baselines: Mapping[str, float] | None = None) -> list[str]:
    """One line per run, coloured by configuration (init, beta); raw thin, smoothed bold.
    ``baselines`` ({run: value}): the no-information value beside each run's curve, a dotted
    horizontal line in its configuration's colour (one per colour; :data:`KIND_ONLY_CURVE_LABEL`)."""
    fig, axes = _figure(figsize=(7.5, 4.2))
    ax = axes[0][0]
    groups: dict[str, tuple] = {}
    for run in curves:
        key, label = _run_group(run)
        groups.setdefault(label, key)
    order = sorted(groups, key=lambda lab: groups[lab])
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(order)}
    labelled = set()
    for run in sorted(curves, key=lambda r: (_run_group(r)[0], r)):
        steps = [s for s, _ in curves[run]]
        vals = [v for _, v in curves[run]]
        label = _run_group(run)[1]
        c = colors[label]
        if smooth > 0:
            ax.plot(steps, vals, color=c, alpha=0.3, linewidth=0.8)
            ax.plot(steps, smooth_ema(vals, smooth), color=c, linewidth=1.6,
                    label=None if label in labelled else label)
        else:
            ax.plot(steps, vals, color=c, linewidth=1.2, marker=".", label=None if label in labelled else label)
        labelled.add(label)
    drawn: set[tuple[str, float]] = set()
    for run, value in sorted((baselines or {}).items()):
        if run not in curves or math.isnan(float(value)):
            continue
        c = colors[_run_group(run)[1]]
        if (c, float(value)) not in drawn:
            ax.axhline(float(value), color=c, linestyle=":", linewidth=1.2,
                       label=None if drawn else KIND_ONLY_CURVE_LABEL)
            drawn.add((c, float(value)))
    if curves:
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        note = f"thin: raw, bold: EMA {smooth:g}" if smooth > 0 else "raw"
        ax.set_title(f"{title} ({len(curves)} runs; {note})" if title else note, fontsize="medium")
    else:
        _no_data(ax, "no TensorBoard data")
    return save_figure(fig, stem)


def _yerr(rows, metric: str) -> list[list[float]]:
    """Asymmetric error bars (mean - low, high - mean) from a table's interval columns; 0 where none."""
    lo, hi = [], []
    for m, a, b in zip(rows[f"{metric}_mean"], rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"]):
        ok = not any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (m, a, b))
        lo.append(max(0.0, float(m) - float(a)) if ok else 0.0)
        hi.append(max(0.0, float(b) - float(m)) if ok else 0.0)
    return [lo, hi]


def _defined(rows, metric: str) -> list[bool]:
    """Per row: ``<metric>_mean`` is not NaN; all False where the table lacks the metric's mean
    or interval columns (the baselines are optional columns)."""
    if any(f"{metric}_{s}" not in rows for s in ("mean", "ci_low", "ci_high")):
        return [False] * len(rows)
    return [not math.isnan(float(v)) for v in rows[f"{metric}_mean"]]


def plot_ablation(frame, stem: str | os.PathLike, *, title: str = "",
                  metrics: Mapping[str, str] = ABLATION_METRICS, ci_level: float = 0.95) -> list[str]:
    """One panel per metric, one bar per table row (mean over seeds, error bar = the table's
    bootstrap interval, at ``ci_level``). GRPO rows are solid bars; reference rows (sft-only,
    base-only: no RL) are hatched grey. A metric the row does not define (NaN: accuracy and the
    hedge rates without knowable labels) has no bar and reads "n/a". A metric with a
    no-information baseline in the table (:data:`KIND_ONLY`: reward, knowable accuracy,
    false-hedge rate) has it beside each bar as a black tick with its interval; none where the
    column is absent or NaN.
    The mean reward is every row's at the default beta (the evaluation's ``reward.beta``)."""
    fig, axes = _figure(2, 2, figsize=(8.5, 6.4))
    rows = frame.reset_index(drop=True)
    x = list(range(len(rows)))
    is_rl = [k == "rl" for k in rows["kind"]]
    labels = [f"{v}\n(n={int(n)})" for v, n in zip(rows["variant"], rows["n_seeds"])]
    kind_only_drawn = False
    for ax, (metric, name) in zip([a for r in axes for a in r], metrics.items()):
        means = [float(m) for m in rows[f"{metric}_mean"]]
        err = _yerr(rows, metric)
        for i in x:
            if math.isnan(means[i]):
                ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize="small", color="0.35",
                        transform=ax.get_xaxis_transform())
                continue
            ax.bar(i, means[i], yerr=[[err[0][i]], [err[1][i]]], capsize=4,
                   color="C0" if is_rl[i] else "0.8", edgecolor="C0" if is_rl[i] else "0.35",
                   hatch=None if is_rl[i] else "//", label=None)
        base = KIND_ONLY.get(metric)
        idx = [i for i, ok in zip(x, _defined(rows, base)) if ok and not math.isnan(means[i])] if base else []
        if idx:  # the baseline beside each bar (right of its centre, clear of the bar's own error bar)
            ax.errorbar([i + 0.25 for i in idx], [float(rows[f"{base}_mean"][i]) for i in idx],
                        yerr=_yerr(rows.iloc[idx], base), fmt="_", color="black", markersize=12, markeredgewidth=2,
                        elinewidth=1, capsize=3)
            kind_only_drawn = True
        ax.set_title(name, fontsize="medium")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
        ax.grid(axis="y", alpha=0.3)
        if metric != "mean_reward":
            ax.set_ylim(0, 1.05)
        if rows.empty:
            _no_data(ax, "empty table")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from .stats import ci_label

    ci = ci_label(ci_level)
    handles = [Patch(facecolor="C0", edgecolor="C0", label=f"GRPO (mean over seeds, {ci} bootstrap CI)"),
               Patch(facecolor="0.8", edgecolor="0.35", hatch="//", label=f"reference, no RL ({ci} bootstrap CI)")]
    if kind_only_drawn:
        handles.append(Line2D([], [], color="black", marker="_", markersize=12, markeredgewidth=2, linestyle="none",
                              label=f"{KIND_ONLY_BAR_LABEL}, {ci} bootstrap CI"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    return save_figure(fig, stem)


def plot_hedging_vs_beta(frame, stem: str | os.PathLike, ci_level: float = 0.95) -> list[str]:
    """Hedging where the model cannot know (hedge recall, unknowable questions) against hedging
    where it can (false-hedge rate, knowable) as beta grows; GRPO rows with the table's intervals, the
    reference rows (sft-only) as dashed lines. Beside the false-hedge rate, its no-information
    baseline: the kind-only policy's false-hedge rate at each GRPO row's own hedge recall
    (``kind_only_false_hedge_rate``, ``kind_only_sampled_false_hedge_rate``), a dotted line with
    its interval as a band; none where the column is absent or NaN. Greedy answers, and
    sampled ones when the table has them. Bars and bands: the table's percentile bootstrap
    intervals at ``ci_level``, named on the y axis."""
    from .stats import ci_label

    panels = [("", "greedy answers")]
    if any(not math.isnan(float(v)) for v in frame.get("sampled_hedge_recall_mean", [])):
        panels.append(("sampled_", "sampled answers"))
    fig, axes = _figure(1, len(panels), figsize=(4.6 * len(panels), 4.0))
    rl = frame[frame["kind"] == "rl"].sort_values("beta")
    refs = frame[frame["kind"] != "rl"]
    series = [("hedge_recall", "unknowable (hedge recall)", "C3", "o"),
              ("false_hedge_rate", "knowable (false-hedge rate)", "C0", "s")]
    for ax, (prefix, subtitle) in zip(axes[0], panels):
        for metric, label, color, marker in series:
            col = f"{prefix}{metric}"
            if rl.empty:
                break
            ax.errorbar(rl["beta"].astype(float), rl[f"{col}_mean"].astype(float), yerr=_yerr(rl, col), color=color,
                        marker=marker, capsize=4, label=f"GRPO, {label}")
            for _, ref in refs.iterrows():
                y = float(ref[f"{col}_mean"])
                if not math.isnan(y):
                    ax.axhline(y, color=color, linestyle="--", linewidth=1.0, label=f"{ref['variant']}, {label}")
            base = KIND_ONLY.get(col)
            shown = _defined(rl, base) if base else []
            if any(shown):
                pts = rl[shown]
                xs, ys = pts["beta"].astype(float), pts[f"{base}_mean"].astype(float)
                ax.plot(xs, ys, color=color, linestyle=":", marker="x", linewidth=1.2, label=KIND_ONLY_LABEL)
                lo, hi = pts[f"{base}_ci_low"].astype(float), pts[f"{base}_ci_high"].astype(float)
                ax.fill_between(xs, lo, hi, where=(lo.notna() & hi.notna()).tolist(), color=color, alpha=0.12,
                                linewidth=0)
        if rl.empty:
            _no_data(ax, "no GRPO rows")
            continue
        ax.set_xticks(sorted(set(rl["beta"].astype(float))))
        ax.set_xlabel(r"$\beta$ (reward of a proactive answer when the group fails)")
        ax.set_ylabel(f"share of answers with a proactive block\n(GRPO: mean over seeds; "
                      f"{ci_label(ci_level)} bootstrap CI)")
        ax.set_ylim(-0.02, 1.05)
        ax.grid(alpha=0.3)
        ax.set_title(subtitle, fontsize="medium")
        ax.legend(fontsize="x-small")
    return save_figure(fig, stem)


FULL_COVERAGE_LABEL = "risk at full coverage (no ranking)"


def plot_risk_coverage(curves: Mapping[str, list[tuple[list[float], list[float]]]], stem: str | os.PathLike) -> list[str]:
    """Risk–coverage curves, one per variant ({variant: [(coverage, risk) per seed]}): the model
    answers the questions it hedges on least first; risk is the error rate of those answers.
    A model whose hedging tracks its errors has a curve that rises late. The reference, a dotted
    horizontal line per variant: the risk at full coverage (every question answered, the
    curve's last point; mean over seeds), what answering in an order that ignores the hedging
    gives at any coverage (in expectation)."""
    fig, axes = _figure(1, 1, figsize=(6.0, 4.2))
    ax = axes[0][0]
    for i, (variant, per_seed) in enumerate(curves.items()):
        for j, (cov, risk) in enumerate(per_seed):
            ax.plot(cov, risk, marker=".", color=f"C{i}", alpha=0.9 if len(per_seed) == 1 else 0.6,
                    label=variant if j == 0 else None)
        full = [risk[-1] for _, risk in per_seed if risk]  # each curve ends at coverage 1
        if full:
            ax.axhline(sum(full) / len(full), color=f"C{i}", linestyle=":", linewidth=1.2)
    if curves:
        ax.set_xlabel("coverage (share of questions answered, least-hedged first)")
        ax.set_ylabel("risk (error rate of the answered questions)")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.3", linestyle=":", linewidth=1.2))
        ax.legend(handles, [*labels, FULL_COVERAGE_LABEL], fontsize="small",
                  title="one line per seed", title_fontsize="x-small")
    else:
        _no_data(ax, "no evaluations")
    return save_figure(fig, stem)


def make_figures(tables: Mapping[str, str | os.PathLike], tb_dirs: Mapping[str, str | os.PathLike],
                 out_dir: str | os.PathLike, *, smooth: float = 0.6,
                 answers: Mapping[str, list[str | os.PathLike]] | None = None, ci_level: float = 0.95,
                 rl_train: str | os.PathLike | None = None, reward: Mapping | None = None,
                 group_size: int | None = None) -> list[str]:
    """All figures: curves of the runs in ``tb_dirs`` ({run: tensorboard dir}), one figure per
    ablation table in ``tables`` ({name: csv}), ``hedging_vs_beta`` from ``tables['beta']``, and
    ``risk_coverage`` from ``answers`` ({variant: [answers.jsonl per seed]}); ``ci_level``: the
    tables' interval level (``eval.ci_level``), for the labels. With ``rl_train`` (the RL train
    rows), ``reward`` (the ``reward`` config) and ``group_size`` (``rl.n``), the reward curves
    show the kind-only policy's mean reward on those rows at each run's beta
    (:func:`sft2rl.tasks.qa.baselines.kind_only_reward`).
    Returns the written paths (see :func:`figure_paths`)."""
    from .io import read_jsonl
    from .stats import risk_coverage

    out = Path(out_dir)
    written: list[str] = []
    reward_base: dict[str, float] = {}
    if rl_train is not None and reward is not None and group_size is not None:
        from .tasks.qa.baselines import kind_only_reward

        by_beta: dict[float, float] = {}
        for run in tb_dirs:
            try:
                beta = float(parse_rl(run)["beta"])
            except ValueError:  # not a QA run name: no beta to score the policy at
                continue
            if beta not in by_beta:
                by_beta[beta] = kind_only_reward(rl_train, dict(reward, beta=beta), group_size)
            reward_base[run] = by_beta[beta]
    for stem, (tag, ylabel) in CURVE_TAGS.items():
        written += plot_curves(load_curves(tb_dirs, tag), ylabel, out / stem, title=f"GRPO: {tag}", smooth=smooth,
                               baselines=reward_base if stem == "reward_curves" else None)
    frames = {name: read_ablation(path) for name, path in tables.items()}
    for name, frame in frames.items():
        written += plot_ablation(frame, out / f"ablation_{name}", title=ABLATION_TITLES.get(name, name),
                                 ci_level=ci_level)
    if "beta" in frames:
        written += plot_hedging_vs_beta(frames["beta"], out / "hedging_vs_beta", ci_level=ci_level)
    curves = {variant: [risk_coverage([rec for _, rec in read_jsonl(f)]) for f in files]
              for variant, files in (answers or {}).items()}
    written += plot_risk_coverage(curves, out / "risk_coverage")
    return written
