"""Medical RL's tables and figures.

``results/med/rl_eval.csv``: one row per doctor on the held-out cases at the evaluation's
budget (``med.eval.max_turns``): the base model, the SFT doctor RL starts from, RL with a
fixed and with a dynamic turn budget (first RL seed), the no-signal control of each
(``med.rl.no_signal_control``: the same run with its advantages in a random order), the
scripted and the random doctor; accuracy with its Wilson interval (``eval.ci_level``), ROUGE-L and BLEU of
diagnosis and recommendation, turns, repeated-question rate, information-retrieval precision,
invalid-format rate, mean episode reward and success rate, the share of consultations whose
evidence sufficed for the true diagnosis and the accuracy on those (the synthetic clinic); for
the RL rows (control included) the paired per-case difference RL - SFT of accuracy and of
reward with its percentile bootstrap interval over cases, and for an RL row with a control of
its budget and seed the paired difference RL - control: what the reward taught beyond what
the updates do by themselves. With ``med.eval.k_samples`` > 0, the same doctors also consult
each case k times sampling as the reference's evaluation does (temperature 0.7, top-p 0.9):
``sampled_accuracy`` (per-case mean over the k, percentile bootstrap interval over cases),
``sampled_reward``, and the same paired differences of the per-case means
(``diff_sampled_*``, ``diff_control_sampled_*``).

``results/med/ablation_turn_budget.csv``: the SFT doctor and the RL doctors of each budget
(every RL seed) evaluated at each of ``med.rl.eval_budgets``: per (doctor, budget) the mean
and standard deviation over seeds of accuracy, reward, turns and diagnosed rate, with a
percentile bootstrap interval over cases of the seed-averaged per-case value; and a row
``dynamic - fixed`` per budget with the paired per-case difference (seeds averaged per case).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...io import atomic_file, write_text
from ...stats import ci_label, paired_difference
from .table import METRICS, _fmt, _read_jsonl, _save, correct_value

RL_EVAL_COLUMNS = ["doctor", "label", "budget", "seed", "cases", "accuracy", "accuracy_lo", "accuracy_hi", *METRICS[1:],
                   "reward", "success_rate", "evidence_sufficient_rate", "accuracy_if_sufficient", "diff_accuracy",
                   "diff_accuracy_lo", "diff_accuracy_hi", "diff_reward", "diff_reward_lo", "diff_reward_hi",
                   "diff_control_accuracy", "diff_control_accuracy_lo", "diff_control_accuracy_hi",
                   "diff_control_reward", "diff_control_reward_lo", "diff_control_reward_hi",
                   "k_samples", "sampled_accuracy", "sampled_accuracy_lo", "sampled_accuracy_hi", "sampled_reward",
                   "diff_sampled_accuracy", "diff_sampled_accuracy_lo", "diff_sampled_accuracy_hi",
                   "diff_sampled_reward", "diff_sampled_reward_lo", "diff_sampled_reward_hi",
                   "diff_control_sampled_accuracy", "diff_control_sampled_accuracy_lo",
                   "diff_control_sampled_accuracy_hi", "diff_control_sampled_reward",
                   "diff_control_sampled_reward_lo", "diff_control_sampled_reward_hi", "rl_steps", "rl_seconds"]
LABELS = {"base": "base model", "scripted": "scripted doctor", "random": "random-question doctor"}


def _label(doctor: str, info: dict[str, Any] | None) -> str:
    if doctor in LABELS:
        return LABELS[doctor]
    if info and "budget" in info:
        return f"RL, {info['budget']} budget" + (", no-signal control" if info.get("control") else "")
    return "SFT" + (", with thinking" if info and info["with_thinking"] else ", without thinking")


def per_case(records: list[dict[str, Any]], key: str) -> dict[str, float]:
    """case id -> the mean over the case's consultations (one greedy, or the k sampled ones) of
    ``key`` (correct as 0/1, NaN where undefined: your own rows have no exact disease names;
    reward)."""
    values: dict[str, list[float]] = {}
    for r in records:
        values.setdefault(str(r["case"]), []).append(correct_value(r) if key == "correct" else float(r[key]))
    return {case: float(np.mean(v)) for case, v in values.items()}


def rl_eval_frame(summaries: dict[str, str], consultations: dict[str, str], sft: str, infos: dict[str, Any],
                  train: dict[str, str], bootstrap: dict[str, Any],
                  sampled: dict[str, str] | None = None) -> pd.DataFrame:
    """The rows of rl_eval.csv (all cases), doctors in the order of ``summaries``; ``sampled``:
    each doctor's sampled consultations (k per case), where the table has them."""
    bs = dict(samples=bootstrap["bootstrap_samples"], level=bootstrap["ci_level"], seed=bootstrap["bootstrap_seed"])
    # greedy consultations, and the sampled ones: (column infix, doctor -> consultations)
    sources = [("", {d: _read_jsonl(p) for d, p in consultations.items()})]
    if sampled:
        sources.append(("sampled_", {d: _read_jsonl(p) for d, p in sampled.items()}))
    controls = {(infos[d]["budget"], infos[d]["seed"]): d for d in train if infos[d].get("control")}
    rows = []
    for doctor, path in summaries.items():
        row = dict(json.loads(Path(path).read_text())[0])
        info = infos.get(doctor)
        row.update(label=_label(doctor, info), budget=(info or {}).get("budget"),
                   seed=(info or {}).get("seed"))
        if sampled:
            recs = sources[1][1][doctor]
            accuracy = np.array(list(per_case(recs, "correct").values()))
            lo, hi = _interval(accuracy, bootstrap)
            row.update(k_samples=len(recs) // len(accuracy), sampled_accuracy=float(accuracy.mean()),
                       sampled_accuracy_lo=lo, sampled_accuracy_hi=hi,
                       sampled_reward=float(np.mean([r["reward"] for r in recs])))
        if doctor in train:
            control = None if info.get("control") else controls.get((info["budget"], info["seed"]))
            # RL - SFT, and RL - its no-signal control where it has one: paired per case, greedy
            # and sampled (the per-case means of the k consultations)
            refs = [("diff", sft)] + ([("diff_control", control)] if control else [])
            for infix, recs in sources:
                for prefix, ref in refs:
                    for key, name in (("correct", "accuracy"), ("reward", "reward")):
                        d, lo, hi = paired_difference(per_case(recs[ref], key), per_case(recs[doctor], key), **bs)
                        col = f"{prefix}_{infix}{name}"
                        row.update({col: d, f"{col}_lo": lo, f"{col}_hi": hi})
            summ = json.loads(Path(train[doctor]).read_text())
            row.update(rl_steps=summ["steps"], rl_seconds=summ["seconds"])
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=RL_EVAL_COLUMNS)


def rl_eval_latex(frame: pd.DataFrame, level: float = 0.95) -> str:
    ci = ci_label(level, latex=True)
    control = frame["diff_control_accuracy"].notna().any()
    sampled = frame["k_samples"].notna().any()  # (its accuracy is empty on your own rows)
    k = int(frame["k_samples"].dropna().iloc[0]) if sampled else 0
    lines = [r"\begin{tabular}{l" + "r" * (7 + 2 * sampled + control) + "}", r"\toprule",
             rf"doctor & accuracy [{ci} CI] & " + (f"sampled ($k={k}$) [{ci} CI] & " if sampled else "")
             + rf"diag. R-L & rec. R-L & turns & repeated q. & reward & RL $-$ SFT accuracy [{ci} CI]"
             + (rf" & RL $-$ SFT sampled [{ci} CI]" if sampled else "")
             + (rf" & RL $-$ control [{ci} CI]" if control else "")
             + r" \\", r"\midrule"]

    def diff(r, name):
        v = getattr(r, name)
        return "" if pd.isna(v) else f"{v:+.2f} [{getattr(r, name + '_lo'):+.2f}, {getattr(r, name + '_hi'):+.2f}]"

    for _, r in frame.iterrows():
        lines.append(f"{r.label} & {_fmt(r.accuracy)} [{_fmt(r.accuracy_lo)}, {_fmt(r.accuracy_hi)}] & "
                     + (f"{_fmt(r.sampled_accuracy)} [{_fmt(r.sampled_accuracy_lo)}, {_fmt(r.sampled_accuracy_hi)}] & "
                        if sampled else "")
                     + f"{_fmt(r.diag_rougeL)} & {_fmt(r.rec_rougeL)} & {_fmt(r.turns)} & "
                     f"{_fmt(r.repeated_question_rate)} & {_fmt(r.reward)} & {diff(r, 'diff_accuracy')}"
                     + (f" & {diff(r, 'diff_sampled_accuracy')}" if sampled else "")
                     + (f" & {diff(r, 'diff_control_accuracy')}" if control else "") + " \\\\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def _write(frame: pd.DataFrame, csv_out: str, tex_out: str, tex: str) -> None:
    """A table as CSV (atomically) and its LaTeX."""
    with atomic_file(csv_out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_text(tex_out, tex)


def write_rl_eval(frame: pd.DataFrame, csv_out: str, tex_out: str, level: float = 0.95) -> None:
    _write(frame, csv_out, tex_out, rl_eval_latex(frame, level))


# ------------------------------------------------------------------ the turn-budget ablation
BUDGET_METRICS = {"accuracy": "correct", "reward": "reward", "turns": "turns", "diagnosed_rate": "diagnosed"}


def _case_matrix(paths: list[str], key: str) -> tuple[list[str], np.ndarray]:
    """(case ids, values (seeds x cases)) of ``key`` over the consultations of each file."""
    per = [per_case(_read_jsonl(p), key) for p in paths]
    cases = sorted(per[0])
    if any(sorted(p) != cases for p in per):
        raise ValueError("the turn-budget ablation's doctors must consult the same held-out cases")
    return cases, np.array([[p[c] for c in cases] for p in per])


def _interval(values: np.ndarray, bs: dict[str, Any]) -> tuple[float, float]:
    rng = np.random.default_rng(bs["bootstrap_seed"])
    draws = values[rng.integers(0, len(values), size=(bs["bootstrap_samples"], len(values)))].mean(axis=1)
    alpha = (1 - bs["ci_level"]) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def turn_budget_frame(files: dict[tuple[str, int], list[str]], bootstrap: dict[str, Any]) -> pd.DataFrame:
    """``files``: (doctor kind: sft | fixed | dynamic | random, budget) -> the consultations of
    each seed (random: the random-question doctor, what a doctor without information scores)."""
    rows = []
    budgets = sorted({b for _, b in files})
    for kind in ("sft", "fixed", "dynamic", "random", "dynamic - fixed"):
        for b in budgets:
            if kind == "dynamic - fixed":
                if ("dynamic", b) not in files or ("fixed", b) not in files:
                    continue
                pair = [files[("dynamic", b)], files[("fixed", b)]]
            elif (kind, b) in files:
                pair = [files[(kind, b)]]
            else:
                continue
            row: dict[str, Any] = {"doctor": kind, "max_turns": b, "n_seeds": len(pair[0])}
            for m, key in BUDGET_METRICS.items():
                mats = [_case_matrix(p, key)[1] for p in pair]
                per_seed = mats[0].mean(axis=1) - (mats[1].mean(axis=1) if len(mats) > 1 else 0)
                case_values = mats[0].mean(axis=0) - (mats[1].mean(axis=0) if len(mats) > 1 else 0)
                row[f"{m}_mean"] = float(case_values.mean())
                row[f"{m}_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan")
                row[f"{m}_lo"], row[f"{m}_hi"] = _interval(case_values, bootstrap)
            rows.append(row)
    return pd.DataFrame(rows)


def budget_latex(frame: pd.DataFrame, level: float = 0.95) -> str:
    ci = ci_label(level, latex=True)
    lines = [r"\begin{tabular}{lrrrr}", r"\toprule",
             rf"doctor & turn budget & seeds & accuracy [{ci} CI] & reward [{ci} CI] \\", r"\midrule"]
    for _, r in frame.iterrows():
        sign = "+.2f" if r.doctor == "dynamic - fixed" else ".2f"  # accuracy is "--" on your own rows
        lines.append(f"{r.doctor} & {r.max_turns} & {r.n_seeds} & {_fmt(r.accuracy_mean, sign)} "
                     f"[{_fmt(r.accuracy_lo, sign)}, {_fmt(r.accuracy_hi, sign)}] & {_fmt(r.reward_mean, sign)} "
                     f"[{_fmt(r.reward_lo, sign)}, {_fmt(r.reward_hi, sign)}] \\\\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", ""])


def write_turn_budget(frame: pd.DataFrame, csv_out: str, tex_out: str, level: float = 0.95) -> None:
    _write(frame, csv_out, tex_out, budget_latex(frame, level))


def budget_figure(csv: str, outputs: list[str], level: float = 0.95) -> list[str]:
    """Accuracy and mean reward against the evaluation's turn budget: the SFT doctor, RL with a
    fixed and with a dynamic budget (mean over seeds, bootstrap band over cases at ``level``) and
    the random-question doctor (dashed, where the table has it)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    frame = pd.read_csv(csv)
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, m, ylabel in ((axes[0], "accuracy", "diagnosis accuracy"), (axes[1], "reward", "mean episode reward")):
        for i, kind in enumerate(("sft", "fixed", "dynamic", "random")):
            sub = frame[frame["doctor"] == kind].sort_values("max_turns")
            if sub.empty:
                continue
            label = {"sft": "SFT", "fixed": "RL, fixed budget", "dynamic": "RL, dynamic budget",
                     "random": "random-question doctor"}[kind]
            ax.plot(sub["max_turns"], sub[f"{m}_mean"], "o--" if kind == "random" else "o-", color=f"C{i}",
                    label=label)
            ax.fill_between(sub["max_turns"], sub[f"{m}_lo"], sub[f"{m}_hi"], color=f"C{i}", alpha=0.15)
        ax.set_xlabel("turn budget at evaluation")
        ax.set_ylabel(f"{ylabel}\n(mean over seeds, {ci_label(level)} bootstrap band)")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=7)
    return _save(fig, outputs)


def curves_figure(summaries: dict[str, str], outputs: list[str], random: dict[str, Any] | None = None,
                  budgets: dict[str, str] | None = None) -> list[str]:
    """Per RL run (fixed, dynamic): the training episodes' mean reward and each reward term
    against the step, and greedy accuracy on the val cases (step 0: the SFT doctor). ``random``
    (:func:`sft2rl.tasks.med.rl.random_doctor_curves`) and ``budgets`` ({run: fixed | dynamic}):
    the random-question doctor's reward on the train cases at the run's budget, and its val
    accuracy and success, dotted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from .reward import TERMS

    fig = Figure(figsize=(4.0 * len(summaries), 6.0), layout="constrained")
    axes = fig.subplots(2, len(summaries), squeeze=False)
    for col, (name, path) in enumerate(summaries.items()):
        hist = json.loads(Path(path).read_text())["history"]
        train = [h for h in hist if "episode_reward" in h]
        ax = axes[0][col]
        if train:
            steps = [h["step"] for h in train]
            ax.plot(steps, [h["episode_reward"] for h in train], color="k", lw=1.5, label="reward")
            for i, t in enumerate(TERMS):
                ax.plot(steps, [h[f"reward_{t}"] for h in train], lw=0.8, color=f"C{i}", label=t)
            rnd = (random or {}).get("train", {}).get((budgets or {}).get(name))
            if rnd:
                ax.axhline(rnd["episode_reward"], color="k", ls=":", lw=1.2, label="random doctor: reward")
        ax.set_title(name)
        ax.set_xlabel("RL step")
        ax.set_ylabel("training episodes (sampled)")
        ax = axes[1][col]
        val = [h for h in hist if "val_accuracy" in h]
        if val:
            ax.plot([h["step"] for h in val], [h["val_accuracy"] for h in val], "o-", color="C0", label="accuracy")
            ax.plot([h["step"] for h in val], [h["val_success"] for h in val], "s--", color="C1",
                    label="success (reward >= threshold)")
            rnd = (random or {}).get("val")
            if rnd:
                if "accuracy" in rnd:
                    ax.axhline(rnd["accuracy"], color="C0", ls=":", lw=1.2, label="random doctor: accuracy")
                ax.axhline(rnd["success"], color="C1", ls=":", lw=1.2, label="random doctor: success")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("RL step")
        ax.set_ylabel("val cases (greedy)")
    axes[0][0].legend(fontsize=6)
    axes[1][0].legend(fontsize=7)
    return _save(fig, outputs)
