"""FrozenLake: random maps with a random start and goal, gymnasium's environment, text rendering.

A level is gymnasium's ``desc``: rows of ``S`` start, ``F`` frozen, ``H`` hole, ``G`` goal.
The environment is ``gymnasium.envs.toy_text.FrozenLakeEnv(desc=...)`` with its own step
semantics (a move off the edge stays in place; a hole or the goal ends the episode; with
``is_slippery`` the move goes sideways with probability 2/3). Its actions are 0 Left,
1 Down, 2 Right, 3 Up; :data:`ENV_ACTION` maps our action names onto them.

Generation (the reference algorithm, restated): each cell is frozen with probability
``p_frozen``; a start and a distinct goal are drawn among all cells; the map is drawn
again until a path exists. Every draw comes from a numpy generator seeded by
``(seed, attempt)``.

Rendering: ``P`` player, ``_`` frozen (the start too, once the player left it), ``O`` hole,
``G`` goal, ``X`` player in a hole, ``√`` player on the goal.
"""
from __future__ import annotations

import numpy as np

from . import MOVES

ENV_ACTION = {"Left": 0, "Down": 1, "Right": 2, "Up": 3}
PLAYER, FROZEN, HOLE, GOAL, PLAYER_IN_HOLE, PLAYER_ON_GOAL = "P", "_", "O", "G", "X", "√"
SYMBOLS = (PLAYER, FROZEN, HOLE, GOAL, PLAYER_IN_HOLE, PLAYER_ON_GOAL)
DESC = set("SFHG")

Pos = tuple[int, int]


def check_desc(desc: list[str]) -> None:
    if not desc or len({len(r) for r in desc}) != 1:
        raise ValueError("frozenlake map: rows must be non-empty and of equal length")
    bad = {ch for row in desc for ch in row} - DESC
    if bad:
        raise ValueError(f"frozenlake map: unknown symbols {sorted(bad)} (expected S, F, H, G)")
    for ch in "SG":
        n = sum(row.count(ch) for row in desc)
        if n != 1:
            raise ValueError(f"frozenlake map: {n} cells {ch!r}, expected exactly one")


class Rules:
    """The deterministic (not slippery) transition function, for the solver and rendering."""

    def __init__(self, desc: list[str]):
        check_desc(desc)
        self.desc = desc
        self.shape = (len(desc), len(desc[0]))
        self.start = next((r, c) for r, row in enumerate(desc) for c, ch in enumerate(row) if ch == "S")

    def step(self, state: Pos, action: str) -> tuple[Pos, bool]:
        dr, dc = MOVES[action]
        r, c = state[0] + dr, state[1] + dc
        if not (0 <= r < self.shape[0] and 0 <= c < self.shape[1]):
            return state, False
        return (r, c), True

    def won(self, state: Pos) -> bool:
        return self.desc[state[0]][state[1]] == "G"

    def failed(self, state: Pos) -> bool:
        return self.desc[state[0]][state[1]] == "H"

    def grid(self, state: Pos) -> list[str]:
        rows = []
        for r, row in enumerate(self.desc):
            out = []
            for c, ch in enumerate(row):
                here = (r, c) == state
                if ch == "H":
                    out.append(PLAYER_IN_HOLE if here else HOLE)
                elif ch == "G":
                    out.append(PLAYER_ON_GOAL if here else GOAL)
                else:
                    out.append(PLAYER if here else FROZEN)
            rows.append("".join(out))
        return rows


def _has_path(desc: list[str]) -> bool:
    from .solver import bfs

    return bfs(Rules(desc), max_depth=len(desc) * len(desc[0])) is not None


def generate(seed: int, *, size: int = 4, p_frozen: float = 0.8, max_attempts: int = 10_000) -> list[str]:
    """The map of ``seed``: random holes, a random start and goal, a path between them."""
    for attempt in range(max_attempts):
        rng = np.random.default_rng([int(seed), attempt])
        cells = np.where(rng.random((size, size)) < p_frozen, "F", "H")
        start, goal = rng.choice(size * size, size=2, replace=False)
        cells[divmod(int(start), size)] = "S"
        cells[divmod(int(goal), size)] = "G"
        desc = ["".join(row) for row in cells]
        if _has_path(desc):
            return desc
    raise RuntimeError(f"frozenlake: no map with a path for seed {seed} in {max_attempts} attempts")


def make_env(desc: list[str], slippery: bool, max_steps: int = 100):
    """gymnasium's FrozenLake on this map (``max_episode_steps`` truncates), with one reset option:
    ``reset(options={"state": (row, col)})`` starts the episode on that cell instead of ``S``."""
    from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv
    from gymnasium.wrappers import TimeLimit

    class LevelFrozenLake(FrozenLakeEnv):
        def reset(self, *, seed: int | None = None, options: dict | None = None):
            obs, info = super().reset(seed=seed, options=options)  # the same draws as gymnasium's reset
            start = (options or {}).get("state")
            if start is None:
                return obs, info
            r, c = int(start[0]), int(start[1])
            if not (0 <= r < self.nrow and 0 <= c < self.ncol):
                raise ValueError(f"frozenlake reset: state {start!r} is outside the {self.nrow}x{self.ncol} map")
            self.s = r * self.ncol + c
            return int(self.s), info

    return TimeLimit(LevelFrozenLake(desc=desc, is_slippery=slippery), max_episode_steps=max_steps)


def position(env) -> Pos:
    """The player's cell in a gymnasium FrozenLake env."""
    inner = env.unwrapped
    return divmod(int(inner.s), inner.ncol)
