"""Game levels and SFT rows: generation, disjoint splits, the pretraining corpus, user rows.

Levels: each split draws one level per seed from its own seed range (``games.seeds``),
in the order test, val, train. Every level is solved by BFS; its *path states* are the
states along that solution, the initial and the solved one included, each as the grid it
renders to (the observation a row's prompt is built from). A draw is rejected, and the
same seed drawn again (its next attempt), when

* BFS cannot solve it within ``max_solution_length`` moves, or within the episode's step
  limit (``eval.max_steps``): a level no policy can win in an episode, the solver included,
  would only lower every success rate;
* its initial grid was already drawn, in this split or an earlier one;
* (val and train only) any state it can reach within the episode's step limit
  (``eval.max_steps`` moves, whatever the moves) is one a level of an earlier split can
  reach within that limit: a val level shares no reachable state with a test level, a train
  level none with a test or val level. (Comparing only the solver paths let a Sokoban train
  level whose player stands a few steps from a test level's, in the same room with the same
  box, through: 9 of the 500 default test levels were a walk away from a train level's start,
  so RL's train episodes could play test states.)

So the splits are disjoint by every state play can meet, and in particular by every
solver-path state, not only by seed or initial grid:
no grid a held-out row's prompt shows (with ``history: false`` the current one; with
``history: true`` every one so far; with ``history: k`` the last k + 1) is in a training row, so no held-out (prompt, target)
pair is a training row, and the pretraining corpus (train levels along the same paths)
holds no held-out state. The rule is on grids, so the levels do not depend on ``history``. Test levels are
drawn first against nothing but each other, so they are a function of their seeds alone
and never depend on how many val or train levels there are. Each level records the
``attempt`` it was drawn at and ``overlap_redraws``, the attempts rejected for a shared
reachable state.

Rows: one per solver step (the reference schema): ``data_source`` (the env), ``prompt``
(messages), ``response``, ``ability: "bfs"``, ``reward_model: {style: "rule",
ground_truth: {action, plan}}``, ``extra_info: {split, index, level, step}``, and
``messages`` (prompt + the response as the last assistant turn: what both SFT backends
read; the loss is on that last turn only).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

from ...rows import check_overlap_policy, check_prompt_response
from ...errors import DataError
from ...io import read_rows, write_json, write_jsonl, write_parquet
from . import ACTIONS, ENVS
from .prompts import ANSWER_RE, instruction, messages, parse_action, render, response
from .solver import bfs, plan_states

SPLITS = ("test", "val", "train")  # generation order: test levels first, fixed by their seeds alone
LOG = logging.getLogger(__name__)


def game(name: str):
    """The module of one game (``sokoban`` or ``frozenlake``)."""
    if name == "sokoban":
        from . import sokoban
        return sokoban
    if name == "frozenlake":
        from . import frozenlake
        return frozenlake
    raise ValueError(f"unknown game {name!r}: expected one of {list(ENVS)}")


def level_hash(env: str, grid: list[str]) -> str:
    return hashlib.sha256((env + "\n" + "\n".join(grid)).encode()).hexdigest()[:16]


def rules(env: str, grid: list[str]):
    return game(env).Rules(grid)


def _draw(env: str, seed: int, attempt: int, cfg: dict[str, Any]) -> list[str]:
    env_cfg = cfg[env]
    # A redraw of the same seed is seed-derived too: (seed, attempt) seeds the generator.
    seed_key = int(seed) * 1000 + attempt
    if env == "sokoban":
        return game(env).generate(seed_key, size=tuple(env_cfg["size"]), boxes=env_cfg["boxes"],
                                  search_depth=env_cfg["search_depth"], max_states=env_cfg["max_states"])
    return game(env).generate(seed_key, size=env_cfg["size"], p_frozen=env_cfg["p_frozen"])


def path_hashes(env: str, grid: list[str], plan: list[str]) -> set[str]:
    """The states along a level's solution (initial and solved included), as grid hashes."""
    r = rules(env, grid)
    return {level_hash(env, r.grid(s)) for s in plan_states(r, plan)}


def horizon(cfg: dict[str, Any]) -> int:
    """The step limit of an episode, within which the splits share no reachable state: the
    level config's ``max_steps`` (the workflow's per-env level keys) or, given the whole games
    section, ``eval.max_steps``."""
    return int(cfg["max_steps"] if "max_steps" in cfg else cfg["eval"]["max_steps"])


def reachable_hashes(env: str, grid: list[str], max_steps: int) -> set[str]:
    """Every state play can meet on a level within ``max_steps`` moves (breadth first over all
    actions; a won or lost state ends the episode), as grid hashes: the start, the solver's
    path and every detour."""
    r = rules(env, grid)
    seen = {r.start}
    frontier = [r.start]
    for _ in range(max_steps):
        nxt = []
        for s in frontier:
            if r.won(s) or r.failed(s):
                continue
            for a in ACTIONS:
                n, _ = r.step(s, a)
                if n not in seen:
                    seen.add(n)
                    nxt.append(n)
        frontier = nxt
    return {level_hash(env, r.grid(s)) for s in seen}


def generate_levels(env: str, cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """All levels of one env, split by split (test, val, train), disjoint by every state
    reachable within the step limit (see the module docstring)."""
    seen: set[str] = set()      # initial grids drawn so far, every split
    held: set[str] = set()      # states the levels of the earlier splits can reach
    max_steps = horizon(cfg)
    levels = []
    for split in SPLITS:
        start, count = cfg["seeds"][split], cfg["counts"][split]
        states: set[str] = set()
        for i in range(count):
            seed = start + i
            overlap = 0
            for attempt in range(1000):
                grid = _draw(env, seed, attempt, cfg)
                h = level_hash(env, grid)
                if h in seen:
                    continue
                plan = bfs(rules(env, grid), max_depth=min(cfg["max_solution_length"], max_steps))
                if not plan:
                    continue
                reach = reachable_hashes(env, grid, max_steps)  # the path's states among them
                if reach & held:
                    overlap += 1
                    continue
                break
            else:
                raise RuntimeError(f"{env}: no new solvable level for seed {seed}")
            seen.add(h)
            states |= reach
            levels.append({"env": env, "split": split, "index": i, "seed": seed, "attempt": attempt,
                           "overlap_redraws": overlap, "hash": h, "grid": grid, "optimal": len(plan),
                           "solution": plan})
        held |= states
    return levels


def redraw_counts(levels: list[dict[str, Any]]) -> dict[str, int]:
    """Per split, the levels drawn again because a draw shared a reachable state with an earlier split."""
    return {s: sum(lv.get("overlap_redraws", 0) > 0 for lv in levels if lv["split"] == s) for s in SPLITS}


def _path(level: dict[str, Any]):
    """A level's rules, the states along its solution and their grids."""
    r = rules(level["env"], level["grid"])
    states = plan_states(r, level["solution"])
    return r, states, [r.grid(s) for s in states]


def _row(level: dict[str, Any], cfg: dict[str, Any], k: int, grids: list, answers: list[str], plan: list[str],
         ability: str) -> dict[str, Any]:
    """The SFT row at step ``k`` of a level: the prompt of the observations ``grids`` and the
    replies ``answers`` so far, the target the first action of ``plan``."""
    env = level["env"]
    prompt = messages(env, grids, answers, style=cfg["render"], history=cfg["history"],
                      with_thinking=cfg["with_thinking"], slippery=bool(cfg[env].get("slippery", False)))
    target = response(plan[0], plan, cfg["with_thinking"])
    return {
        "data_source": env, "prompt": prompt, "response": target, "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": {"action": plan[0], "plan": plan}},
        "extra_info": {"split": level["split"], "index": 0, "level": level["index"], "step": k},
        "messages": prompt + [{"role": "assistant", "content": target}],
    }


def level_rows(level: dict[str, Any], cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One SFT row per solver step of a level, with the prompt that step sees."""
    _, _, grids = _path(level)
    answers: list[str] = []
    rows = []
    for k in range(len(level["solution"])):
        rows.append(_row(level, cfg, k, grids[: k + 1], answers, level["solution"][k:], "bfs"))
        answers.append(rows[-1]["response"])  # the history holds the replies the model is trained to give
    return rows


def recovery_counts(cfg: dict[str, Any]) -> tuple[int, int]:
    """``games.recovery``'s rows per path state: (one wrong move off the path, a move that
    changed nothing); (0, 0) when off."""
    rec = cfg.get("recovery", {})
    return int(rec.get("per_state", 0)), int(rec.get("still", 0))


def recovery_rows(level: dict[str, Any], cfg: dict[str, Any], held: set[str]) -> list[dict[str, Any]]:
    """Rows at states one wrong move off the solver's path (``games.recovery.per_state`` per
    path state, drawn with ``games.recovery.seed``), each labelled with the first action of a
    shortest plan from there: the states greedy play reaches after a mistake, which the
    solver's own path never shows (DAgger-style coverage, labelled by BFS). A wrong move that
    changes nothing, leads to a state with no plan (a Sokoban deadlock, a FrozenLake hole), back
    onto the level's own path or to a grid in ``held`` (the val/test path states) gives no row. With ``history: true`` the
    wrong move and its observation are the last turn of the prompt.

    ``games.recovery.still`` (needs a history in the prompt): rows per path state after a wrong
    move that changed nothing (a walk into a wall, a push against one): the prompt's last turn
    shows that move and the same grid again, the target is the solver's action there. They
    teach a policy to leave a move that does nothing, which greedy play otherwise repeats to
    the step limit."""
    rec = cfg.get("recovery", {})
    per_state, still = recovery_counts(cfg)
    if per_state <= 0 and still <= 0:
        return []
    env, thinking = level["env"], cfg["with_thinking"]
    r, states, grids = _path(level)
    rng = random.Random(f"{rec['seed']}:{env}:{level['seed']}:{level.get('attempt', 0)}")
    answers = [response(a, level["solution"][k:], thinking) for k, a in enumerate(level["solution"])]
    own = {level_hash(env, g) for g in grids}  # a step back onto the path is already a row
    rows = []
    for k, action in enumerate(level["solution"]):
        options, stuck = [], []
        for wrong in ACTIONS:
            if wrong == action:
                continue
            nxt, moved = r.step(states[k], wrong)
            if not moved:
                stuck.append(wrong)
                continue
            if per_state <= 0 or r.won(nxt) or r.failed(nxt):
                continue
            grid = r.grid(nxt)
            h = level_hash(env, grid)
            if h in held or h in own:
                continue
            plan = bfs(r, nxt, cfg["max_solution_length"])
            if plan:
                options.append((wrong, grid, plan))
        for wrong, grid, plan in rng.sample(options, min(per_state, len(options))):
            rows.append(_row(level, cfg, k, grids[: k + 1] + [grid],
                             answers[:k] + [response(wrong, [wrong] + plan, thinking)], plan, "bfs-recovery"))
        for wrong in rng.sample(stuck, min(still, len(stuck))):  # the move changed nothing: same grid again
            plan = level["solution"][k:]
            rows.append(_row(level, cfg, k, grids[: k + 1] + [grids[k]],
                             answers[:k] + [response(wrong, [wrong] + plan, thinking)], plan, "bfs-still"))
    return rows


def held_states(levels: list[dict[str, Any]], split: str) -> set[str]:
    """The path states of the splits drawn before ``split`` (test, then val): what a row of
    ``split`` must never show."""
    earlier = SPLITS[: SPLITS.index(split)]
    return {h for lv in levels if lv["split"] in earlier for h in path_hashes(lv["env"], lv["grid"], lv["solution"])}


def split_rows(levels: list[dict[str, Any]], cfg: dict[str, Any], split: str,
               held: set[str] | None = None) -> list[dict[str, Any]]:
    """The SFT rows of ``split``: one per solver step; for train, with ``games.recovery``,
    the recovery rows after each level's own (none at a state in ``held``, by default the
    val/test path states of ``levels``)."""
    rows = [row for lv in levels if lv["split"] == split for row in level_rows(lv, cfg)]
    if split == "train" and max(recovery_counts(cfg)) > 0:
        held = held_states(levels, "train") if held is None else held
        extra = [row for lv in levels if lv["split"] == split for row in recovery_rows(lv, cfg, held)]
        LOG.info("train: %d solver rows, %d recovery rows", len(rows), len(extra))
        rows += extra
    for i, row in enumerate(rows):
        row["extra_info"]["index"] = i
    return rows


def played_out(level: dict[str, Any], style: str, marker: str = "Move:") -> str:
    """A level played out in plain text: the grids along the solver's plan with the move
    between them (``marker`` and the action: "Move: Up"), then "Solved."."""
    env = level["env"]
    r = rules(env, level["grid"])
    grids = [render(r.grid(s), style) for s in plan_states(r, level["solution"])]
    parts = [grids[0]]
    for action, grid in zip(level["solution"], grids[1:]):
        parts += [f"{marker} {action}", grid]
    return "\n".join(parts + ["Solved."])


def corpus_texts(levels: list[dict[str, Any]], cfg: dict[str, Any], levels_per_document: int = 1,
                 marker: str = "Move:") -> list[str]:
    """Pretraining documents for the embedded base: the *train* levels played out in plain text,
    ``levels_per_document`` levels (in seed order) under one copy of the game's instruction.

    The base learns to read grids, the rules and good moves. Each document starts with the
    instruction, so the base sees its answer line (``Answers: <answer> Up </answer> | …``) and
    with it the ``<answer>`` tags; it never sees the chat format, the format line ("Reply as
    …") or a reply, which SFT teaches. With one level per document the instruction is most of
    the corpus (a level's play is a few grids); more levels per document spend the
    pretraining tokens on play. ``marker`` precedes each move ("Move:", or the prompt's own
    "Decide the next action:", so the base predicts the move where the prompt asks for it).
    No validation or test level appears, nor any state of their
    solver paths (the splits are disjoint by path state, :func:`generate_levels`).
    """
    if levels_per_document < 1:
        raise ValueError(f"levels_per_document {levels_per_document}: expected >= 1")
    train = [lv for lv in levels if lv["split"] == "train"]
    docs = []
    for start in range(0, len(train), levels_per_document):
        group = train[start:start + levels_per_document]
        env = group[0]["env"]
        header = instruction(env, bool(cfg[env].get("slippery", False)))
        docs.append("\n\n".join([header] + [played_out(lv, cfg["render"], marker) for lv in group]))
    return docs


def write_game_data(env: str, cfg: dict[str, Any], out_dir: str | Path) -> dict[str, int]:
    """levels.jsonl and {train,val,test}.parquet of one env (written atomically)."""
    out = Path(out_dir)
    levels = generate_levels(env, cfg)
    counts = {}
    for split in ("train", "val", "test"):
        rows = split_rows(levels, cfg, split)
        write_parquet(out / f"{split}.parquet", rows)
        counts[split] = len(rows)
    write_jsonl(out / "levels.jsonl", levels)
    LOG.info("%s: levels drawn again for a reachable state shared with an earlier split %s", env, redraw_counts(levels))
    return counts


def write_level_subset_rows(levels_path: str | Path, cfg: dict[str, Any], n: int, out: str | Path) -> int:
    """SFT rows (one per solver step) of the first ``n`` train levels only, for SFT models of
    lesser strength (the RL-init ablation); the validation rows stay the env's own."""
    levels = read_levels(levels_path)
    train = [lv for lv in levels if lv["split"] == "train"]
    if n > len(train):
        raise ValueError(f"{levels_path}: {n} train levels asked for, {len(train)} exist")
    rows = split_rows(train[:n], cfg, "train", held=held_states(levels, "train"))
    write_parquet(out, rows)
    return len(rows)


# ------------------------------------------------------------------ user-supplied rows
def load_game_rows(path: str | Path) -> list[dict[str, Any]]:
    """Validate game SFT rows (jsonl or parquet): a non-empty message list as ``prompt`` and a
    ``response`` with exactly one ``<answer>`` naming a valid action. Errors name file, row, field."""
    path = Path(path)
    rows = []
    for lineno, row in read_rows(path):
        prompt, resp = check_prompt_response(path, lineno, row)
        n = len(ANSWER_RE.findall(resp))
        if n != 1 or resp.count("<answer>") != 1:
            raise DataError(path, lineno, "response", f"must contain exactly one <answer>…</answer>, found {n}")
        action, _ = parse_action(resp)
        if action is None:
            raise DataError(path, lineno, "response",
                            f"answer {ANSWER_RE.findall(resp)[0].strip()!r} is not one of {list(ACTIONS)}")
        msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
        rows.append({**row, "prompt": msgs, "messages": msgs + [{"role": "assistant", "content": resp}],
                     "_line": lineno})
    if not rows:
        raise DataError(path, None, None, "no rows")
    return rows


_CELLS = {"reference": re.compile(r"(?: \S \t)+"), "spaced": re.compile(r"(?: \S)+")}


def grids_in_text(text: str, style: str) -> list[list[str]]:
    """The grids rendered in ``text`` (:func:`prompts.render`: runs of consecutive lines made of
    cells of ``style`` only), as grid rows."""
    cells, out, run = _CELLS[style], [], []
    for line in [*text.split("\n"), ""]:
        if line and cells.fullmatch(line):
            run.append(line[1::4] if style == "reference" else line[1::2])
        elif run:
            out.append(run)
            run = []
    return out


def held_out_states(levels: list[dict[str, Any]], max_steps: int) -> dict[str, set[str]]:
    """Per split of your own rows, the states it must not show: every state a test level can
    reach within ``max_steps`` (what the generated splits are disjoint by), and for the train
    rows also a val level's (RL validates on them)."""
    reach = {s: {h for lv in levels if lv["split"] == s for h in reachable_hashes(lv["env"], lv["grid"], max_steps)}
             for s in ("test", "val")}
    return {"train": reach["test"] | reach["val"], "val": reach["test"]}


def write_user_rows(train: str, val: str, out_dir: str | Path, *, levels: str | Path | None = None,
                    max_steps: int | None = None, style: str = "reference", policy: str = "refuse",
                    overlap_out: str | Path | None = None) -> dict[str, int]:
    """Validate both user files first, then write them (nothing is written if either is bad).

    ``levels`` (the env's generated levels): a row whose prompt shows a state a held-out level
    can reach (:func:`held_out_states`) is refused (``policy`` "refuse": a DataError naming the
    file, the line of the first and the counts), dropped ("drop") or kept ("allow");
    ``overlap_out`` gets the counts (JSON)."""
    check_overlap_policy("games.test_overlap", policy)
    paths = {"train": train, "val": val}
    loaded = {split: load_game_rows(path) for split, path in paths.items()}
    report: dict[str, Any] = {"policy": policy}
    if levels is not None:
        all_levels = read_levels(levels)
        env = all_levels[0]["env"]
        held = held_out_states(all_levels, int(max_steps))
        for split, rows in loaded.items():
            shows = [i for i, r in enumerate(rows)
                     if any(level_hash(env, g) in held[split]
                            for m in r["prompt"] if m["role"] == "user" for g in grids_in_text(m["content"], style))]
            report[split] = {"rows": len(rows), "showing_held_out": len(shows),
                             "lines": [rows[i]["_line"] for i in shows[:100]]}
            if shows and policy == "refuse":
                raise DataError(paths[split], rows[shows[0]]["_line"], "prompt",
                                f"{len(shows)} of {len(rows)} rows show a state that a held-out {env} level can reach "
                                f"within {max_steps} moves (test{' or val' if split == 'train' else ''} levels). "
                                "Held out means new: set games.test_overlap: drop (leave those rows out) or allow "
                                "(keep them, and the tables score states seen in training)")
            if shows and policy == "drop":
                gone = set(shows)
                loaded[split] = [r for i, r in enumerate(rows) if i not in gone]
                if not loaded[split]:
                    raise DataError(paths[split], None, None, "games.test_overlap: drop leaves no row")
    for split, rows in loaded.items():
        write_parquet(Path(out_dir) / f"{split}.parquet", [{"prompt": r["prompt"], "response": r["response"],
                                                            "messages": r["messages"]} for r in rows])
    if overlap_out is not None:
        write_json(overlap_out, report)
    return {k: len(v) for k, v in loaded.items()}


def read_levels(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    levels = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [lv for lv in levels if split is None or lv["split"] == split]


def rl_levels(levels_path: str | Path, games: dict[str, Any]) -> list[dict]:
    """The train levels RL plays: all of them, or the first ``games.rl.levels`` (local and verl)."""
    levels = read_levels(levels_path, "train")
    n = (games.get("rl") or {}).get("levels")
    return levels[:int(n)] if n else levels
