"""The games workflow end to end on the reduced config: data -> tiny base -> SFT -> best
merge -> four policies play the held-out levels -> results/games/sft_eval.csv and the figure;
multi-turn GRPO from each SFT model -> the RL model plays the same levels -> rl_eval.csv;
the RL-init ablation (a weaker SFT model, its RL, its play) -> ablation_rl_init.csv.

One finished games workflow per test session (``games_done``), in its own copy of the checkout.
"""
from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest
import yaml

from conftest import REPO
from test_games import assert_held_out
from test_pipeline import REDUCED, finished_copy, planned_jobs, smk

pytestmark = pytest.mark.integration
ENVS = ["sokoban", "frozenlake"]
REDUCED_GAMES = yaml.safe_load(REDUCED.read_text())["games"]
N_TEST = REDUCED_GAMES["counts"]["test"]
K = REDUCED_GAMES["eval"]["k_samples"]


@pytest.fixture(scope="session")
def games_done(tmp_path_factory):
    return finished_copy(tmp_path_factory, "games", "games", "games_ablation")


def test_games_table_rows_and_baselines(games_done):
    frame = pd.read_csv(games_done / "results/games/sft_eval.csv")
    assert list(frame["env"].unique()) == sorted(ENVS)
    for env in ENVS:
        sub = frame[frame["env"] == env].set_index(["policy", "mode"])
        assert set(sub.index) == {("sft", "greedy"), ("sft", "sampled"), ("base", "greedy"), ("base", "sampled"),
                                  ("random", "sampled"), ("bfs", "greedy")}
        assert (sub["levels"] == N_TEST).all()
        assert sub.loc[("sft", "sampled"), "episodes"] == N_TEST * K
        assert sub.loc[("sft", "greedy"), "episodes"] == N_TEST
        bfs = sub.loc[("bfs", "greedy")]
        # the solver wins exactly the levels whose optimum fits in the step limit, in the optimum
        levels = [json.loads(line) for line in
                  (games_done / f"data/processed/games/{env}/levels.jsonl").read_text().splitlines()]
        fits = [lv["optimal"] <= REDUCED_GAMES["eval"]["max_steps"] for lv in levels if lv["split"] == "test"]
        assert bfs["success"] == pytest.approx(sum(fits) / len(fits)) and sum(fits) >= len(fits) // 2
        assert bfs["steps_over_optimal"] == 1.0 and bfs["valid_action_rate"] == 1.0
        assert bfs["timeout_rate"] == pytest.approx(1 - bfs["success"])  # it never loses: the rest time out
        assert bfs["optimal_action_rate"] == 1.0 and bfs["ci"] == "wilson"
        rnd = sub.loc[("random", "sampled")]
        assert rnd["valid_action_rate"] == 1.0 and rnd["invalid_format_rate"] == 0.0 and rnd["ci"] == "bootstrap-levels"
        assert ((sub["success_lo"] <= sub["success"]) & (sub["success"] <= sub["success_hi"])).all()
        # the SFT model answers in the trained format (the reduced run is short, but the format is learnt)
        assert sub.loc[("sft", "greedy"), "invalid_format_rate"] < 0.5
        # episodes on disk agree with the table
        eps = [json.loads(line) for line in (games_done / f"results/games/eval/{env}/sft.jsonl").read_text().splitlines()]
        greedy = [e for e in eps if e["mode"] == "greedy"]
        assert len(greedy) == N_TEST
        assert sum(e["won"] for e in greedy) / N_TEST == pytest.approx(sub.loc[("sft", "greedy"), "success"])
        assert all(1 <= e["steps"] <= REDUCED_GAMES["eval"]["max_steps"] for e in eps)
        # the share of the model's replies cut at the reply limit, per mode; none for scripted policies
        for pol, cut in (("sft", True), ("rl", True), ("random", False), ("bfs", False)):
            for row in json.loads((games_done / f"results/games/eval/{env}/{pol}.json").read_text()):
                assert (0 <= row["replies_cut"] <= 1) if cut else row["replies_cut"] is None, (pol, row)
    for ext in ("png", "pdf"):
        assert (games_done / f"results/figures/games_success.{ext}").stat().st_size > 1000
    tex = (games_done / "results/tables/games_sft_eval.tex").read_text()
    assert tex.count("\\\\") == len(frame) + 1


def test_games_rl_table_pairs_sft_and_rl_on_the_same_levels(games_done):
    """results/games/rl_eval.csv: per env and mode, SFT and RL success from their episodes on the
    test levels, the paired difference from the per-level outcomes, random's success beside them;
    the RL run trained its steps, validated on the val levels at step 0 (the SFT model) and every
    rl.val_every steps, and the RL model plays exactly as the SFT model (same levels, limits)."""
    rl_cfg = REDUCED_GAMES["rl"]
    frame = pd.read_csv(games_done / "results/games/rl_eval.csv")
    assert sorted(zip(frame["env"], frame["mode"])) == sorted((e, m) for e in ENVS for m in ("greedy", "sampled"))
    for _, row in frame.iterrows():
        eps = {p: [json.loads(x) for x in (games_done / f"results/games/eval/{row.env}/{p}.jsonl").read_text().splitlines()]
               for p in ("sft", "rl")}
        per_level = {}
        for p, records in eps.items():
            mine = [r for r in records if r["mode"] == row["mode"]]
            assert all(1 <= r["steps"] <= REDUCED_GAMES["eval"]["max_steps"] for r in mine)
            by = {}
            for r in mine:
                by.setdefault(r["level"], []).append(r["won"])
            per_level[p] = {k: sum(v) / len(v) for k, v in by.items()}
            assert row[f"{p}_success"] == pytest.approx(sum(r["won"] for r in mine) / len(mine))
        assert set(per_level["sft"]) == set(per_level["rl"]) and len(per_level["rl"]) == N_TEST
        diff = sum(per_level["rl"][k] - per_level["sft"][k] for k in per_level["sft"]) / N_TEST
        assert row["diff"] == pytest.approx(diff) and row["diff_lo"] <= row["diff"] <= row["diff_hi"]
        rnd = json.loads((games_done / f"results/games/eval/{row.env}/random.json").read_text())[0]
        assert row["random_success"] == pytest.approx(rnd["success"]) and row["rl_steps"] == rl_cfg["total_steps"]
    for env in ENVS:
        summary = json.loads((games_done / f"results/games/rl/rl-{env}-seed1/summary.json").read_text())
        assert summary["steps"] == rl_cfg["total_steps"] and summary["export"]["policy_changed"]
        val_steps = [h["step"] for h in summary["history"] if "val_success" in h]
        assert val_steps == list(range(0, rl_cfg["total_steps"] + 1, rl_cfg["val_every"]))
        trained = [h for h in summary["history"] if h["step"] > 0]
        assert all(1 <= h["turns"] <= REDUCED_GAMES["eval"]["max_steps"] for h in trained)
        assert all(0 <= h["groups_with_spread"] <= 1 for h in trained)
    for ext in ("png", "pdf"):
        assert (games_done / f"results/figures/games_rl_success.{ext}").stat().st_size > 1000
    tex = (games_done / "results/tables/games_rl_eval.tex").read_text()
    assert tex.count("\\\\") == len(frame) + 1


def test_rl_init_ablation_table(games_done):
    """results/games/ablation_rl_init.csv: per env, RL from the SFT model trained on the first N
    train levels (one row per solver step of those levels) and from the main SFT model (every
    train level: exactly the rl_eval rows), played on the same test levels."""
    abl = REDUCED_GAMES["ablation_rl_init"]
    n_train = REDUCED_GAMES["counts"]["train"]
    frame = pd.read_csv(games_done / "results/games/ablation_rl_init.csv")
    main = pd.read_csv(games_done / "results/games/rl_eval.csv")
    assert sorted(frame["env"].unique()) == sorted(abl["envs"])
    for env in abl["envs"]:
        sub = frame[frame["env"] == env]
        assert sorted(sub["sft_levels"].unique()) == sorted(abl["sft_levels"] + [n_train])
        assert set(sub["mode"]) == {"greedy", "sampled"} and (sub["levels"] == N_TEST).all()
        levels = [json.loads(x) for x in
                  (games_done / f"data/processed/games/{env}/levels.jsonl").read_text().splitlines()]
        train = [lv for lv in levels if lv["split"] == "train"]
        for n in abl["sft_levels"] + [n_train]:
            rows = sub[sub["sft_levels"] == n]
            assert (rows["sft_rows"] == sum(len(lv["solution"]) for lv in train[:n])).all()
            assert (rows["rl_steps"] == REDUCED_GAMES["rl"]["total_steps"]).all()
            assert ((rows["diff_lo"] <= rows["diff"]) & (rows["diff"] <= rows["diff_hi"])).all()
        full = sub[sub["sft_levels"] == n_train].set_index("mode")
        ref = main[main["env"] == env].set_index("mode")
        for col in ("sft_success", "rl_success", "diff", "diff_lo", "diff_hi", "random_success"):
            assert full[col].to_dict() == pytest.approx(ref[col].to_dict())
        for n in abl["sft_levels"]:  # the weaker model plays with its own weights, not the main run's
            eps = [json.loads(x) for x in (games_done / f"results/games/ablation_rl_init/{env}/L{n}/eval/sft.jsonl")
                   .read_text().splitlines()]
            assert len({e["level"] for e in eps}) == N_TEST
            main_eps = {(e["level"], e["mode"], e["episode"]): e["replies"] for e in map(
                json.loads, (games_done / f"results/games/eval/{env}/sft.jsonl").read_text().splitlines())}
            same = [e["replies"] == main_eps[(e["level"], e["mode"], e["episode"])] for e in eps]
            assert not all(same), f"{env} L{n}: the weaker SFT model played exactly as the main one (its weights?)"
    assert (games_done / "results/tables/games_ablation_rl_init.tex").read_text().count("\\\\") == len(frame) + 1


def test_reduced_frozenlake_rl_raises_the_reward_on_its_levels(games_done):
    """The reduced workflow's FrozenLake RL (games.rl.levels train levels) against its SFT model
    on those same levels: 16 sampled episodes per level each, the same seeds, the episode reward
    of the task (RAGEN's plus the format penalty). RL must raise the mean reward by a margin
    (measured with the default GiGPO: 0.12 -> 0.20 / 0.25 / 0.25 with RL seeds 1 / 2 / 3)."""
    import torch

    from sft2rl.model import load_model
    from sft2rl.tasks.games import rl_config
    from sft2rl.tasks.games.rl import GamesTask

    from snakemake.utils import update_config

    config = yaml.safe_load((games_done / "config.yaml").read_text())
    update_config(config, yaml.safe_load(REDUCED.read_text()))  # as the workflow merged them
    games = dict({k: config["games"][k] for k in ("seeds", "counts", "max_solution_length", "render", "history",
                                                  "with_thinking", "frozenlake", "eval", "rl")})
    rl = rl_config(config)
    levels = games_done / "data/processed/games/frozenlake/levels.jsonl"
    mean = {}
    for name, path in (("sft", "sft-frozenlake-seed42/merged"), ("rl", "rl-frozenlake-seed1/final")):
        model, tok = load_model(str(games_done / "results/games/models" / path))
        model.eval()
        task = GamesTask("frozenlake", str(levels), games)
        items = task.load(tok, rl)
        assert len(items) == REDUCED_GAMES["rl"]["levels"]
        with torch.no_grad():
            ro = task.rollout(model, tok, items, 16, rl, seed=12345)
        scores, _ = task.rewards(items, ro)
        mean[name] = float(scores.mean())
    print("mean episode reward", mean)
    assert mean["rl"] > mean["sft"] + 0.05, mean


def test_sft_validates_before_training_and_merges_the_best_epoch(games_done):
    for env in ENVS:
        run = games_done / f"results/games/sft/sft-{env}-seed42"
        metrics = json.loads((run / "metrics.json").read_text())
        losses = [e["val_loss"] for e in metrics["epochs"]]
        assert len(losses) == REDUCED_GAMES["sft"]["epochs"] and min(losses) < metrics["initial_val_loss"]
        best = min(metrics["epochs"], key=lambda e: e["val_loss"])["epoch"]
        report = json.loads((games_done / f"results/games/models/sft-{env}-seed42/merged/merge_report.json").read_text())
        # the tiny base trains fully (games.sft.train_mode: full): the best epoch's model is exported, verified
        assert report["verified"] and report["train_mode"] == "full" and report["checkpoint"].endswith(f"epoch_{best}")


def test_games_data_splits_and_corpus(games_done):
    corpus = [json.loads(line)["text"] for line in
              (games_done / "data/processed/games/corpus.jsonl").read_text().splitlines()]
    for env in ENVS:
        d = games_done / f"data/processed/games/{env}"
        levels = [json.loads(line) for line in (d / "levels.jsonl").read_text().splitlines()]
        hashes = {s: {lv["hash"] for lv in levels if lv["split"] == s} for s in ("train", "val", "test")}
        assert not (hashes["train"] & hashes["test"]) and not (hashes["val"] & hashes["test"])
        test_rows = pd.read_parquet(d / "test.parquet")
        assert {r["split"] for r in test_rows["extra_info"]} == {"test"}
        assert len(test_rows) == sum(lv["optimal"] for lv in levels if lv["split"] == "test")
        # disjoint by every solver-path state: no test (val) state in a train or val (train) row,
        # nor in the base's corpus, as the workflow wrote them
        style = REDUCED_GAMES.get("render") or yaml.safe_load((REPO / "config.yaml").read_text())["games"]["render"]
        assert_held_out(d, corpus, style)
    # games.corpus.levels_per_document train levels per document, one instruction each
    per_doc = yaml.safe_load((REPO / "config.yaml").read_text())["games"]["corpus"]["levels_per_document"]
    n_train = REDUCED_GAMES["counts"]["train"]
    assert len(corpus) == 2 * -(-n_train // per_doc)
    assert sum(doc.count("Answers: <answer>") for doc in corpus) == len(corpus)
    assert sum(doc.count("\nSolved.") for doc in corpus) == 2 * n_train


def test_finished_games_workflow_plans_nothing(games_done):
    proc = smk(games_done, "games", dry=True)
    assert proc.returncode == 0 and planned_jobs(proc.stdout) == {}, proc.stdout[-2000:]


def test_the_chain_to_rl_runs_before_the_play_jobs_beside_it(games_done):
    """Base -> SFT -> merge -> RL is the games target's longest path: its jobs outrank the play
    jobs, so on 2 cores a play job never holds back Sokoban's SFT or RL (docs/games.md, time)."""
    out = smk(games_done, "games", "--forceall", dry=True).stdout
    jobs = []  # [rule, priority] per planned job, in the order printed
    for line in out.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            jobs.append([m.group(1), 0])
        elif (m := re.match(r"\s+priority: (\d+)$", line)) and jobs:
            jobs[-1][1] = int(m.group(1))
    priority = {}
    for rule, p in jobs:
        priority.setdefault(rule, set()).add(p)
    assert priority["game_sft"] == priority["game_merge"] == priority["game_rl"] == {10}, priority
    assert priority["game_play"] == {0} and priority["game_table"] == {0}, priority


def test_reward_or_rl_config_change_retrains_games_rl(games_done, tmp_path):
    """A changed reward setting (games.rl.format_penalty) or reward code (the games' RL task)
    retrains both envs' RL and remakes the RL table, and nothing of SFT."""
    extra = tmp_path / "penalty.yaml"
    extra.write_text(yaml.safe_dump({"games": {"rl": dict(REDUCED_GAMES["rl"], format_penalty=-0.5)}}))
    jobs = planned_jobs(smk(games_done, "games", extra_config=extra, dry=True).stdout)
    assert jobs.get("game_rl") == 2 and jobs.get("game_rl_table") == 1 and "game_sft" not in jobs, jobs
    dst = tmp_path / "clone"
    shutil.copytree(games_done, dst, symlinks=True)
    rl_py = dst / "src/sft2rl/tasks/games/rl.py"
    rl_py.write_text(rl_py.read_text() + "\n# edited\n")
    jobs = planned_jobs(smk(dst, "games", dry=True).stdout)
    assert jobs.get("game_rl") == 2 and "game_sft" not in jobs and "game_merge" not in jobs, jobs


def test_game_data_is_deterministic(games_done, tmp_path):
    dst = tmp_path / "clone"
    shutil.copytree(games_done, dst, symlinks=True)
    before = {env: (dst / f"data/processed/games/{env}/levels.jsonl").read_bytes() for env in ENVS}
    frames = {env: pd.read_parquet(dst / f"data/processed/games/{env}/train.parquet") for env in ENVS}
    proc = smk(dst, "data/processed/games/sokoban/levels.jsonl", "data/processed/games/frozenlake/levels.jsonl",
               "--forcerun", "game_data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for env in ENVS:
        assert (dst / f"data/processed/games/{env}/levels.jsonl").read_bytes() == before[env]
        pd.testing.assert_frame_equal(pd.read_parquet(dst / f"data/processed/games/{env}/train.parquet"), frames[env])


def test_bad_user_rows_stop_before_sft(games_done, tmp_path):
    dst = tmp_path / "clone"
    shutil.copytree(games_done, dst, symlinks=True)
    good = {"prompt": [{"role": "user", "content": "grid"}], "response": "<answer> Up </answer>"}
    (dst / "data/raw").mkdir(parents=True, exist_ok=True)
    (dst / "data/raw/sok_train.jsonl").write_text(
        json.dumps(good) + "\n" + json.dumps(dict(good, response="<answer> Jump </answer>")) + "\n")
    (dst / "data/raw/sok_val.jsonl").write_text(json.dumps(good) + "\n")
    extra = tmp_path / "user.yaml"
    extra.write_text(yaml.safe_dump({"games": {"sft_files": {"sokoban": {"train": "data/raw/sok_train.jsonl",
                                                                         "val": "data/raw/sok_val.jsonl"}}}}))
    proc = smk(dst, "results/games/models/sft-sokoban-seed42/merged", extra_config=extra)
    assert proc.returncode != 0
    assert "data/raw/sok_train.jsonl:2: field 'response': answer 'Jump' is not one of" in proc.stderr + proc.stdout
    assert not (dst / "data/processed/games/sokoban/user/train.parquet").exists()
