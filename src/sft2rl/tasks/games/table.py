"""The games tables: results/games/sft_eval.csv (every policy on the test levels) and
results/games/rl_eval.csv (SFT against RL, paired per level), their LaTeX versions and figures."""
from __future__ import annotations

import json
from pathlib import Path
import pandas as pd

from ...io import atomic_file, write_text
from ...stats import ci_label, paired_difference

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


def _tabular(align: str, header: str, body: list[str]) -> str:
    return "\n".join([rf"\begin{{tabular}}{{{align}}}", r"\toprule", header + r" \\", r"\midrule",
                      *[line + r" \\" for line in body], r"\bottomrule", r"\end{tabular}", ""])


def latex(frame: pd.DataFrame, level: float = 0.95) -> str:
    """The play table's LaTeX: success with its interval, valid actions, bad format, steps over
    the BFS optimum, and the optimal-action rate (teacher-forced on the solver's path states)
    with its no-information value beside it in brackets (``chance_optimal_action_rate``: a
    uniformly random action on the same states)."""
    body = [f"{r.env} & {r.policy} & {r['mode']} & {_fmt(r.success)} [{_fmt(r.success_lo)}, "
            f"{_fmt(r.success_hi)}] & {_fmt(r.valid_action_rate)} & {_fmt(r.invalid_format_rate)} & "
            f"{_fmt(r.steps_over_optimal)} & {_fmt(r.optimal_action_rate)} ({_fmt(r.chance_optimal_action_rate)})"
            for _, r in frame.iterrows()]
    return _tabular("lllrrrrr", rf"env & policy & mode & success [{ci_label(level, latex=True)} CI] & valid act. & "
                    r"bad format & steps/opt. & opt. action (chance)", body)


def write_table(summaries: list[str], csv_out: str, tex_out: str, level: float = 0.95) -> pd.DataFrame:
    frame = collect(summaries)
    with atomic_file(csv_out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_text(tex_out, latex(frame, level))
    return frame


def success_figure(csv: str, outputs: list[str], level: float = 0.95) -> list[str]:
    """Success rate per policy (greedy and sampled), one panel per env, the intervals (at
    ``level``) as error bars."""
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
    # greedy: one episode per level, a Wilson interval; sampled: k per level, a bootstrap over levels
    axes[0][0].set_ylabel(f"success rate ({ci_label(level)} CI: Wilson\nfor greedy, bootstrap over levels for sampled)")
    stems = {str(Path(o).with_suffix("")) for o in outputs}
    return [path for stem in sorted(stems) for path in save_figure(fig, stem)]


# ------------------------------------------------------------------ RL: results/games/rl_eval.csv
RL_COLUMNS = ["env", "mode", "levels", "episodes", "sft_success", "sft_lo", "sft_hi", "rl_success", "rl_lo", "rl_hi",
              "diff", "diff_lo", "diff_hi", "random_success", "random_lo", "random_hi", "sft_timeout_rate",
              "rl_timeout_rate", "random_timeout_rate", "sft_invalid_format_rate", "rl_invalid_format_rate", "rl_steps",
              "rl_seconds"]


def _per_level(episodes: str, mode: str) -> dict[int, float]:
    by: dict[int, list[float]] = {}
    for line in Path(episodes).read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["mode"] == mode:
            by.setdefault(r["level"], []).append(float(r["won"]))
    return {lv: sum(v) / len(v) for lv, v in by.items()}


def rl_rows(env: str, files: dict[str, str], bootstrap: dict) -> list[dict]:
    """One row per play mode: SFT and RL on the test levels, their paired difference, random's
    success. ``files``: the play summaries and episodes of ``sft`` and ``rl`` (``sft_episodes``,
    ``rl_episodes``), the ``random`` summary and the RL run's ``train`` summary."""
    sft_rows = {r["mode"]: r for r in json.loads(Path(files["sft"]).read_text())}
    rl_rows_ = {r["mode"]: r for r in json.loads(Path(files["rl"]).read_text())}
    rnd = json.loads(Path(files["random"]).read_text())[0]
    summ = json.loads(Path(files["train"]).read_text())
    out = []
    for mode in sorted(set(sft_rows) & set(rl_rows_)):
        s, r = sft_rows[mode], rl_rows_[mode]
        diff, lo, hi = paired_difference(_per_level(files["sft_episodes"], mode), _per_level(files["rl_episodes"], mode),
                                         samples=bootstrap["bootstrap_samples"], level=bootstrap["ci_level"],
                                         seed=bootstrap["bootstrap_seed"])
        out.append({"env": env, "mode": mode, "levels": s["levels"], "episodes": s["episodes"],
                    "sft_success": s["success"], "sft_lo": s["success_lo"], "sft_hi": s["success_hi"],
                    "rl_success": r["success"], "rl_lo": r["success_lo"], "rl_hi": r["success_hi"],
                    "diff": diff, "diff_lo": lo, "diff_hi": hi, "random_success": rnd["success"],
                    "random_lo": rnd["success_lo"], "random_hi": rnd["success_hi"],
                    "sft_timeout_rate": s["timeout_rate"], "rl_timeout_rate": r["timeout_rate"],
                    "random_timeout_rate": rnd["timeout_rate"],  # (random always answers in format)
                    "sft_invalid_format_rate": s["invalid_format_rate"],
                    "rl_invalid_format_rate": r["invalid_format_rate"], "rl_steps": summ["steps"],
                    "rl_seconds": summ["seconds"]})
    return out


def rl_latex(frame: pd.DataFrame, lead: tuple[tuple[str, str], ...] = (), level: float = 0.95) -> str:
    """The RL table's LaTeX; ``lead``: (column, header) pairs shown after the env; ``level``: the
    intervals' level."""
    body = [" & ".join([r.env, *[str(r[c]) for c, _ in lead], r["mode"]]) +
            f" & {_fmt(r.sft_success)} [{_fmt(r.sft_lo)}, {_fmt(r.sft_hi)}] & "
            f"{_fmt(r.rl_success)} [{_fmt(r.rl_lo)}, {_fmt(r.rl_hi)}] & {r['diff']:+.2f} "
            f"[{r.diff_lo:+.2f}, {r.diff_hi:+.2f}] & {_fmt(r.random_success)}" for _, r in frame.iterrows()]
    header = " & ".join(["env", *[h for _, h in lead], "mode"])
    ci = ci_label(level, latex=True)
    return _tabular("l" + "r" * len(lead) + "lrrrr",
                    header + rf" & SFT [{ci} CI] & RL [{ci} CI] & RL $-$ SFT [{ci} CI] & random", body)


def write_rl_table(rows: list[dict], csv_out: str, tex_out: str, level: float = 0.95) -> pd.DataFrame:
    frame = pd.DataFrame(rows)[RL_COLUMNS].sort_values(["env", "mode"], kind="stable").reset_index(drop=True)
    with atomic_file(csv_out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_text(tex_out, rl_latex(frame, level=level))
    return frame


ABLATION_RL_INIT_COLUMNS = ["env", "sft_levels", "sft_rows", *RL_COLUMNS[1:]]


def write_ablation_rl_init(rows: list[dict], csv_out: str, tex_out: str, level: float = 0.95) -> pd.DataFrame:
    """results/games/ablation_rl_init.csv: RL from SFT models of different strength (SFT on the
    first ``sft_levels`` train levels; the largest is the main run), per env and play mode:
    SFT and RL success on the test levels, the paired per-level difference, random beside them."""
    frame = pd.DataFrame(rows)[ABLATION_RL_INIT_COLUMNS].sort_values(["env", "sft_levels", "mode"], kind="stable")
    frame = frame.reset_index(drop=True)
    with atomic_file(csv_out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_text(tex_out, rl_latex(frame, lead=(("sft_levels", "SFT levels"),), level=level))
    return frame


def rl_curve_figure(summaries: dict[str, str], outputs: list[str],
                    random: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Greedy success on the val levels against the RL step (step 0: the SFT model), one panel
    per env, and the training episodes' success beside it; ``random`` ({env:
    :func:`sft2rl.tasks.games.play.random_baselines`}): the random policy's on the same levels,
    dotted."""
    from ...plots import _figure, save_figure

    fig, axes = _figure(1, len(summaries), figsize=(4.2 * len(summaries), 3.2))
    for ax, (env, path) in zip(axes[0], summaries.items()):
        hist = json.loads(Path(path).read_text())["history"]
        val = [(h["step"], h["val_success"]) for h in hist if "val_success" in h]
        train = [(h["step"], h["success"]) for h in hist if "success" in h]
        if train:
            ax.plot(*zip(*train), color="C7", lw=1, label="train episodes (sampled)")
        if val:
            ax.plot(*zip(*val), "o-", color="C0", label="val levels (greedy)")
            ax.axhline(val[0][1], color="C1", ls="--", lw=1, label="SFT (step 0)")
        base = (random or {}).get(env)
        if base and train:
            ax.axhline(base["train"], color="C7", ls=":", lw=1.2, label="random policy, train levels")
        if base and val:
            ax.axhline(base["val"], color="C0", ls=":", lw=1.2, label="random policy, val levels")
        ax.set_title(env)
        ax.set_xlabel("RL step")
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("success rate")
    axes[0][0].legend(fontsize=7)
    stems = {str(Path(o).with_suffix("")) for o in outputs}
    return [path for stem in sorted(stems) for path in save_figure(fig, stem)]
