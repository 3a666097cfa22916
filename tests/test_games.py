"""Game environments: level generation, solver, environment rules, rows, validation, play metrics."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import REPO
from sft2rl.errors import DataError
from sft2rl.tasks.games import ACTIONS, data, frozenlake, play, prompts, sokoban
from sft2rl.tasks.games.solver import bfs, plan_states

CFG = {
    "seeds": {"train": 100000, "val": 102000, "test": 101000},
    "counts": {"train": 40, "val": 8, "test": 12},
    "max_solution_length": 100,
    "sokoban": {"size": [6, 6], "boxes": 1, "search_depth": 30, "max_states": 300000},
    "frozenlake": {"size": 4, "p_frozen": 0.8, "slippery": False},
    "render": "reference", "history": False, "with_thinking": False,
    "max_steps": 15,  # the episode's step limit: the splits share no state reachable within it
}


@pytest.fixture(scope="module", params=["sokoban", "frozenlake"])
def levels(request):
    return request.param, data.generate_levels(request.param, CFG)


# ------------------------------------------------------------------ levels
def test_levels_are_deterministic_across_processes(levels):
    """Same seeds, same levels, also in a process with another hash seed (the reference's defect)."""
    env, lv = levels
    code = ("import json,sys; from sft2rl.tasks.games import data; "
            f"cfg=json.loads(sys.argv[1]); print(json.dumps([l['hash'] for l in data.generate_levels('{env}', cfg)]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(CFG)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO / "src")})
    assert json.loads(out.stdout) == [x["hash"] for x in lv]
    assert [x["hash"] for x in data.generate_levels(env, CFG)] == [x["hash"] for x in lv]


def test_splits_are_disjoint_by_initial_state(levels):
    env, lv = levels
    by_split = {s: {data.level_hash(env, x["grid"]) for x in lv if x["split"] == s} for s in ("train", "val", "test")}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [40, 8, 12]  # no duplicate inside a split
    assert not by_split["train"] & by_split["test"]
    assert not by_split["train"] & by_split["val"]
    assert not by_split["val"] & by_split["test"]
    # the test levels depend on their seeds only, not on how many train levels there are
    more = dict(CFG, counts={"train": 80, "val": 8, "test": 12})
    assert [x["hash"] for x in data.generate_levels(env, more) if x["split"] == "test"] == \
        [x["hash"] for x in lv if x["split"] == "test"]


def test_test_levels_do_not_depend_on_val_or_train(levels):
    """Test levels are drawn first, against each other only: the same with no val and train levels."""
    env, lv = levels
    alone = data.generate_levels(env, dict(CFG, counts={"train": 0, "val": 0, "test": 12}))
    assert alone == [x for x in lv if x["split"] == "test"]
    assert all(x["overlap_redraws"] == 0 for x in alone)


def test_every_level_is_solved_by_its_plan(levels):
    env, lv = levels
    for x in lv:
        r = data.rules(env, x["grid"])
        assert not r.won(r.start)
        states = plan_states(r, x["solution"])
        assert r.won(states[-1]) and not any(r.won(s) or r.failed(s) for s in states[:-1])
        assert len(x["solution"]) == x["optimal"] == len(bfs(r))


def test_a_level_no_episode_can_win_is_drawn_again():
    """A level whose shortest plan is longer than the episode's step limit is drawn again:
    every policy, the solver included, would fail it. With a 4-step limit, first draws of
    these seeds need more moves (the old rule, BFS within max_solution_length only, kept
    them); every level kept is won by its plan within the limit."""
    cfg = dict(CFG, counts={"train": 6, "val": 2, "test": 6}, max_steps=4)
    first = [data._draw("sokoban", cfg["seeds"]["test"] + i, 0, cfg) for i in range(6)]
    assert max(len(bfs(data.rules("sokoban", g))) for g in first) > 4
    lv = data.generate_levels("sokoban", cfg)
    assert len(lv) == 14 and max(x["optimal"] for x in lv) <= 4
    assert any(x["attempt"] > 0 for x in lv if x["split"] == "test")


def test_duplicate_initial_state_is_drawn_again(monkeypatch):
    """A seed whose first draw repeats an earlier level gets its next attempt."""
    real = data._draw
    first = real("frozenlake", 101000, 0, CFG)
    monkeypatch.setattr(data, "_draw", lambda env, seed, attempt, cfg: first if attempt == 0 else real(env, seed, attempt, cfg))
    lv = data.generate_levels("frozenlake", dict(CFG, counts={"train": 3, "val": 1, "test": 2}))
    assert lv[0]["attempt"] == 0 and all(x["attempt"] >= 1 for x in lv[1:])
    assert len({x["hash"] for x in lv}) == len(lv)


def test_train_draw_sharing_a_test_path_state_is_drawn_again(monkeypatch):
    """A train draw whose start is the second state of a test level's path (a new initial grid, so
    not caught as a duplicate level) is rejected: the seed gets its next attempt."""
    real = data._draw
    cfg = dict(CFG, counts={"train": 2, "val": 0, "test": 1})
    test_lv = data.generate_levels("frozenlake", dict(cfg, counts={"train": 0, "val": 0, "test": 1}))[0]
    r = frozenlake.Rules(test_lv["grid"])
    (r1, c1), _ = r.step(r.start, test_lv["solution"][0])
    moved = [list(row.replace("S", "F")) for row in test_lv["grid"]]
    moved[r1][c1] = "S"
    inside = ["".join(row) for row in moved]
    assert data.level_hash("frozenlake", inside) != test_lv["hash"]
    assert r.grid((r1, c1)) == frozenlake.Rules(inside).grid(frozenlake.Rules(inside).start)

    def draw(env, seed, attempt, c):
        return inside if (seed, attempt) == (cfg["seeds"]["train"], 0) else real(env, seed, attempt, c)

    monkeypatch.setattr(data, "_draw", draw)
    lv = data.generate_levels("frozenlake", cfg)
    train = [x for x in lv if x["split"] == "train"]
    assert lv[0] == test_lv
    assert train[0]["attempt"] >= 1 and train[0]["overlap_redraws"] == 1 and train[0]["grid"] != inside
    assert data.redraw_counts(lv) == {"test": 0, "val": 0, "train": 1}


# ------------------------------------------------------------------ held-out states (default sizes)
def path_grids(levels, style, solved=True):
    """Every state on the solver paths of these levels (the solved one too unless ``solved`` is
    False: only the states the rows are built on), rendered as in the prompts."""
    out = set()
    for lv in levels:
        r = data.rules(lv["env"], lv["grid"])
        states = plan_states(r, lv["solution"])
        out |= {prompts.render(r.grid(s), style) for s in (states if solved else states[:-1])}
    return out


def assert_held_out(out_dir, corpus_docs, style):
    """What the workflow wrote for one env (``out_dir``: levels.jsonl, {train,val,test}.parquet) and
    the corpus documents: no test (prompt, target) pair in train or val, no val pair in train, and no
    rendered state of a test (val) level's solver path in any train or val (train) row, prompt or
    target, nor in the pretraining corpus. Returns the rows per split."""
    rows = {s: pd.read_parquet(out_dir / f"{s}.parquet").to_dict("records") for s in ("train", "val", "test")}
    levels = data.read_levels(out_dir / "levels.jsonl")

    def pair(row):
        return json.dumps([{"role": m["role"], "content": m["content"]} for m in row["prompt"]]), row["response"]

    def text(split):  # every message of every row, each framed by newlines
        return "\n".join("\n" + m["content"] + "\n" for row in rows[split] for m in row["messages"])

    pairs = {s: {pair(r) for r in rows[s]} for s in rows}
    shared = {f"{a} in {b}": len(pairs[a] & pairs[b])
              for a, b in (("test", "train"), ("test", "val"), ("val", "train"))}
    assert shared == dict.fromkeys(shared, 0), f"(prompt, target) pairs shared: {shared}"
    grids = {s: path_grids([lv for lv in levels if lv["split"] == s], style) for s in rows}
    texts = {s: text(s) for s in rows}
    corpus = "\n".join("\n" + d + "\n" for d in corpus_docs)
    # not vacuous: every test row's own state is found in the test rows' text this way
    row_grids = path_grids([lv for lv in levels if lv["split"] == "test"], style, solved=False)
    assert row_grids and all(("\n" + g + "\n") in texts["test"] for g in row_grids)
    for held, others in (("test", ("train", "val")), ("val", ("train",))):
        for g in grids[held]:
            needle = "\n" + g + "\n"
            assert needle not in corpus, f"a {held} state is in the pretraining corpus:\n{g}"
            for other in others:
                assert needle not in texts[other], f"a {held} state is in a {other} row:\n{g}"
    return {s: len(rows[s]) for s in rows}


@pytest.mark.parametrize("history,recovery,still", [(False, 0, 0), (True, 0, 0), (False, 1, 0), (True, 1, 0), (1, 1, 1)])
def test_default_splits_share_no_solver_path_state(tmp_path, history, recovery, still):
    """config.yaml's games section (its counts and sizes), through the functions the game_data and
    game_corpus rules call: test and val states are nowhere in train (rows and corpus), test nowhere
    in val; with a window of one turn, rows after a move that changed nothing too. (Before the
    splits were disjoint by path state, 43 Sokoban and 6 FrozenLake test rows were training rows.)"""
    games = yaml.safe_load((REPO / "config.yaml").read_text())["games"]
    games["history"] = history
    games["recovery"] = {"per_state": recovery, "still": still, "seed": 0}
    docs = {}
    for env in games["envs"]:
        data.write_game_data(env, games, tmp_path / env)
        docs[env] = data.corpus_texts(data.read_levels(tmp_path / env / "levels.jsonl"), games, **games["corpus"])
    corpus = [d for env in games["envs"] for d in docs[env]]
    for env in games["envs"]:
        counts = assert_held_out(tmp_path / env, corpus, games["render"])
        assert counts["test"] >= games["counts"]["test"] and counts["train"] > counts["val"] > 0


def test_default_splits_share_no_state_reachable_within_the_step_limit():
    """config.yaml's levels: no state a train (val) episode can meet within eval.max_steps moves,
    whatever it plays, is one a test (val) episode can meet; RL's train episodes never play a
    held-out state. (Disjoint by solver path only, 9 of the 500 Sokoban test levels were a walk
    of 1-4 moves from a train level's start, e.g. the same room and box with the player a step
    to the left.) Reachability is computed here on the env's own step()."""
    games = yaml.safe_load((REPO / "config.yaml").read_text())["games"]
    limit = games["eval"]["max_steps"]

    def reach(env, grid):
        r = data.rules(env, grid)
        seen, frontier = {r.start}, [r.start]
        for _ in range(limit):
            frontier = [n for s in frontier if not (r.won(s) or r.failed(s)) for a in ACTIONS
                        for n in [r.step(s, a)[0]] if not (n in seen or seen.add(n))]
        return {tuple(r.grid(s)) for s in seen}

    for env in games["envs"]:
        levels = data.generate_levels(env, games)
        states = {s: set() for s in ("train", "val", "test")}
        for lv in levels:
            states[lv["split"]] |= reach(env, lv["grid"])
        assert len(states["test"]) > 5 * games["counts"]["test"]  # detours too, not only the paths
        for a, b in (("test", "train"), ("test", "val"), ("val", "train")):
            assert not states[a] & states[b], f"{env}: {len(states[a] & states[b])} {a} states reachable in {b}"
        assert data.redraw_counts(levels)["train"] > 0


@pytest.mark.parametrize("env_name", ["sokoban", "frozenlake"])
def test_recovery_rows_are_one_wrong_move_off_the_path_with_an_optimal_target(env_name):
    """games.recovery: each train level adds up to per_state rows per path state, at a state one
    moving, non-losing wrong move away that is on no path of its own level, labelled with an
    action that starts a shortest plan from there; the same seed draws the same rows, another seed
    others; a state in ``held`` gives no row; per_state 0 gives the solver's rows only."""
    from sft2rl.tasks.games.solver import optimal_actions

    cfg = dict(CFG, recovery={"per_state": 1, "seed": 0})
    levels = [lv for lv in data.generate_levels(env_name, cfg) if lv["split"] == "train"]
    base = data.split_rows(levels, dict(CFG, recovery={"per_state": 0, "seed": 0}), "train")
    rows = data.split_rows(levels, cfg, "train", held=set())
    rec = [r for r in rows if r["ability"] == "bfs-recovery"]
    assert rows[:len(base)] == base and len(rec) == len(rows) - len(base)
    assert len(rec) >= len(base) // 2  # most path states have a wrong move with a plan
    by_level = {lv["index"]: lv for lv in levels}
    for row in rec:
        lv = by_level[row["extra_info"]["level"]]
        r = data.rules(env_name, lv["grid"])
        path = plan_states(r, lv["solution"])
        k = row["extra_info"]["step"]
        shown = row["prompt"][-1]["content"]  # the grid of the state the row is at
        state = next(n for a in ACTIONS for n, moved in [r.step(path[k], a)]
                     if moved and prompts.render(r.grid(n), "reference") in shown)
        assert state not in path and not r.failed(state)
        assert row["reward_model"]["ground_truth"]["action"] in optimal_actions(r, state)
        assert row["response"] == prompts.response(row["reward_model"]["ground_truth"]["action"])
    assert [r["prompt"] for r in data.split_rows(levels, cfg, "train", held=set())] == [r["prompt"] for r in rows]
    other = data.split_rows(levels, dict(cfg, recovery={"per_state": 1, "seed": 1}), "train", held=set())
    assert [r["prompt"] for r in other] != [r["prompt"] for r in rows]
    # a held state is never a row: hold every state the first level's recovery rows show
    first = [r for r in rec if r["extra_info"]["level"] == levels[0]["index"]]
    r0 = data.rules(env_name, levels[0]["grid"])
    held = {data.level_hash(env_name, r0.grid(n)) for s in plan_states(r0, levels[0]["solution"])
            for a in ACTIONS for n, _ in [r0.step(s, a)]}
    kept = [r for r in data.split_rows(levels, cfg, "train", held=held) if r["ability"] == "bfs-recovery"]
    assert first and not [r for r in kept if r["extra_info"]["level"] == levels[0]["index"]]


def test_still_rows_show_a_move_that_changed_nothing_then_the_solver_action():
    """games.recovery.still (with a history window): at a path state, a wrong move that leaves
    the grid as it was is the prompt's last turn (that move, the same grid again) and the
    target is the solver's action there; at most ``still`` per path state, only where such a
    move exists; the Markov prompt refuses the key (the row would repeat the solver's)."""
    import yaml

    from sft2rl.config import ConfigError, check_config

    cfg = dict(CFG, history=1, recovery={"per_state": 0, "still": 1, "seed": 0})
    levels = [lv for lv in data.generate_levels("sokoban", cfg) if lv["split"] == "train"]
    base = data.split_rows(levels, dict(cfg, recovery={"per_state": 0, "seed": 0}), "train")
    rows = data.split_rows(levels, cfg, "train", held=set())
    still = [r for r in rows if r["ability"] == "bfs-still"]
    assert rows[:len(base)] == base and len(still) == len(rows) - len(base) > 0
    by_level = {lv["index"]: lv for lv in levels}
    expected = 0
    for lv in levels:
        r = data.rules("sokoban", lv["grid"])
        path = plan_states(r, lv["solution"])
        expected += sum(any(not r.step(s, a)[1] for a in ACTIONS if a != lv["solution"][k]) for k, s in enumerate(path[:-1]))
    assert len(still) == expected  # one per path state that has a wrong move changing nothing
    for row in still:
        lv = by_level[row["extra_info"]["level"]]
        k = row["extra_info"]["step"]
        r = data.rules("sokoban", lv["grid"])
        state = plan_states(r, lv["solution"])[k]
        grid = prompts.render(r.grid(state), "reference")
        wrong = prompts.parse_action(row["prompt"][-2]["content"])[0]
        assert row["prompt"][-2]["role"] == "assistant" and wrong != lv["solution"][k]
        assert not r.step(state, wrong)[1]  # the move changed nothing
        assert grid in row["prompt"][1]["content"] and grid in row["prompt"][-1]["content"]
        assert row["prompt"][-1]["content"].startswith("After you take this action")
        assert row["response"] == prompts.response(lv["solution"][k])
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["games"]["recovery"]["still"] = 1
    with pytest.raises(ConfigError, match="games.recovery.still"):
        check_config(config, REPO / "workflow/schemas/config.schema.yaml")


@pytest.mark.parametrize("style", ["reference", "spaced"])
def test_cell_tokens_read_each_cell_as_one_token_and_round_trip(levels, style):
    """games.tiny.cell_tokens: the games' tokenizer reads every cell of the reference rendering
    as one token (the symbol with its spacing and tab), and decodes the prompt back to the very
    text a real model reads; several levels per corpus document keep one instruction each."""
    from sft2rl.model import build_tokenizer

    env, levels = levels
    games = dict(copy.deepcopy(CFG), render=style)
    docs = data.corpus_texts(levels, games, levels_per_document=4, marker=prompts.DECIDE)
    train = [lv for lv in levels if lv["split"] == "train"]
    assert len(docs) == -(-len(train) // 4) and all(d.count("Answers: <answer>") == 1 for d in docs)
    moves = sum(len(lv["solution"]) for lv in train)
    assert sum(d.count(prompts.DECIDE + " ") for d in docs) == moves and "Move:" not in "".join(docs)
    added = ("<answer>", "</answer>") + tuple(prompts.cell_tokens(style))
    tok = build_tokenizer(docs, 512, added)
    cell_ids = {tok.convert_tokens_to_ids(t) for t in prompts.cell_tokens(style)}
    assert len(cell_ids) == len(set(sokoban.SYMBOLS) | set(frozenlake.SYMBOLS))
    for lv in levels[:20]:
        r = data.rules(env, lv["grid"])
        shown = r.grid(plan_states(r, lv["solution"])[0])
        ids = tok.encode(prompts.render(shown, style), add_special_tokens=False)
        cells = sum(len(row) for row in shown)
        assert sum(i in cell_ids for i in ids) == cells and len(ids) == cells + len(shown) - 1
        msgs = data.level_rows(lv, games)[0]["prompt"]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


# ------------------------------------------------------------------ Sokoban rules (hand-made rooms)
ROOM = ["######",
        "#_P_O#",
        "#_X_O#",
        "#_X_O#",
        "#___X#",
        "######"]


def test_sokoban_push_into_wall_and_two_boxes_do_not_move():
    r = sokoban.Rules(["#####", "#PX##", "#_O_#", "#####"])
    state, moved = r.step(r.start, "Right")  # box against the wall
    assert not moved and state == r.start
    room = ["#######", "#PXX_O#", "#__O__#", "#######"]  # two boxes in a row
    r2 = sokoban.Rules(room)
    state, moved = r2.step(r2.start, "Right")
    assert not moved and state == r2.start
    state, moved = r2.step(r2.start, "Up")  # into a wall
    assert not moved


def test_sokoban_box_onto_target_and_win_through_env():
    env = sokoban.SokobanEnv(["#####", "#PXO#", "#####"])
    obs, _ = env.reset(seed=0)
    assert obs == "#####\n#PXO#\n#####"
    obs, reward, terminated, truncated, info = env.step(ACTIONS.index("Right"))
    assert obs == "#####\n#_P√#\n#####"
    assert terminated and info["won"] and reward == pytest.approx(-0.1 + 1 + 10)
    env2 = sokoban.SokobanEnv(ROOM, max_steps=2)
    env2.reset()
    _, _, terminated, truncated, info = env2.step(ACTIONS.index("Down"))  # box below, another box behind it
    assert not terminated and not truncated and not info["moved"]
    _, _, terminated, truncated, _ = env2.step(ACTIONS.index("Left"))
    assert truncated and not terminated


def test_sokoban_rendering_symbols():
    grid = sokoban.to_grid((3, 5), {(0, c) for c in range(5)} | {(2, c) for c in range(5)} | {(1, 0), (1, 4)},
                           {(1, 1), (1, 3)}, ((1, 1), frozenset({(1, 2), (1, 3)})))
    assert grid == ["#####", "#SX√#", "#####"]
    assert prompts.render(grid, "reference").splitlines()[1] == " # \t S \t X \t √ \t # \t"
    assert prompts.render(grid, "spaced").splitlines()[1] == " # S X √ #"
    with pytest.raises(ValueError, match="unknown symbol"):
        sokoban.parse(["#Q#"])


# ------------------------------------------------------------------ FrozenLake (gymnasium's env)
def test_frozenlake_uses_gymnasium_step_semantics():
    desc = ["SFH", "FFF", "HFG"]
    env = frozenlake.make_env(desc, slippery=False)
    env.reset(seed=0)
    rules = frozenlake.Rules(desc)
    assert rules.grid(frozenlake.position(env)) == ["P_O", "___", "O_G"]
    env.step(frozenlake.ENV_ACTION["Up"])  # off the edge: stays
    assert frozenlake.position(env) == (0, 0)
    _, r, term, _, _ = env.step(frozenlake.ENV_ACTION["Right"])
    _, r, term, _, _ = env.step(frozenlake.ENV_ACTION["Right"])  # into the hole
    assert term and r == 0 and rules.grid(frozenlake.position(env)) == ["__X", "___", "O_G"]
    env.reset(seed=0)
    for a in bfs(rules):
        _, r, term, _, _ = env.step(frozenlake.ENV_ACTION[a])
    assert term and r == 1.0 and rules.grid(frozenlake.position(env))[2] == "O_√"


# ------------------------------------------------------------------ rows and prompts
def test_rows_schema_and_history():
    lv = [x for x in data.generate_levels("sokoban", CFG) if x["split"] == "test" and x["optimal"] >= 3][0]
    rows = data.level_rows(lv, CFG)
    assert len(rows) == lv["optimal"]
    assert [r["response"] for r in rows] == [f"<answer> {a} </answer>" for a in lv["solution"]]
    assert all(r["extra_info"]["split"] == "test" and r["ability"] == "bfs" for r in rows)
    assert rows[0]["prompt"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert all(len(r["prompt"]) == 2 for r in rows)  # history off: a Markov prompt on the current grid
    assert rows[1]["prompt"][1]["content"].count("Decide the next action:") == 1
    hist = data.level_rows(lv, dict(CFG, history=True))
    assert [len(r["prompt"]) for r in hist] == [2 + 2 * k for k in range(len(hist))]
    assert hist[2]["prompt"][2] == {"role": "assistant", "content": f"<answer> {lv['solution'][0]} </answer>"}
    assert hist[2]["prompt"][3]["content"].startswith("After you take this action, the observation is: \n")
    assert hist[2]["messages"][-1] == {"role": "assistant", "content": hist[2]["response"]}
    win = data.level_rows(lv, dict(CFG, history=2))  # the last two turns: an episode begun two actions ago
    assert [len(r["prompt"]) for r in win] == [2 + 2 * min(k, 2) for k in range(len(win))]
    assert win[1]["prompt"] == hist[1]["prompt"] and win[2]["prompt"] == hist[2]["prompt"]
    grids = data._path(lv)[2]
    for k in range(3, len(win)):
        assert win[k]["prompt"][1]["content"] == prompts.first_turn("sokoban", grids[k - 2], "reference", False)
        assert win[k]["prompt"][2:] == hist[k]["prompt"][-4:]
    markov = data.level_rows(lv, dict(CFG, history=False))
    assert [r["prompt"] for r in markov] == [r["prompt"] for r in rows]
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="games.history"):
            prompts.messages("sokoban", [lv["grid"]], [], style="reference", history=bad, with_thinking=False)
    think = data.level_rows(lv, dict(CFG, with_thinking=True))[0]["response"]
    assert think == f"<think> A shortest plan from here: {', '.join(lv['solution'])}. </think> <answer> {lv['solution'][0]} </answer>"


def test_parse_action():
    assert prompts.parse_action("<answer> Up </answer>") == ("Up", True)
    assert prompts.parse_action("<think> x </think> <answer>left</answer>") == ("Left", True)
    assert prompts.parse_action("<answer> Jump </answer>") == (None, True)
    assert prompts.parse_action("Up") == (None, False)
    assert prompts.parse_action("<answer> Up </answer><answer> Down </answer>") == (None, False)


# ------------------------------------------------------------------ user rows
def _user_rows():
    return [{"prompt": [{"role": "user", "content": "grid"}], "response": "<answer> Up </answer>"},
            {"prompt": [{"role": "user", "content": "grid 2"}], "response": "<answer> Left </answer>"}]


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
@pytest.mark.parametrize("bad, field, problem", [
    ({"prompt": []}, "prompt", "non-empty list"),
    ({"prompt": [{"role": "robot", "content": "x"}]}, "prompt[0]", "role"),
    ({"response": "Up"}, "response", "exactly one <answer>"),
    ({"response": "<answer> Up </answer> <answer> Up </answer>"}, "response", "exactly one"),
    ({"response": "<answer> Jump </answer>"}, "response", "'Jump' is not one of"),
])
def test_user_rows_errors_name_file_row_field(tmp_path, ext, bad, field, problem):
    rows = _user_rows()
    rows[1].update(bad)
    path = tmp_path / f"train.{ext}"
    if ext == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(path) if bad.get("prompt") != [] else pd.DataFrame(
            [rows[0], {**rows[1], "prompt": None}]).to_parquet(path)
    good = tmp_path / "val.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in _user_rows()))
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        data.write_user_rows(str(path), str(good), out)
    assert f"{path}:2: field '{field}'" in str(err.value) and problem in str(err.value)
    assert not out.exists()  # nothing downstream written


def test_user_rows_accepted(tmp_path):
    for name in ("train.parquet", "val.jsonl"):
        p = tmp_path / name
        if name.endswith(".parquet"):
            pd.DataFrame(_user_rows()).to_parquet(p)
        else:
            p.write_text("".join(json.dumps(r) + "\n" for r in _user_rows()))
    counts = data.write_user_rows(str(tmp_path / "train.parquet"), str(tmp_path / "val.jsonl"), tmp_path / "out")
    assert counts == {"train": 2, "val": 2}
    rows = pd.read_parquet(tmp_path / "out" / "train.parquet").to_dict("records")
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]


# ------------------------------------------------------------------ play and metrics
def test_scripted_policy_has_its_known_success_rate():
    """Solver moves on even levels, an invalid reply on odd ones: success is exactly the even share."""
    lv = [x for x in data.generate_levels("frozenlake", CFG) if x["split"] == "test"]
    solver = play.bfs_policy(100)

    def scripted(episodes, prompts_):
        good = solver(episodes, prompts_)
        return [g if e.level["index"] % 2 == 0 else "I would go up" for e, g in zip(episodes, good)]

    records = play.play("frozenlake", lv, scripted, CFG, episodes=1, max_steps=10, seed=0, progress=False)
    row = play.summarize(records)
    assert row["success"] == pytest.approx(6 / 12)
    odd = [r for r in records if r["level"] % 2]
    assert all(r["steps"] == 10 and r["valid"] == 0 and r["well_formed"] == 0 for r in odd)
    even_steps = sum(r["steps"] for r in records if r["level"] % 2 == 0)
    assert row["invalid_format_rate"] == pytest.approx(60 / (60 + even_steps))
    assert row["steps_over_optimal"] == pytest.approx(1.0)
    assert row["ci"] == "wilson" and row["success_lo"] < 0.5 < row["success_hi"]


@pytest.mark.parametrize("history", [True, 2])
def test_history_prompt_in_play_matches_training_rows(history):
    """An episode that plays the solver's moves sees exactly the training rows' prompts (the
    whole history, or a window of the last two turns)."""
    cfg = dict(CFG, history=history)
    lv = [x for x in data.generate_levels("sokoban", cfg) if x["split"] == "test" and x["optimal"] >= 3][0]
    rows = data.level_rows(lv, cfg)
    seen = []

    def solver_and_record(episodes, prompts_):
        seen.append(copy.deepcopy(prompts_[0]))
        return [f"<answer> {lv['solution'][len(seen) - 1]} </answer>"]

    rec = play.play("sokoban", [lv], solver_and_record, cfg, episodes=1, max_steps=20, seed=0, progress=False)
    assert rec[0]["won"] and seen == [r["prompt"] for r in rows]


def test_wilson_interval_values():
    lo, hi = play.wilson(50, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)
    lo, hi = play.wilson(0, 20)
    assert lo == 0 and hi == pytest.approx(0.1611, abs=1e-4)


def test_random_and_bfs_baselines():
    lv = [x for x in data.generate_levels("sokoban", CFG) if x["split"] == "test"]
    rows = play.summarize(play.play("sokoban", lv, play.bfs_policy(100), CFG, episodes=1, max_steps=30, seed=0,
                                    progress=False))
    assert rows["success"] == 1.0 and rows["steps_over_optimal"] == 1.0 and rows["valid_action_rate"] == 1.0
    rnd = play.play("sokoban", lv, play.random_policy(0), CFG, episodes=3, max_steps=30, seed=0, progress=False)
    again = play.play("sokoban", lv, play.random_policy(0), CFG, episodes=3, max_steps=30, seed=0, progress=False)
    assert rnd == again  # seeded
    s = play.summarize(rnd)
    assert s["ci"] == "bootstrap-levels" and s["levels"] == 12 and s["episodes"] == 36
    assert s["success_lo"] <= s["success"] <= s["success_hi"]


def test_optimal_actions_on_a_hand_made_map():
    from sft2rl.tasks.games.solver import optimal_actions

    r = frozenlake.Rules(["S_F".replace("_", "F"), "FHF", "FFG"])
    assert sorted(optimal_actions(r, (0, 0))) == ["Down", "Right"]  # two shortest paths around the hole
    assert optimal_actions(r, (1, 2)) == ["Down"]
    assert optimal_actions(r, (2, 1)) == ["Right"]


def test_step_accuracy_of_scripted_policies():
    from sft2rl.tasks.games.solver import optimal_actions

    lv = [x for x in data.generate_levels("sokoban", CFG) if x["split"] == "test"]
    states = play.path_states("sokoban", lv, CFG)
    assert len(states) == sum(x["optimal"] for x in lv)
    assert play.step_accuracy("sokoban", lv, play.bfs_policy(100), CFG, 10, 0)["optimal_action_rate"] == 1.0
    always_up = lambda eps, prompts_: ["<answer> Up </answer>"] * len(eps)  # noqa: E731
    got = play.step_accuracy("sokoban", lv, always_up, CFG, 10, 0)
    want = sum("Up" in optimal_actions(data.rules("sokoban", x["grid"]), s) for x, _, s, _, _ in states) / len(states)
    assert got["optimal_action_rate"] == pytest.approx(want)
    assert 0 < got["chance_optimal_action_rate"] < 1


def _env_at(env_name, lv, state):
    """An episode of a level whose environment starts on ``state`` (through its public reset option)."""
    return play.Episode(env_name, lv, 0, CFG, 10, 0, start=state)


def test_reset_option_starts_each_env_on_a_given_state(levels):
    """reset(options={"state": s}) starts on s (Sokoban: (player, boxes); FrozenLake: (row, col)), and the
    environment steps from there as the level's rules do; without the option, on the level's start."""
    env_name, lvs = levels
    lv = next(x for x in lvs if x["split"] == "test" and x["optimal"] >= 3)
    rules = data.rules(env_name, lv["grid"])
    for state in list(plan_states(rules, lv["solution"]))[:-1]:  # the states the solver moves from
        for action in ACTIONS:
            ep = _env_at(env_name, lv, state)
            assert ep.state() == state and ep.grids == [rules.grid(state)]
            ep.act(f"<answer> {action} </answer>")
            assert ep.state() == rules.step(state, action)[0]
    assert play.Episode(env_name, lv, 0, CFG, 10, 0).state() == rules.start
    bad = ((0, 0), frozenset()) if env_name == "sokoban" else (99, 0)
    with pytest.raises(ValueError, match=f"{env_name} reset: state"):
        _env_at(env_name, lv, bad)


@pytest.mark.parametrize("env_name", ["sokoban", "frozenlake"])
def test_step_accuracy_starts_episodes_on_the_path_states(env_name):
    """step_accuracy's episodes stand on the solver-path states (reset option, no internal attribute):
    the solver scores 1.0, and each episode a policy sees is at its state, grid included."""
    lv = [x for x in data.generate_levels(env_name, CFG) if x["split"] == "test"]
    states = play.path_states(env_name, lv, CFG)
    seen = []

    def probe(episodes, prompts_):
        seen.extend((e.state(), e.grids) for e in episodes)
        return ["<answer> Up </answer>"] * len(episodes)

    play.step_accuracy(env_name, lv, probe, CFG, 10, 0)
    assert seen == [(s, [data.rules(env_name, x["grid"]).grid(s)]) for x, _, s, _, _ in states]
    assert play.step_accuracy(env_name, lv, play.bfs_policy(100), CFG, 10, 0)["optimal_action_rate"] == 1.0


def test_the_reply_limit_must_hold_the_solvers_replies():
    """games.eval.max_new_tokens shorter than the solver's reply at some path state (with
    thinking, the think block states the remaining plan) stops play and RL, naming the key, the
    level and the length; without thinking the default 16 holds every reply."""
    from sft2rl.errors import ConfigError

    class Words:  # a tokenizer whose tokens are words
        def encode(self, text, add_special_tokens=False):
            return text.split()

    levels = [lv for lv in data.generate_levels("sokoban", CFG) if lv["split"] == "test"]
    longest = 1 + max(len(prompts.response(lv["solution"][k], lv["solution"][k:], True).split())
                      for lv in levels for k in range(len(lv["solution"])))  # and the end-of-turn token
    with pytest.raises(ConfigError, match=rf"'games.eval.max_new_tokens' = {longest - 1} is shorter than the solver's "
                                          rf"reply at step \d+ of level \d+ of test.jsonl \({longest} tokens with its "
                                          r"end-of-turn token, games.with_thinking: true\).*at least " + str(longest)):
        play.check_reply_limit(Words(), levels, longest - 1, True, "test.jsonl")
    play.check_reply_limit(Words(), levels, longest, True, "test.jsonl")
    play.check_reply_limit(Words(), levels, 4, False, "test.jsonl")  # "<answer> Up </answer>" and the stop
    with pytest.raises(ConfigError, match="= 3 is shorter"):  # the stop id would be cut: the turn never ends
        play.check_reply_limit(Words(), levels, 3, False, "test.jsonl")


def test_a_box_pushed_off_its_target_costs_what_it_earned_and_a_hole_ends_the_episode_lost():
    """RAGEN's Sokoban reward: -0.1 per action, +1 for each box onto a target and -1 for each
    box off one. FrozenLake: a step into a hole ends the episode as lost, not a timeout."""
    from sft2rl.tasks.games import sokoban
    from sft2rl.tasks.games.sokoban import SokobanEnv

    env = SokobanEnv(["#######", "#P√__O#", "#__X__#", "#######"], max_steps=5)
    env.reset(seed=0)
    _, reward, won, _, info = env.step(list(sokoban.ACTIONS).index("Right"))
    assert reward == pytest.approx(-1.1) and not won and info["moved"]
    level = {"env": "frozenlake", "grid": ["SH", "FG"], "index": 0, "optimal": 2}
    ep = play.Episode("frozenlake", level, 0, CFG, 5, 0)
    ep.act("<answer> Right </answer>")
    assert ep.lost and not ep.won


def test_play_summary_metrics_hand_computed():
    """Per reply: valid actions and well-formed answers; per episode: success, and a timeout
    only when the episode neither won nor lost."""
    records = [dict(level=0, won=True, lost=False, steps=2, valid=2, well_formed=2, optimal=2),
               dict(level=1, won=False, lost=True, steps=3, valid=1, well_formed=3, optimal=2),  # "<answer> Jump"
               dict(level=2, won=False, lost=False, steps=4, valid=3, well_formed=3, optimal=2)]
    row = play.summarize(records)
    assert row["success"] == pytest.approx(1 / 3) and row["ci"] == "wilson"
    assert row["valid_action_rate"] == pytest.approx(6 / 9)
    assert row["invalid_format_rate"] == pytest.approx(1 / 9)
    assert row["timeout_rate"] == pytest.approx(1 / 3)
    assert row["mean_steps_solved"] == 2.0 and row["steps_over_optimal"] == 1.0


def test_recovery_rows_keep_off_the_val_and_test_paths():
    """The states a train recovery row must never show are the val and the test levels' path
    states; a val row's, the test levels'."""
    levels = data.generate_levels("frozenlake", CFG)
    paths = {s: {h for lv in levels if lv["split"] == s for h in data.path_hashes("frozenlake", lv["grid"], lv["solution"])}
             for s in ("test", "val")}
    assert data.held_states(levels, "train") == paths["test"] | paths["val"]
    assert data.held_states(levels, "val") == paths["test"] and data.held_states(levels, "test") == set()
