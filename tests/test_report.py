"""Figures and paper: synthetic ablation tables and TensorBoard logs in, 12 figure files and a PDF out."""
from __future__ import annotations

import json
import math
import os
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from sft2rl import paper as paper_mod
from sft2rl import plots
from sft2rl.tasks.qa.runs import rl_name, sft_name
from sft2rl.tasks.qa.tables import build_table, write_table

REPO = Path(__file__).resolve().parents[1]
SFT = sft_name(50, 42)
RUNS = [rl_name(SFT, 0.3, 1), rl_name(SFT, 0.5, 1), rl_name(SFT, 0.5, 2), rl_name("base", 0.5, 1)]


# ------------------------------------------------------------------ synthetic inputs
def _write_events(tb_dir: Path, name_time: int, points: dict[str, list[tuple[int, float]]], purge_step=None) -> None:
    """One event file in tb_dir, named as if created at unix time ``name_time`` (fixes the file order)."""
    from torch.utils.tensorboard import SummaryWriter

    scratch = tb_dir.parent / f".scratch-{name_time}"
    w = SummaryWriter(str(scratch), purge_step=purge_step)
    for tag, series in points.items():
        for step, value in series:
            w.add_scalar(tag, value, step)
    w.close()
    (src,) = scratch.glob("events.out.tfevents.*")
    tb_dir.mkdir(parents=True, exist_ok=True)
    src.rename(tb_dir / f"events.out.tfevents.{name_time:010d}.testhost.1.0")
    scratch.rmdir()


def _records(seed: int, shift: float, n: int = 20) -> list[dict]:
    """Evaluation records of one fake model: half the questions unknowable; more shift, more right answers."""
    import random

    rng = random.Random(seed * 1000 + int(shift * 100))
    recs = []
    for i in range(n):
        knowable = i % 2 == 0
        block = rng.random() < (0.2 if knowable else 0.7)
        samples = [rng.random() < (0.2 if knowable else 0.7) for _ in range(4)]
        correct = knowable and rng.random() < 0.3 + shift
        recs.append({"index": i, "knowable": knowable, "greedy_correct": correct, "greedy_think": True,
                     "greedy_proactive": block, "sample_proactive": samples, "sample_format": samples,
                     "reward": float(correct) + 0.05,
                     # the kind-only policy (the same for every model): every 4th question right
                     "kind_only_correct": i % 4 == 0, "kind_only_reward": 0.6 + 0.45 * (i % 4 == 0)})
    return recs


def _write_ablations(root: Path) -> dict[str, str]:
    """Ablation CSV + LaTeX built by the real sft2rl.tasks.qa.tables code from fake evaluation records."""
    n = 0

    def group(variant, kind, models, shift, ref=None):
        nonlocal n
        files = []
        for i, _ in enumerate(models):
            n += 1
            f = root / "eval" / f"{n}.jsonl"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("".join(json.dumps(r) + "\n" for r in _records(i, shift)))
            files.append(str(f))
        return dict(variant=variant, kind=kind, models=models, answers=files,
                    ref_answers=ref["answers"][0] if ref else None)

    seeds = [1, 2, 3]
    sft_only = group("sft-only", "sft-only", [SFT], 0.0)
    base_only = group("base-only", "base-only", ["base"], 0.0)
    sft_rows = {k: group(f"N={k} sft-only", "sft-only", [sft_name(k, 42)], 0.0) for k in (25, 50)}
    groups = {
        "beta": [sft_only]
        + [group(f"beta={b:g}", "rl", [rl_name(SFT, b, s) for s in seeds], b / 2, sft_only) for b in (0.3, 0.5, 0.7)],
        "sft_samples": [g for k in (25, 50) for g in (
            sft_rows[k], group(f"N={k}", "rl", [rl_name(sft_name(k, 42), 0.5, s) for s in seeds], 0.2, sft_rows[k]))],
        # one seed per RL row: std is NaN, the figures must cope
        "sft": [base_only, group("sft-only", "sft-only", [SFT], 0.1),
                group("RL from base", "rl", [rl_name("base", 0.5, 1)], 0.2, base_only),
                group("RL from SFT", "rl", [rl_name(SFT, 0.5, 1)], 0.3, sft_only)],
        "sft_style": [sft_only, group("hedge_only", "rl", [rl_name(SFT, 0.5, s) for s in seeds], 0.2, sft_only),
                      block_only := group("always_block sft-only", "sft-only", [sft_name(50, 42, "always_block")], 0.0),
                      group("always_block", "rl", [rl_name(sft_name(50, 42, "always_block"), 0.5, s) for s in seeds],
                            0.1, block_only)],
    }
    tables = {}
    for name, gs in groups.items():
        csv = root / "results" / f"ablation_{name}.csv"
        write_table(build_table(name, gs, {"bootstrap_samples": 200}), str(csv),
                    str(root / "results" / "tables" / f"ablation_{name}.tex"))
        tables[name] = str(csv)
    answers = {g["variant"]: g["answers"] for g in groups["beta"]}
    (root / "answers.json").write_text(json.dumps(answers))
    return tables


def _write_runs(root: Path) -> dict[str, str]:
    dirs = {}
    for k, run in enumerate(RUNS):
        tb = root / "results" / "rl" / run / "tensorboard"
        steps = range(1, 13)
        _write_events(tb, 1_700_000_000, {"rl/reward_mean": [(s, 0.125 * k + s / 16) for s in steps],
                                          "rl/kl": [(s, s / 1024) for s in steps]})
        dirs[run] = str(tb)
    dirs[rl_name(SFT, 0.7, 3)] = str(root / "results" / "rl" / "missing" / "tensorboard")  # no logs at all
    return dirs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    tables = _write_ablations(root)
    tb_dirs = _write_runs(root)
    out = root / "results" / "figures"
    answers = json.loads((root / "answers.json").read_text())
    written = plots.make_figures(tables, tb_dirs, out, answers=answers)
    _write_games(root)
    _write_med(root)
    return root, out, written


def _write_med(root):
    """The medical tables and figure from synthetic summaries, through the medical task's own writers."""
    from types import SimpleNamespace

    from sft2rl.tasks.med import table as med_table
    from sft2rl.tasks.med.table import METRICS

    runs = {f"med-doctor-{t}-seed{s}": {"with_thinking": t == "think", "seed": s}
            for t in ("think", "nothink") for s in (1, 2, 3)}
    doctors = ["base", "med-doctor-think-seed1", "med-doctor-nothink-seed1", "scripted", "random"]
    summaries = []
    for k, doctor in enumerate(dict.fromkeys(doctors + list(runs))):
        rows = [{"doctor": doctor, "category": cat, "cases": 30, "accuracy": 0.1 * k, "accuracy_lo": 0.05 * k,
                 "accuracy_hi": min(1.0, 0.15 * k), **{m: 0.5 for m in METRICS[1:]}} for cat in ("all", "skin")]
        path = root / f"med_{doctor}.json"
        path.write_text(json.dumps(rows))
        summaries.append(str(path))
    out = SimpleNamespace(eval=str(root / "results/med/eval.csv"), ablation=str(root / "results/med/ablation.csv"),
                          tex=str(root / "results/tables/med_eval.tex"),
                          ablation_tex=str(root / "results/tables/med_ablation_thinking.tex"))
    med_table.write_tables(summaries, doctors, runs, out)
    med_table.figure(out.eval, out.ablation, [str(root / f"results/figures/med_eval.{e}") for e in ("png", "pdf")])
    _write_med_rl(root)


def _med_records(n: int, correct: int, reward: float, turns: int = 3) -> list[dict]:
    from sft2rl.tasks.med.reward import TERMS

    return [{"case": str(i), "correct": i < correct, "reward": reward, "turns": turns, "diagnosed": True,
             **{f"reward_{t}": (reward if t == "diagnosis" else 0.0) for t in TERMS}} for i in range(n)]


#: the random-question doctor on the RL curves' cases (rl.random_doctor_curves' shape)
MED_RANDOM = {"val": {"accuracy": 0.1, "success": 0.05, "episode_reward": 2.0},
              "train": {"fixed": {"episode_reward": 1.5}, "dynamic": {"episode_reward": 1.75}}}


def test_med_rl_curves_draw_the_random_doctor_on_the_same_cases(tmp_path, monkeypatch):
    """Beside each run's training reward, the random doctor's on the train cases at that run's
    budget (fixed or dynamic); beside the val accuracy and success, its own; dotted; none
    without it."""
    from sft2rl.tasks.med import rl_table
    from sft2rl.tasks.med.reward import TERMS

    hist = [{"step": 0, "val_accuracy": 0.3, "val_success": 0.1},
            {"step": 1, "episode_reward": 4.0, **{f"reward_{t}": 0.1 for t in TERMS}, "val_accuracy": 0.4,
             "val_success": 0.2}]
    runs = {}
    for run in ("rl-fixed-seed1", "rl-dynamic-seed1"):
        runs[run] = str(tmp_path / f"{run}.json")
        Path(runs[run]).write_text(json.dumps({"history": hist}))
    figs = _captured(monkeypatch, rl_table, "_save")
    budgets = {"rl-fixed-seed1": "fixed", "rl-dynamic-seed1": "dynamic"}
    rl_table.curves_figure(runs, [str(tmp_path / "x.png")], MED_RANDOM, budgets)
    top, bottom = figs[0].axes[:2], figs[0].axes[2:]

    def dotted(ax):
        return {ln.get_label(): float(ln.get_ydata()[0]) for ln in ax.get_lines() if ln.get_linestyle() == ":"}

    assert [dotted(ax) for ax in top] == [{"random doctor: reward": 1.5}, {"random doctor: reward": 1.75}]
    assert all(dotted(ax) == {"random doctor: accuracy": 0.1, "random doctor: success": 0.05} for ax in bottom)
    figs.clear()
    rl_table.curves_figure(runs, [str(tmp_path / "x.png")])
    assert not any(dotted(ax) for ax in figs[0].axes)


def _write_med_rl(root):
    """The medical RL table, the turn-budget ablation and their figures, from synthetic
    consultations and RL summaries, through the medical task's own writers; checks the
    paired differences on them."""
    from sft2rl.tasks.med import rl_table
    from sft2rl.tasks.med.reward import TERMS

    bs = {"bootstrap_samples": 500, "ci_level": 0.95, "bootstrap_seed": 0}
    doctors = {"base": (0, -15.0), "med-doctor-nothink-seed1": (10, 4.0), "rl-fixed-seed1": (14, 6.0),
               "rl-dynamic-seed1": (16, 6.5), "rl-fixed-control-seed1": (7, 3.5), "scripted": (30, 10.5),
               "random": (2, 3.0)}
    # the sampled evaluation, k = 2 per case: (correct, reward) of the second sample (the first
    # is the greedy consultation's); per-case means SFT 11/30 and 4.5, RL fixed 17/30 and 7.0,
    # control 8/30 and 3.5
    second = {"med-doctor-nothink-seed1": (12, 5.0), "rl-fixed-seed1": (20, 8.0), "rl-fixed-control-seed1": (9, 3.5)}
    summaries, consultations, sampled, train = {}, {}, {}, {}
    for doctor, (correct, reward) in doctors.items():
        recs = _med_records(30, correct, reward)
        consultations[doctor] = root / f"med_rl_{doctor}.jsonl"
        consultations[doctor].write_text("".join(json.dumps(r) + "\n" for r in recs))
        sampled[doctor] = root / f"med_rl_sampled_{doctor}.jsonl"
        sampled[doctor].write_text("".join(json.dumps(dict(r, sample=j)) + "\n" for j, part in
                                           enumerate((recs, _med_records(30, *second.get(doctor, (correct, reward)))))
                                           for r in part))
        summaries[doctor] = root / f"med_rl_{doctor}.json"
        summaries[doctor].write_text(json.dumps([{"doctor": doctor, "category": "all", "cases": 30,
                                                  "accuracy": correct / 30, "accuracy_lo": 0.0, "accuracy_hi": 1.0,
                                                  "reward": reward, "success_rate": 0.0}]))
        if doctor.startswith("rl-"):
            hist = [{"step": 0, "val_accuracy": 0.3, "val_success": 0.1}] + [
                {"step": s, "episode_reward": 4 + s / 10, **{f"reward_{t}": 0.1 * s for t in TERMS}} for s in (1, 2, 3)]
            train[doctor] = root / f"med_rl_train_{doctor}.json"
            train[doctor].write_text(json.dumps({"steps": 3, "seconds": 60.0, "history": hist + [
                {"step": 3, "val_accuracy": 0.4, "val_success": 0.2}]}))
    infos = {"med-doctor-nothink-seed1": {"with_thinking": False, "seed": 1},
             "rl-fixed-seed1": {"with_thinking": False, "budget": "fixed", "seed": 1},
             "rl-dynamic-seed1": {"with_thinking": False, "budget": "dynamic", "seed": 1},
             "rl-fixed-control-seed1": {"with_thinking": False, "budget": "fixed", "seed": 1, "control": True}}
    frame = rl_table.rl_eval_frame({k: str(v) for k, v in summaries.items()},
                                   {k: str(v) for k, v in consultations.items()}, "med-doctor-nothink-seed1", infos,
                                   {k: str(v) for k, v in train.items()}, bs, {k: str(v) for k, v in sampled.items()})
    rl_table.write_rl_eval(frame, str(root / "results/med/rl_eval.csv"), str(root / "results/tables/med_rl_eval.tex"))
    fixed = frame.set_index("doctor").loc["rl-fixed-seed1"]
    # every case: +4/30 accuracy on 4 of the 30 cases, reward +2 on all
    assert fixed["diff_accuracy"] == pytest.approx(4 / 30) and fixed["diff_reward"] == pytest.approx(2.0)
    assert fixed["diff_reward_lo"] == pytest.approx(2.0) and fixed["diff_accuracy_lo"] < 4 / 30 < fixed["diff_accuracy_hi"]
    assert fixed["label"] == "RL, fixed budget" and fixed["rl_steps"] == 3
    # RL - its no-signal control (same budget and seed): +7/30 accuracy, +2.5 reward; the control
    # itself and the dynamic run (no control of its budget) have no such difference
    assert fixed["diff_control_accuracy"] == pytest.approx(7 / 30) and fixed["diff_control_reward"] == pytest.approx(2.5)
    assert fixed["diff_control_accuracy_lo"] < 7 / 30 < fixed["diff_control_accuracy_hi"]
    control = frame.set_index("doctor").loc["rl-fixed-control-seed1"]
    assert control["label"] == "RL, fixed budget, no-signal control"
    assert control["diff_accuracy"] == pytest.approx(-3 / 30) and math.isnan(control["diff_control_accuracy"])
    assert frame.set_index("doctor")["diff_control_accuracy"].drop("rl-fixed-seed1").isna().all()
    # sampled: per-case means over the k consultations, bootstrapped over cases; the same paired
    # differences on them
    rows = frame.set_index("doctor")
    assert (rows["k_samples"] == 2).all() and rows.loc["med-doctor-nothink-seed1", "sampled_accuracy"] == \
        pytest.approx(11 / 30) and math.isnan(rows.loc["med-doctor-nothink-seed1", "diff_sampled_accuracy"])
    assert fixed["sampled_accuracy"] == pytest.approx(17 / 30) and fixed["sampled_reward"] == pytest.approx(7.0)
    assert fixed["sampled_accuracy_lo"] < 17 / 30 < fixed["sampled_accuracy_hi"]
    assert rows.loc["scripted", "sampled_accuracy_lo"] == rows.loc["scripted", "sampled_accuracy_hi"] == 1.0
    assert fixed["diff_sampled_accuracy"] == pytest.approx(6 / 30) and fixed["diff_sampled_reward"] == pytest.approx(2.5)
    assert fixed["diff_sampled_accuracy_lo"] < 6 / 30 < fixed["diff_sampled_accuracy_hi"]
    assert fixed["diff_control_sampled_accuracy"] == pytest.approx(9 / 30)
    assert fixed["diff_control_sampled_reward"] == pytest.approx(3.5)
    assert math.isnan(control["diff_control_sampled_accuracy"])
    tex = (root / "results/tables/med_rl_eval.tex").read_text()
    assert "RL $-$ control" in tex and "+0.23 [" in tex and tex.count("\\\\") == len(frame) + 1
    assert "sampled ($k=2$)" in tex and "+0.20 [" in tex and "0.57 [" in tex
    assert tex.splitlines()[0] == r"\begin{tabular}{l" + "r" * 10 + "}"
    rl_table.curves_figure({k: str(v) for k, v in train.items()},
                           [str(root / f"results/figures/med_rl_curves.{e}") for e in ("png", "pdf")],
                           MED_RANDOM, {d: infos[d]["budget"] for d in train})
    files = {}
    for kind, doctor in (("sft", "med-doctor-nothink-seed1"), ("fixed", "rl-fixed-seed1"),
                         ("dynamic", "rl-dynamic-seed1"), ("random", "random")):
        for t in (2, 8):
            files[(kind, t)] = [str(consultations[doctor])] * (2 if kind in ("fixed", "dynamic") else 1)
    ab = rl_table.turn_budget_frame(files, bs)
    rl_table.write_turn_budget(ab, str(root / "results/med/ablation_turn_budget.csv"),
                               str(root / "results/tables/med_ablation_turn_budget.tex"))
    diff = ab[(ab["doctor"] == "dynamic - fixed") & (ab["max_turns"] == 2)].iloc[0]
    assert diff["accuracy_mean"] == pytest.approx(2 / 30) and diff["reward_mean"] == pytest.approx(0.5)
    assert list(ab["doctor"].unique()) == ["sft", "fixed", "dynamic", "random", "dynamic - fixed"]
    rnd = ab[(ab["doctor"] == "random") & (ab["max_turns"] == 2)].iloc[0]
    assert rnd["accuracy_mean"] == pytest.approx(2 / 30) and rnd["n_seeds"] == 1
    rl_table.budget_figure(str(root / "results/med/ablation_turn_budget.csv"),
                           [str(root / f"results/figures/med_turn_budget.{e}") for e in ("png", "pdf")])


def _write_games(root):
    """The games table and figure from synthetic summaries, through the games' own writers."""
    from sft2rl.tasks.games import table as games_table

    summaries = []
    for env in ("sokoban", "frozenlake"):
        rows = []
        for policy, mode, success in (("sft", "greedy", 0.4), ("sft", "sampled", 0.35), ("base", "greedy", 0.0),
                                      ("random", "sampled", 0.2), ("bfs", "greedy", 1.0)):
            rows.append({"env": env, "policy": policy, "mode": mode, "episodes": 100, "levels": 100, "max_steps": 15,
                         "success": success, "success_lo": max(0.0, success - 0.1),
                         "success_hi": min(1.0, success + 0.1), "ci": "wilson", "valid_action_rate": 1.0,
                         "invalid_format_rate": 0.0, "timeout_rate": 1.0 - success, "mean_steps_solved": 4.0,
                         "steps_over_optimal": 1.2,
                         "optimal_action_rate": 0.5, "chance_optimal_action_rate": 0.3, "path_states": 300})
        path = root / f"games_{env}.json"
        path.write_text(json.dumps(rows))
        summaries.append(str(path))
    games_table.write_table(summaries, str(root / "results/games/sft_eval.csv"),
                            str(root / "results/tables/games_sft_eval.tex"))
    games_table.success_figure(str(root / "results/games/sft_eval.csv"),
                               [str(root / "results/figures/games_success.png"),
                                str(root / "results/figures/games_success.pdf")])
    # the RL table and curve, from synthetic play episodes and RL summaries
    rows, train = [], {}
    for env in ("sokoban", "frozenlake"):
        files = {}
        for policy, p_win in (("sft", 0.4), ("rl", 0.5)):
            eps = [{"level": lv, "mode": mode, "won": (lv * 7 + k) % 10 < 10 * p_win}
                   for mode, k_n in (("greedy", 1), ("sampled", 2)) for lv in range(20) for k in range(k_n)]
            (root / f"{env}_{policy}.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
            summ = [{"mode": m, "levels": 20, "episodes": 20 * k_n, "success": p_win, "success_lo": p_win - 0.2,
                     "success_hi": p_win + 0.2, "timeout_rate": 0.1, "invalid_format_rate": 0.0}
                    for m, k_n in (("greedy", 1), ("sampled", 2))]
            (root / f"{env}_{policy}.json").write_text(json.dumps(summ))
            files.update({policy: str(root / f"{env}_{policy}.json"), f"{policy}_episodes": str(root / f"{env}_{policy}.jsonl")})
        (root / f"{env}_random.json").write_text(json.dumps([{"success": 0.2, "success_lo": 0.1, "success_hi": 0.3,
                                                               "timeout_rate": 0.5}]))
        hist = [{"step": 0, "val_success": 0.4}] + [{"step": s, "success": 0.4 + s / 100, **({"val_success": 0.5} if s % 5 == 0 else {})}
                                                     for s in range(1, 11)]
        (root / f"{env}_rl_summary.json").write_text(json.dumps({"steps": 10, "seconds": 60.0, "history": hist}))
        files.update(random=str(root / f"{env}_random.json"), train=str(root / f"{env}_rl_summary.json"))
        train[env] = files["train"]
        rows += games_table.rl_rows(env, files, {"bootstrap_samples": 200, "ci_level": 0.95, "bootstrap_seed": 0})
    frame = games_table.write_rl_table(rows, str(root / "results/games/rl_eval.csv"),
                                       str(root / "results/tables/games_rl_eval.tex"))
    assert frame["diff"].tolist() == pytest.approx([0.1] * 4) and (frame["diff_lo"] <= 0.1).all()
    # every level's RL - SFT is >= 0 in these episodes: a paired interval cannot reach below 0 or stop at the mean
    assert (frame["diff_lo"] >= 0).all() and (frame["diff_hi"] > 0.1).all()
    games_table.rl_curve_figure(train, [str(root / "results/figures/games_rl_success.png"),
                                        str(root / "results/figures/games_rl_success.pdf")],
                                {env: {"val": 0.05, "train": 0.1} for env in train})


def test_games_rl_curves_draw_the_random_policy_on_the_same_levels(tmp_path, monkeypatch):
    """Beside the val success (greedy) and the training episodes' success, the random policy's on
    the val and the train levels: dotted lines in the curves' colours; none without it."""
    from sft2rl.tasks.games import table as games_table

    hist = [{"step": 0, "val_success": 0.4}] + [{"step": s, "success": 0.5, "val_success": 0.6} for s in (1, 2)]
    (tmp_path / "s.json").write_text(json.dumps({"history": hist}))
    figs = _captured(monkeypatch)  # rl_curve_figure saves through plots.save_figure
    games_table.rl_curve_figure({"sokoban": str(tmp_path / "s.json")}, [str(tmp_path / "x.png")],
                                {"sokoban": {"val": 0.05, "train": 0.125}})
    ax = figs[0].axes[0]
    dotted = {ln.get_label(): (float(ln.get_ydata()[0]), ln.get_color()) for ln in ax.get_lines()
              if ln.get_linestyle() == ":"}
    colour = {ln.get_label(): ln.get_color() for ln in ax.get_lines()}
    assert dotted == {"random policy, val levels": (0.05, colour["val levels (greedy)"]),
                      "random policy, train levels": (0.125, colour["train episodes (sampled)"])}
    figs.clear()
    games_table.rl_curve_figure({"sokoban": str(tmp_path / "s.json")}, [str(tmp_path / "x.png")])
    assert not [ln for ln in figs[0].axes[0].get_lines() if ln.get_linestyle() == ":"]


# ------------------------------------------------------------------ curve reader
def test_read_scalars_exact_steps_and_values(tmp_path):
    tb = tmp_path / "tb"
    reward = [(s, s * 0.25) for s in range(1, 8)]
    kl = [(s, -s / 8) for s in range(1, 8)]
    _write_events(tb, 1_700_000_000, {"rl/reward_mean": reward, "rl/kl": kl})
    got = plots.read_scalars(tb)
    assert got["rl/reward_mean"] == reward
    assert got["rl/kl"] == kl
    assert plots.load_curves({"a": tb, "b": tmp_path / "nothing"}, "rl/kl") == {"a": kl}
    assert plots.read_scalars(tmp_path / "nothing") == {}


def test_later_event_file_overrides_repeated_steps(tmp_path):
    tb = tmp_path / "tb"
    # a second file, created later, logs steps 4..7 again (no purge marker): it wins for 4 and 5
    _write_events(tb, 1_700_000_000, {"rl/reward_mean": [(s, 1.0 + s) for s in range(1, 6)]})
    _write_events(tb, 1_700_000_100, {"rl/reward_mean": [(s, 100.0 + s) for s in range(4, 8)]})
    assert plots.read_scalars(tb)["rl/reward_mean"] == [(1, 2.0), (2, 3.0), (3, 4.0)] + [
        (s, 100.0 + s) for s in range(4, 8)]


def test_resume_with_purge_step_drops_orphaned_steps(tmp_path):
    # how sft2rl.grpo resumes: SummaryWriter(purge_step=start + 1); steps > the resumed ones vanish
    tb = tmp_path / "tb"
    _write_events(tb, 1_700_000_000, {"rl/kl": [(s, 0.5 * s) for s in range(1, 7)]})
    _write_events(tb, 1_700_000_100, {"rl/kl": [(4, 40.0), (5, 50.0)]}, purge_step=4)
    assert plots.read_scalars(tb)["rl/kl"] == [(1, 0.5), (2, 1.0), (3, 1.5), (4, 40.0), (5, 50.0)]


def test_smooth_ema():
    assert plots.smooth_ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    s = plots.smooth_ema([2.0, 2.0, 2.0], 0.9)
    assert all(math.isclose(v, 2.0) for v in s)  # debiased: a constant stays constant
    with pytest.raises(ValueError):
        plots.smooth_ema([1.0], 1.0)


# ------------------------------------------------------------------ figures
def test_make_figures_writes_all_sixteen(built):
    import matplotlib.image as mpimg

    _, out, written = built
    expected = plots.figure_paths(out)
    assert len(expected) == 16
    assert sorted(written) == sorted(expected)
    for path in expected:
        p = Path(path)
        assert p.is_file() and p.stat().st_size > 0, path
        if p.suffix == ".png":
            img = mpimg.imread(p)
            assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0, path
        else:
            assert p.read_bytes().startswith(b"%PDF"), path
    # no temp files left (the games figure, written by the games' own rule, sits next to them)
    assert sorted(f.name for f in out.iterdir() if not f.name.startswith(("games_", "med_"))) == \
        sorted(Path(p).name for p in expected)
    assert sorted(f.name for f in out.iterdir() if f.name.startswith("games_")) == [
        "games_rl_success.pdf", "games_rl_success.png", "games_success.pdf", "games_success.png"]


QA_REWARD = {"beta": 0.5, "format_bonus": 0.05, "min_proactive_length": 0, "match": "substring", "acc_over": "all"}


def _qa_train(path: Path) -> Path:
    """RL train rows of two kinds (capital: Paris ×3, Rome; sum: 7, 12) as the rl_data rule writes them."""
    from sft2rl.io import write_parquet

    write_parquet(path, [{"prompt": [{"role": "user", "content": f"q{i}"}], "extra_info": {"kind": k},
                          "reward_model": {"style": "rule", "ground_truth": t}}
                         for i, (k, t) in enumerate([("capital", "Paris"), ("capital", "Paris"), ("capital", "Paris"),
                                                     ("capital", "Rome"), ("sum", "7"), ("sum", "12")])])
    return path


def test_figures_script(tmp_path, built):
    """workflow/scripts/figures.py as the `figures` rule calls it (outputs named by the rule)."""
    root, _, _ = built
    out = tmp_path / "results" / "figures"
    smk = SimpleNamespace(
        input=SimpleNamespace(tables=[str(root / "results" / f"ablation_{a}.csv") for a in plots.ABLATION_NAMES],
                              rl_train=str(_qa_train(tmp_path / "train.parquet"))),
        output=plots.figure_paths(out),
        params=SimpleNamespace(ablations=list(plots.ABLATION_NAMES), smooth=0.0, ci_level=0.95,
                               tensorboard={r: str(root / "results" / "rl" / r / "tensorboard") for r in RUNS},
                               answers=json.loads((root / "answers.json").read_text()),
                               reward=QA_REWARD, group_size=4),
        log=[str(tmp_path / "figures.log")], threads=1)
    runpy.run_path(str(REPO / "workflow" / "scripts" / "figures.py"), init_globals={"snakemake": smk})
    assert all(Path(p).stat().st_size > 0 for p in smk.output)
    assert "wrote 16 figure files" in (tmp_path / "figures.log").read_text()


def test_figures_without_curves_still_written(tmp_path, built):
    root, _, _ = built
    tables = {"beta": str(root / "results" / "ablation_beta.csv")}
    written = plots.make_figures(tables, {}, tmp_path)
    names = {Path(p).name for p in written}
    assert {"reward_curves.png", "kl_curves.pdf", "ablation_beta.png", "hedging_vs_beta.pdf",
            "risk_coverage.png"} <= names


def test_bad_table_names_the_column(tmp_path, built):
    import pandas as pd

    from sft2rl.io import DataError

    root, _, _ = built
    frame = pd.read_csv(root / "results" / "ablation_beta.csv").drop(columns=["accuracy_knowable_ci_low"])
    bad = tmp_path / "ablation_beta.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(DataError, match="accuracy_knowable_ci_low"):
        plots.make_figures({"beta": bad}, {}, tmp_path / "out")


def test_interval_labels_follow_ci_level(tmp_path, built, monkeypatch):
    """eval.ci_level sets the intervals; every label that names their level says that level:
    figure legends and axes, LaTeX headers, the report's captions and the paper's macros."""
    import jinja2
    import pandas as pd

    from sft2rl.stats import ci_label
    from sft2rl.tasks.games import table as games_table
    from sft2rl.tasks.med import rl_table
    from sft2rl.tasks.med import table as med_table

    assert (ci_label(0.95), ci_label(0.8), ci_label(0.975), ci_label(0.9, latex=True)) == ("95%", "80%", "97.5%", r"90\%")
    root, _, _ = built
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem: figs.append(fig) or [])
    plots.plot_ablation(plots.read_ablation(root / "results" / "ablation_beta.csv"), tmp_path / "x", ci_level=0.8)
    legend = [t.get_text() for leg in figs[0].legends for t in leg.get_texts()]
    assert legend == ["GRPO (mean over seeds, 80% bootstrap CI)", "reference, no RL (80% bootstrap CI)",
                      f"{plots.KIND_ONLY_BAR_LABEL}, 80% bootstrap CI"]
    games = pd.read_csv(root / "results/games/sft_eval.csv")
    med_rl = pd.read_csv(root / "results/med/rl_eval.csv")
    budget = pd.read_csv(root / "results/med/ablation_turn_budget.csv")
    med = pd.read_csv(root / "results/med/eval.csv")
    for tex in (games_table.latex(games, 0.8), games_table.rl_latex(pd.read_csv(root / "results/games/rl_eval.csv"),
                                                                     level=0.8),
                med_table.eval_latex(med, 0.8), rl_table.rl_eval_latex(med_rl, 0.8), rl_table.budget_latex(budget, 0.8)):
        assert r"[80\% CI]" in tex and r"95\%" not in tex, tex
    # the report's captions render the level from config (Jinja, as snakemake --report does)
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["eval"]["ci_level"] = 0.8
    for rst in sorted((REPO / "workflow" / "report").glob("*.rst")):
        text = jinja2.Environment().from_string(rst.read_text()).render(
            snakemake=SimpleNamespace(config=config, wildcards={"ablation": "beta"},
                                      params=SimpleNamespace(smooth=0.6)))  # figure.rst: the figures rule's
        assert "95%" not in text, rst.name
        assert ("80%" in text) == ("ci_level" in rst.read_text()), rst.name
    assert r"95\%" not in (REPO / "paper" / "main.tex").read_text(), "the paper states the level through \\cilevel"
    paper_mod.write_settings(tmp_path / "s.tex", ci_level=0.8, bootstrap_samples=500)
    assert (tmp_path / "s.tex").read_text().splitlines()[1:] == [r"\newcommand{\cilevel}{80\%}",
                                                                r"\newcommand{\bootdraws}{500}"]


def test_ablation_figure_marks_undefined_metrics(tmp_path, built, monkeypatch):
    """Without knowable labels accuracy and the hedge rates are NaN: no bar, an "n/a" mark,
    not a bar at 0."""
    root, _, _ = built
    frame = plots.read_ablation(root / "results" / "ablation_beta.csv")
    for col in [c for c in frame.columns if c.startswith("accuracy_knowable")]:
        frame[col] = float("nan")
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, stem: figs.append(fig) or [])
    plots.plot_ablation(frame, tmp_path / "x")
    ax = next(a for a in figs[0].axes if a.get_title() == plots.ABLATION_METRICS["accuracy_knowable"])
    assert len(ax.patches) == 0 and [t.get_text() for t in ax.texts] == ["n/a"] * len(frame)


def _captured(monkeypatch, module=plots, name="save_figure"):
    """The figures a plotting call builds, not written (``module.name`` replaced)."""
    figs = []
    monkeypatch.setattr(module, name, lambda fig, *_: figs.append(fig) or [])
    return figs


def test_hedging_figure_draws_the_kind_only_baseline(tmp_path, built, monkeypatch):
    """Beside the false-hedge rate, the kind-only policy's at the same recall: a dotted line
    through the GRPO rows' kind_only_(sampled_)false_hedge_rate_mean per beta, with a band from
    their interval columns; nothing (and no crash) where the columns are NaN or absent."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    root, _, _ = built
    frame = plots.read_ablation(root / "results" / "ablation_beta.csv")
    rl = frame[frame["kind"] == "rl"].sort_values("beta")
    figs = _captured(monkeypatch)
    plots.plot_hedging_vs_beta(frame, tmp_path / "x")
    axes = figs[0].axes
    assert [a.get_title() for a in axes] == ["greedy answers", "sampled answers"]
    for ax, base in zip(axes, ("kind_only_false_hedge_rate", "kind_only_sampled_false_hedge_rate")):
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == plots.KIND_ONLY_LABEL]
        assert line.get_linestyle() == ":"
        assert list(line.get_xdata()) == pytest.approx(rl["beta"].tolist())
        assert list(line.get_ydata()) == pytest.approx(rl[f"{base}_mean"].tolist())
        assert not rl[f"{base}_mean"].isna().any()
        (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        ys = np.concatenate([p.vertices[:, 1] for p in band.get_paths()])
        assert ys.min() == pytest.approx(rl[f"{base}_ci_low"].min())
        assert ys.max() == pytest.approx(rl[f"{base}_ci_high"].max())
        assert plots.KIND_ONLY_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    cols = [c for c in frame.columns if c.startswith("kind_only_") and "false_hedge" in c]
    for changed in (frame.drop(columns=cols), frame.assign(**{c: float("nan") for c in cols})):
        figs.clear()
        plots.plot_hedging_vs_beta(changed, tmp_path / "x")
        for ax in figs[0].axes:
            assert plots.KIND_ONLY_LABEL not in [ln.get_label() for ln in ax.get_lines()]
            assert not [c for c in ax.collections if isinstance(c, PolyCollection)]


def test_ablation_figure_draws_the_kind_only_baseline(tmp_path, built, monkeypatch):
    """The reward, knowable-accuracy and false-hedge panels have the kind-only policy's value
    beside each bar (a black tick with its interval) and one legend entry; the hedge-recall
    panel has none; without the columns, or NaN, no tick and no entry. The reward panel says
    it is scored at the default beta."""
    from matplotlib.container import ErrorbarContainer

    root, _, _ = built
    frame = plots.read_ablation(root / "results" / "ablation_sft.csv").reset_index(drop=True)
    figs = _captured(monkeypatch)
    plots.plot_ablation(frame, tmp_path / "x")
    panels = {a.get_title(): a for a in figs[0].axes}
    assert "mean reward (at the default β)" in panels

    def baselines(axis):  # error bars with a data line: the bars' own have none (fmt "none")
        return [c for c in axis.containers if isinstance(c, ErrorbarContainer) and c.lines[0] is not None]

    with_base = {"mean_reward": "kind_only_mean_reward", "accuracy_knowable": "kind_only_accuracy_knowable",
                 "false_hedge_rate": "kind_only_false_hedge_rate"}
    for metric, title in plots.ABLATION_METRICS.items():
        ax = panels[title]
        if metric not in with_base:
            assert not baselines(ax), title
            continue
        col = with_base[metric]
        assert not frame[f"{col}_mean"].isna().any(), col
        (base,) = baselines(ax)
        ticks, (low, high), _ = base.lines
        assert ticks.get_marker() == "_" and ticks.get_color() == "black"
        assert list(ticks.get_xdata()) == pytest.approx([i + 0.25 for i in range(len(frame))])
        assert list(ticks.get_ydata()) == pytest.approx(frame[f"{col}_mean"].tolist())
        assert list(low.get_ydata()) == pytest.approx(frame[f"{col}_ci_low"].tolist())
        assert list(high.get_ydata()) == pytest.approx(frame[f"{col}_ci_high"].tolist())
    legend = [t.get_text() for leg in figs[0].legends for t in leg.get_texts()]
    assert legend[-1] == f"{plots.KIND_ONLY_BAR_LABEL}, 95% bootstrap CI"
    cols = [c for c in frame.columns if c.startswith("kind_only_")]
    for changed in (frame.drop(columns=cols), frame.assign(**{c: float("nan") for c in cols})):
        figs.clear()
        plots.plot_ablation(changed, tmp_path / "x")
        for ax in figs[0].axes:
            assert not baselines(ax), ax.get_title()
        assert len([t for leg in figs[0].legends for t in leg.get_texts()]) == 2


def test_risk_coverage_draws_the_risk_at_full_coverage(tmp_path, monkeypatch):
    """A dotted horizontal line per variant at its risk when every question is answered (each
    curve's last point, mean over seeds), in the variant's colour, with one legend entry."""
    figs = _captured(monkeypatch)
    curves = {"a": [([0.5, 1.0], [0.1, 0.4]), ([0.25, 1.0], [0.0, 0.2])], "b": [([0.5, 1.0], [0.5, 0.6])]}
    plots.plot_risk_coverage(curves, tmp_path / "x")
    ax = figs[0].axes[0]
    dotted = {ln.get_color(): float(ln.get_ydata()[0]) for ln in ax.get_lines()
              if ln.get_linestyle() == ":" and ln.get_xdata()[0] == 0 and ln.get_xdata()[-1] == 1}
    assert dotted == {"C0": pytest.approx(0.3), "C1": pytest.approx(0.6)}
    assert plots.FULL_COVERAGE_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]


def test_med_figure_leaves_undefined_accuracy_out(tmp_path, built, monkeypatch):
    """Accuracy undefined ("--" in the tables, NaN in the CSV: cases without exact disease
    names) has no bar and an "n/a" mark, not a bar at 0."""
    import pandas as pd
    from matplotlib.container import BarContainer

    from sft2rl.tasks.med import table as med_table

    root, _, _ = built
    frame = pd.read_csv(root / "results/med/eval.csv")
    undefined = frame["doctor"].isin(["base", "med-doctor-nothink-seed1"])
    frame.loc[undefined, ["accuracy", "accuracy_lo", "accuracy_hi"]] = float("nan")
    frame.to_csv(tmp_path / "eval.csv", index=False)
    ablation = pd.read_csv(root / "results/med/ablation.csv")
    accuracy = [c for c in ablation if c.startswith("accuracy_")]
    ablation.loc[ablation["with_thinking"] == "false", accuracy] = float("nan")
    ablation.to_csv(tmp_path / "ablation.csv", index=False)
    figs = _captured(monkeypatch, med_table, "_save")
    med_table.figure(str(tmp_path / "eval.csv"), str(tmp_path / "ablation.csv"), [str(tmp_path / "x.png")])
    left, right = figs[0].axes
    shown = frame[frame["category"] == "all"].reset_index(drop=True)
    acc_bars, _rouge = [c for c in left.containers if isinstance(c, BarContainer)]
    assert len(acc_bars) == shown["accuracy"].notna().sum() == len(shown) - 2
    assert [b.get_height() for b in acc_bars] == pytest.approx(shown["accuracy"].dropna().tolist())
    assert [t.get_text() for t in left.texts] == ["n/a", "n/a"]
    (thinking,) = [c for c in right.containers if isinstance(c, BarContainer)]
    assert len(thinking) == 2 and [t.get_text() for t in right.texts] == ["n/a"]  # think, and the random doctor
    rand = ablation[ablation["with_thinking"] == "random doctor"].iloc[0]
    assert thinking[1].get_height() == pytest.approx(rand["accuracy_mean"])
    assert rand["accuracy_mean"] == pytest.approx(shown.set_index("doctor").loc["random", "accuracy"])
    assert rand["n_seeds"] == 1 and list(ablation["with_thinking"]) == ["true", "false", "random doctor", "think - nothink"]


def test_games_table_prints_chance_beside_the_optimal_action_rate(built):
    """The optimal-action column carries its no-information value, chance_optimal_action_rate."""
    root, _, _ = built
    tex = (root / "results/tables/games_sft_eval.tex").read_text()
    assert r"& opt. action (chance) \\" in tex
    rows = [ln for ln in tex.splitlines() if ln.startswith(("sokoban", "frozenlake"))]
    assert len(rows) == 10 and all(ln.endswith(r"& 0.50 (0.30) \\") for ln in rows)


def test_figure_caption_states_the_smoothing():
    """figure.rst (the QA figures' caption) says what thin and bold curves are, with the
    figures rule's smoothing weight."""
    import jinja2
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    rst = (REPO / "workflow" / "report" / "figure.rst").read_text()
    for smooth, says in ((0.6, "bold lines their exponential moving average (TensorBoard's, debiased) with the "
                               "figures rule's smoothing weight, 0.6"),
                         (0.0, "raw values (the figures rule passes no smoothing)")):
        text = " ".join(jinja2.Environment().from_string(rst).render(
            snakemake=SimpleNamespace(config=config, wildcards={}, params=SimpleNamespace(smooth=smooth))).split())
        assert says in text and ("thin lines are the raw values" in text) == (smooth > 0), text


def test_report_registers_every_paper_figure_and_table():
    """snakemake --report holds every figure of the paper (its PNG), the medical ablation tables,
    each with a caption file that exists and renders with its rule's params (the workflow is
    loaded, not run)."""
    import jinja2
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                                snakefile=REPO / "Snakefile", workdir=REPO)._workflow
        flagged = {str(f): (rule, Path(str(f.flags["report"].caption.get_path_or_uri(secret_free=True))))
                   for rule in workflow.rules for f in rule.output if "report" in f.flags}
        config = workflow.config
    graphics = paper_mod.paper_inputs(REPO / "paper" / "main.tex")["graphics"]
    wanted = [f"results/figures/{Path(g).stem}.png" for g in graphics] + [
        "results/med/ablation_thinking.csv", "results/med/ablation_turn_budget.csv", "results/games/sft_eval.csv",
        "results/games/rl_eval.csv", "results/med/eval.csv", "results/med/rl_eval.csv"]
    assert not [w for w in wanted if w not in flagged]
    for path, (rule, caption) in flagged.items():
        assert caption.is_file(), (path, caption)
        params = SimpleNamespace(**{k: v for k, v in rule.params.items() if not callable(v)})
        jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(caption.read_text()).render(
            snakemake=SimpleNamespace(config=config, wildcards={"ablation": "beta"}, params=params))


# ------------------------------------------------------------------ paper
@pytest.fixture(scope="module")  # module scope: decided before the (module-scoped) inputs are built
def latexmk():
    """Skip without TeX, except under CI (CI installs it, so there a missing latexmk is a failure)."""
    if shutil.which("latexmk") is None:
        if os.environ.get("CI"):
            pytest.fail("latexmk not on PATH but CI is set: CI must install TeX "
                        "(apt-get install -y --no-install-recommends latexmk texlive-latex-base "
                        "texlive-latex-recommended)")
        pytest.skip("latexmk not on PATH (TeX not installed; with CI set this fails)")


def test_paper_references_generated_files():
    refs = paper_mod.paper_inputs(REPO / "paper" / "main.tex")
    assert sorted(refs["inputs"]) == sorted([f"../results/tables/ablation_{a}.tex" for a in plots.ABLATION_NAMES]
                                            + ["../results/tables/paper_settings.tex",
                                               "../results/tables/paper_numbers.tex",
                                               "../results/tables/games_sft_eval.tex",
                                               "../results/tables/games_rl_eval.tex",
                                               "../results/tables/med_eval.tex",
                                               "../results/tables/med_ablation_thinking.tex",
                                               "../results/tables/med_rl_eval.tex",
                                               "../results/tables/med_ablation_turn_budget.tex"])
    assert {f"../results/figures/{s}.pdf" for s in plots.FIGURE_STEMS} | {"../results/figures/games_success.pdf",
                                                                          "../results/figures/games_rl_success.pdf",
                                                                          "../results/figures/med_eval.pdf",
                                                                          "../results/figures/med_rl_curves.pdf",
                                                                          "../results/figures/med_turn_budget.pdf"} \
        == set(refs["graphics"])


def _default_setup() -> dict:
    """What the paper_settings rule passes (workflow/rules/report.smk), from config.yaml."""
    import yaml

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    med = cfg["med"]
    return {"kl_type": cfg["rl"]["kl_type"], "eval_turns": med["eval"]["max_turns"], "rl_n": med["rl"]["n"],
            "rl_temperature": med["rl"]["temperature"], "sampled_k": med["eval"]["k_samples"],
            "sampled_temperature": med["eval"]["temperature"], "sampled_top_p": med["eval"]["top_p"],
            "rl_steps": cfg["games"]["rl"]["total_steps"],
            "clip": [med["rl"]["clip_ratio_low"], med["rl"]["clip_ratio_high"]], "entropy": med["rl"]["entropy_coef"],
            "budget_range": med["rl"]["budget_range"], "eval_budgets": med["rl"]["eval_budgets"]}


def _write_numbers(root: Path) -> Path:
    out = root / "results/tables/paper_numbers.tex"
    paper_mod.write_numbers(out, qa_beta=root / "results/ablation_beta.csv", default_beta=0.5,
                            games_rl=root / "results/games/rl_eval.csv", med_rl=root / "results/med/rl_eval.csv")
    return out


def _macros(path: Path) -> dict[str, str]:
    import re

    return dict(re.findall(r"^\\newcommand\{\\([a-zA-Z]+)\}\{(.*)\}$", path.read_text(), flags=re.M))


def test_paper_numbers_are_the_tables(built, tmp_path):
    """The numbers the paper's prose states about this build are read from the tables beside it:
    the QA beta row at the default beta and the SFT row, the games' greedy RL - SFT, the medical
    RL - SFT and RL - control; each paired difference with the paper's verdict (an effect only
    when its interval excludes 0)."""
    import pandas as pd

    root, _, _ = built
    got = _macros(_write_numbers(root))
    beta = pd.read_csv(root / "results/ablation_beta.csv")
    row = beta[(beta["kind"] == "rl") & (beta["beta"] == 0.5)].iloc[0]
    sft = beta[beta["kind"] == "sft-only"].iloc[0]
    assert got["qabeta"] == "0.5"
    assert got["qafalsehedge"] == (f"${row['false_hedge_rate_mean']:.2f}$ [${row['false_hedge_rate_ci_low']:.2f}$, "
                                   f"${row['false_hedge_rate_ci_high']:.2f}$]")
    assert got["qasftfalsehedge"].startswith(f"${sft['false_hedge_rate_mean']:.2f}$ [")
    assert got["qakindonlyfalsehedge"].startswith(f"${row['kind_only_false_hedge_rate_mean']:.2f}$ [")
    assert got["qaknowablediff"] == (f"${row['accuracy_knowable_diff']:+.2f}$ [${row['accuracy_knowable_diff_ci_low']:+.2f}$, "
                                     f"${row['accuracy_knowable_diff_ci_high']:+.2f}$]")
    assert got["qaknowablediffverdict"] == paper_mod.verdict(row["accuracy_knowable_diff_ci_low"],
                                                             row["accuracy_knowable_diff_ci_high"])
    for name, metric in (("qafalsehedgevskindonly", "false_hedge_rate"), ("qarewardvskindonly", "mean_reward"),
                         ("qaknowablevskindonly", "accuracy_knowable")):
        assert got[name] == paper_mod.separated(
            *[tuple(row[f"{m}_{s}"] for s in ("mean", "ci_low", "ci_high")) for m in (metric, f"kind_only_{metric}")])
    # the kind-only reward is a number of the table (the best fixed reply per kind), not missing
    assert got["qakindonlyreward"] == (f"${row['kind_only_mean_reward_mean']:.2f}$ "
                                       f"[${row['kind_only_mean_reward_ci_low']:.2f}$, "
                                       f"${row['kind_only_mean_reward_ci_high']:.2f}$]")
    assert got["qakindonlyknowable"].startswith(f"${row['kind_only_accuracy_knowable_mean']:.2f}$ [")
    games = pd.read_csv(root / "results/games/rl_eval.csv").set_index(["env", "mode"])
    for env in ("frozenlake", "sokoban"):
        g = games.loc[(env, "greedy")]
        assert got[f"games{env}diff"] == f"${g['diff']:+.2f}$ [${g['diff_lo']:+.2f}$, ${g['diff_hi']:+.2f}$]"
    med = pd.read_csv(root / "results/med/rl_eval.csv").set_index("doctor")
    fixed = med.loc["rl-fixed-seed1"]
    assert got["medfixedvssft"] == (f"${fixed['diff_accuracy']:+.2f}$ [${fixed['diff_accuracy_lo']:+.2f}$, "
                                    f"${fixed['diff_accuracy_hi']:+.2f}$]")
    assert got["medfixedvscontrolreward"].startswith(f"${fixed['diff_control_reward']:+.2f}$ [")
    assert got["medfixedcontrolvssft"].startswith(f"${med.loc['rl-fixed-control-seed1', 'diff_accuracy']:+.2f}$ [")
    assert got["medsftacc"].startswith(f"${med.loc['med-doctor-nothink-seed1', 'accuracy']:.2f}$ [")
    # a row the build lacks (no dynamic control here): no number, and no verdict made up
    assert got["meddynamiccontrolvssft"] == "--" and got["meddynamiccontrolvssftverdict"] == "not measured"
    # an ablation without the default beta states that it has no such row
    other = paper_mod.number_macros(qa_beta=beta, default_beta=0.4, games_rl=games.reset_index(),
                                    med_rl=med.reset_index())
    assert other["qafalsehedge"] == "--" and other["qaknowablediffverdict"] == "not measured"
    # ... and the paper's QA paragraph then says so instead of printing dashes (\ifqarow)
    assert "\\qarowtrue" in (root / "results/tables/paper_numbers.tex").read_text()
    paper_mod.write_numbers(tmp_path / "n.tex", qa_beta=root / "results/ablation_beta.csv", default_beta=0.4,
                            games_rl=root / "results/games/rl_eval.csv", med_rl=root / "results/med/rl_eval.csv")
    assert "\\qarowfalse" in (tmp_path / "n.tex").read_text()
    # the row exists but one metric is undefined (NaN): the paragraph stays, that number reads "--"
    nan_beta = beta.copy()
    nan_beta.loc[(nan_beta["kind"] == "rl") & (nan_beta["beta"] == 0.5), "false_hedge_rate_mean"] = float("nan")
    nan_beta.to_csv(tmp_path / "beta.csv", index=False)
    paper_mod.write_numbers(tmp_path / "m.tex", qa_beta=tmp_path / "beta.csv", default_beta=0.5,
                            games_rl=root / "results/games/rl_eval.csv", med_rl=root / "results/med/rl_eval.csv")
    assert "\\qarowtrue" in (tmp_path / "m.tex").read_text() and _macros(tmp_path / "m.tex")["qafalsehedge"] == "--"


@pytest.mark.parametrize("lo,hi,word", [(0.01, 0.2, "above 0"), (-0.2, -0.01, "below 0"), (-0.1, 0.1, "its interval covers 0"),
                                        (0.0, 0.1, "its interval covers 0"), (float("nan"), 0.1, "not measured"),
                                        (0.0, 0.0, "its interval is zero-width at 0"), (-0.0, 0.0, "its interval is zero-width at 0")])
def test_verdict_calls_an_effect_only_when_the_interval_excludes_zero(lo, hi, word):
    assert paper_mod.verdict(lo, hi) == word


def test_a_bound_keeps_its_side_of_zero_when_printed():
    """A bound that rounds to 0.00 is printed with the digits that show its sign, so the interval
    printed agrees with its verdict ([+0.00, +0.25] read "above 0")."""
    assert paper_mod.estimate(0.1, 0.004, 0.25, signed=True) == "$+0.10$ [$+0.004$, $+0.25$]"
    assert paper_mod.verdict(0.004, 0.25) == "above 0"
    assert paper_mod.estimate(-0.1, -0.23, -0.0004, signed=True) == "$-0.10$ [$-0.23$, $-0.0004$]"
    assert paper_mod.estimate(0.0, 0.0, 0.0) == "$0.00$ [$0.00$, $0.00$]"


def test_separated_needs_intervals_that_do_not_overlap():
    assert paper_mod.separated((0.54, 0.44, 0.63), (0.39, 0.30, 0.42)) == "above"
    assert paper_mod.separated((0.54, 0.44, 0.63), (0.39, 0.30, 0.49)) == "not separable from"
    assert paper_mod.separated((0.03, 0.00, 0.06), (0.39, 0.30, 0.49)) == "below"


def test_every_number_the_paper_states_is_generated(built, tmp_path):
    """Every macro main.tex uses for a setting or a number of this build is defined by the
    generated files, and the settings follow config (no caption states a value the build did
    not use)."""
    import re

    root, _, _ = built
    settings = tmp_path / "s.tex"
    setup = _default_setup() | {"eval_turns": 6, "sampled_k": 3, "sampled_temperature": 0.5, "kl_type": "mse"}
    paper_mod.write_settings(settings, ci_level=0.9, bootstrap_samples=100, setup=setup)
    defined = _macros(settings) | _macros(_write_numbers(root))
    assert defined["medturns"] == "six" and defined["medsampledk"] == "three" and defined["medsampledtemp"] == "0.5"
    assert defined["klestimator"] == "squared" and defined["gamesrlsteps"] == str(setup["rl_steps"])
    assert defined["medclip"] == r"0.2\,/\,0.28" and defined["medentropy"] == "0.001"
    assert defined["medbudget"] == "2 to 10" and defined["medevalbudgets"] == "2, 4, 6, 8 and 10"
    tex = re.sub(r"(?<!\\)%.*", "", (REPO / "paper" / "main.tex").read_text())
    used = set(re.findall(r"\\((?:qa|games|med)[a-z]+|klestimator|cilevel|bootdraws)(?![a-zA-Z])", tex))
    assert used and used <= set(defined), sorted(used - set(defined))
    # the prose states this build's medical and games differences through the macros, not as typed numbers
    assert {"medfixedvssft", "meddynamicvssft", "medfixedvscontrol", "gamessokobandiff", "qafalsehedge"} <= used


def test_paper_builds(latexmk, built):
    root, _, _ = built
    paper = root / "paper"
    paper.mkdir(exist_ok=True)
    shutil.copy(REPO / "paper" / "main.tex", paper / "main.tex")
    paper_mod.write_settings(root / "results/tables/paper_settings.tex", ci_level=0.95, bootstrap_samples=2000,
                             setup=_default_setup())
    _write_numbers(root)
    # exactly what the `paper` rule runs: workflow/scripts/paper.py -> paper.build_paper
    smk = SimpleNamespace(input=SimpleNamespace(tex=str(paper / "main.tex")),
                          output=SimpleNamespace(pdf=str(paper / "main.pdf")),
                          log=[str(root / "logs" / "paper.log")], params=SimpleNamespace(), threads=1, rule="paper")
    runpy.run_path(str(REPO / "workflow" / "scripts" / "paper.py"), init_globals={"snakemake": smk})
    data = (paper / "main.pdf").read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 10_000
    assert sorted(p.name for p in paper.iterdir()) == ["main.pdf", "main.tex"]  # no aux files, no temp dir
    assert "Output written" in (root / "logs" / "paper.latexmk.log").read_text()
    assert "paper built" in (root / "logs" / "paper.log").read_text()
    # same inputs, same bytes (SOURCE_DATE_EPOCH and a fixed trailer ID)
    again = paper_mod.build_paper(paper / "main.tex", root / "again" / "main.pdf")
    assert Path(again).read_bytes() == data


def test_paper_failure_leaves_no_pdf(latexmk, tmp_path):
    (tmp_path / "main.tex").write_text("\\documentclass{article}\\begin{document}\\undefinedmacro\\end{document}\n")
    with pytest.raises(paper_mod.PaperBuildError, match="Undefined control sequence"):
        paper_mod.build_paper(tmp_path / "main.tex", tmp_path / "main.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.tex"]


def test_reward_curves_draw_the_kind_only_reward_per_beta(tmp_path, monkeypatch):
    """The training reward curves stand beside the kind-only policy's mean reward on the RL
    train rows at each run's beta: one dotted line per configuration colour, at
    kind_only_reward(beta), one legend entry; none without the rows."""
    from sft2rl.tasks.qa.baselines import kind_only_reward

    train, reward = _qa_train(tmp_path / "train.parquet"), QA_REWARD
    # beta 0.3: capital answers "Paris" (1.05·3 + 0.05)/4 = 0.8, sum answers "12" (0.05 + 1.05)/2
    # = 0.55, both above a block with "unknown" (0.3 + 0.1); beta 0.9: that block on both, 1.0
    low = (0.8 * 4 + 0.55 * 2) / 6
    assert kind_only_reward(train, dict(reward, beta=0.3), 4) == pytest.approx(low)
    assert kind_only_reward(train, dict(reward, beta=0.9), 4) == pytest.approx(1.0)
    runs = ["rl-sft16_seed42-beta0.3-seed1", "rl-sft16_seed42-beta0.3-seed2", "rl-sft16_seed42-beta0.9-seed1"]
    tb = {}
    for i, run in enumerate(runs):
        from torch.utils.tensorboard import SummaryWriter

        tb[run] = tmp_path / run
        with SummaryWriter(str(tb[run])) as w:
            for step in range(3):
                w.add_scalar("rl/reward_mean", 0.1 * step + i, step)
    figs = _captured(monkeypatch)
    plots.make_figures({}, tb, tmp_path / "out", rl_train=train, reward=reward, group_size=4)
    ax = figs[0].axes[0]
    assert ax.get_ylabel() == plots.CURVE_TAGS["reward_curves"][1]
    dotted = sorted((float(ln.get_ydata()[0]), ln.get_color()) for ln in ax.get_lines() if ln.get_linestyle() == ":")
    solid = {ln.get_label(): ln.get_color() for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    assert dotted == [(pytest.approx(low), solid["init=sft16_seed42, β=0.3"]),
                      (pytest.approx(1.0), solid["init=sft16_seed42, β=0.9"])]
    assert [t.get_text() for t in ax.get_legend().get_texts()].count(plots.KIND_ONLY_CURVE_LABEL) == 1
    # the KL curves have none, nor the reward curves without the train rows
    assert not [ln for ln in figs[1].axes[0].get_lines() if ln.get_linestyle() == ":"]
    figs.clear()
    plots.make_figures({}, tb, tmp_path / "out")
    assert not [ln for ln in figs[0].axes[0].get_lines() if ln.get_linestyle() == ":"]
