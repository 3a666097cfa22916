"""The games table (results/games/sft_eval.csv), its LaTeX version and the success figure."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ...io import atomic_file, write_text

POLICY_ORDER = {"sft": 0, "base": 1, "random": 2, "bfs": 3}
COLUMNS = ["env", "policy", "mode", "episodes", "levels", "max_steps", "success", "success_lo", "success_hi", "ci",
           "valid_action_rate", "invalid_format_rate", "timeout_rate", "mean_steps_solved", "steps_over_optimal",
           "optimal_action_rate", "chance_optimal_action_rate", "path_states"]


def collect(summaries: list[str]) -> pd.DataFrame:
    rows = [row for path in summaries for row in json.loads(Path(path).read_text())]
    frame = pd.DataFrame(rows)[COLUMNS]
    frame["_order"] = frame["policy"].map(POLICY_ORDER)
    frame = frame.sort_values(["env", "_order", "mode"], kind="stable").drop(columns="_order")
    return frame.reset_index(drop=True)


def _fmt(x: float) -> str:
    return "--" if pd.isna(x) else f"{x:.2f}"


def latex(frame: pd.DataFrame) -> str:
    lines = [r"\begin{tabular}{lllrrrrr}", r"\toprule",
             r"env & policy & mode & success [95\% CI] & valid act. & bad format & steps/opt. & opt. action \\",
             r"\midrule"]
    for _, r in frame.iterrows():
        lines.append(f"{r.env} & {r.policy} & {r['mode']} & {_fmt(r.success)} [{_fmt(r.success_lo)}, "
                     f"{_fmt(r.success_hi)}] & {_fmt(r.valid_action_rate)} & {_fmt(r.invalid_format_rate)} & "
                     f"{_fmt(r.steps_over_optimal)} & {_fmt(r.optimal_action_rate)} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_table(summaries: list[str], csv_out: str, tex_out: str) -> pd.DataFrame:
    frame = collect(summaries)
    with atomic_file(csv_out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_text(tex_out, latex(frame))
    return frame


def success_figure(csv: str, outputs: list[str]) -> list[str]:
    """Success rate per policy (greedy and sampled), one panel per env, 95% intervals as error bars."""
    from ...plots import _figure, save_figure

    frame = pd.read_csv(csv)
    envs = list(dict.fromkeys(frame["env"]))
    fig, axes = _figure(1, len(envs), figsize=(4.2 * len(envs), 3.2))
    for ax, env in zip(axes[0], envs):
        sub = frame[frame["env"] == env].reset_index(drop=True)
        labels = [f"{p}\n{m}" for p, m in zip(sub["policy"], sub["mode"])]
        err = [sub["success"] - sub["success_lo"], sub["success_hi"] - sub["success"]]
        ax.bar(range(len(sub)), sub["success"], yerr=err, capsize=3,
               color=["C0" if p == "sft" else "C1" if p == "base" else "C7" for p in sub["policy"]])
        ax.set_xticks(range(len(sub)), labels, fontsize=7)
        ax.set_title(env)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("success rate (95% CI)")
    stems = {str(Path(o).with_suffix("")) for o in outputs}
    return [path for stem in sorted(stems) for path in save_figure(fig, stem)]
