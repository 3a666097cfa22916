"""Sokoban: level generation by reverse play, the environment, and its text rendering.

Why our own environment: ``gym-sokoban`` (0.0.6, 2019) is built on the old ``gym`` package;
with gym 0.26.2 and numpy 2 its ``step`` fails in gym's passive checker (``np.bool8`` is
gone), and its levels come from the global numpy RNG. The rules here are the standard ones:
the player moves one cell; walking into a box pushes it when the cell beyond is floor or a
target; a wall, or a box behind the box, blocks the move (the step is taken, nothing moves).
The episode is won when every box stands on a target.

A level is a list of strings with the characters of the rendering: ``#`` wall, ``_`` floor,
``O`` target, ``X`` box, ``√`` box on target, ``P`` player, ``S`` player on target.

Generation (the reference algorithm, restated; our implementation): a room is carved by a
random walk inside the border (``1.7 * (w + h)`` steps, direction change probability
0.35, a random small shape carved at each step); targets and the player are placed on floor, boxes start on the targets; then reverse
play (the player walks, and may pull a box behind it) is searched depth-first up to depth
30 (at most 300k states) for the state with the highest score = box swaps x total box
displacement; then 1-3 random player steps. Every random draw comes from a numpy
generator seeded by ``(seed, attempt)``: a level is a pure function of its seed.
"""
from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from . import ACTIONS, MOVES

WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET = "#", "_", "O", "X", "√", "P", "S"
SYMBOLS = (WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET)

Pos = tuple[int, int]
State = tuple[Pos, frozenset]  # (player, boxes)


# ------------------------------------------------------------------ levels as grids
def parse(grid: list[str]) -> tuple[set[Pos], set[Pos], State]:
    """Walls, targets and the (player, boxes) state of a level grid."""
    walls, targets, boxes, player = set(), set(), set(), None
    for r, row in enumerate(grid):
        for c, ch in enumerate(row):
            if ch not in SYMBOLS:
                raise ValueError(f"sokoban grid row {r}: unknown symbol {ch!r} (expected one of {''.join(SYMBOLS)})")
            if ch == WALL:
                walls.add((r, c))
            if ch in (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET):
                targets.add((r, c))
            if ch in (BOX, BOX_ON_TARGET):
                boxes.add((r, c))
            if ch in (PLAYER, PLAYER_ON_TARGET):
                if player is not None:
                    raise ValueError("sokoban grid: more than one player")
                player = (r, c)
    if player is None:
        raise ValueError("sokoban grid: no player")
    if len(boxes) != len(targets) or not boxes:
        raise ValueError(f"sokoban grid: {len(boxes)} boxes for {len(targets)} targets")
    return walls, targets, (player, frozenset(boxes))


def to_grid(shape: tuple[int, int], walls: set[Pos], targets: set[Pos], state: State) -> list[str]:
    player, boxes = state
    rows = []
    for r in range(shape[0]):
        row = []
        for c in range(shape[1]):
            p = (r, c)
            if p in walls:
                ch = WALL
            elif p == player:
                ch = PLAYER_ON_TARGET if p in targets else PLAYER
            elif p in boxes:
                ch = BOX_ON_TARGET if p in targets else BOX
            else:
                ch = TARGET if p in targets else FLOOR
            row.append(ch)
        rows.append("".join(row))
    return rows


class Rules:
    """The pure transition function of one level (what the solver and the env share)."""

    def __init__(self, grid: list[str]):
        self.shape = (len(grid), len(grid[0]))
        self.walls, self.targets, self.start = parse(grid)

    def step(self, state: State, action: str) -> tuple[State, bool]:
        """The next state and whether anything moved."""
        (r, c), boxes = state
        dr, dc = MOVES[action]
        nxt = (r + dr, c + dc)
        if nxt in self.walls:
            return state, False
        if nxt in boxes:
            beyond = (nxt[0] + dr, nxt[1] + dc)
            if beyond in self.walls or beyond in boxes:
                return state, False
            return (nxt, (boxes - {nxt}) | {beyond}), True
        return (nxt, boxes), True

    def won(self, state: State) -> bool:
        return state[1] <= self.targets

    def failed(self, state: State) -> bool:  # no losing state in Sokoban (deadlocks play on to the step limit)
        return False

    def grid(self, state: State) -> list[str]:
        return to_grid(self.shape, self.walls, self.targets, state)


# ------------------------------------------------------------------ generation
#: Shapes carved around each cell of the walk (offsets from it): bars, corners and blocks,
#: so that rooms have open areas and not only one-cell corridors.
CARVE_SHAPES = (
    ((0, -1), (0, 0), (0, 1)), ((-1, 0), (0, 0), (1, 0)),
    ((0, 0), (0, 1), (1, 0), (1, 1)), ((0, 0), (0, 1), (1, 0)), ((0, 0), (0, -1), (1, 0)),
    ((0, 0), (-1, 0), (0, 1)), ((0, 0), (-1, 0), (0, -1)),
)


def _carve_room(rng: np.random.Generator, h: int, w: int) -> set[Pos]:
    """Floor cells carved by a random walk inside the border wall (a random shape at each cell)."""
    steps = int(1.7 * (w + h))
    dirs = list(MOVES.values())
    pos = (int(rng.integers(1, h - 1)), int(rng.integers(1, w - 1)))
    direction = dirs[int(rng.integers(4))]
    floor: set[Pos] = set()
    for _ in range(steps):
        if rng.random() < 0.35:
            direction = dirs[int(rng.integers(4))]
        for dr, dc in CARVE_SHAPES[int(rng.integers(len(CARVE_SHAPES)))]:
            cell = (pos[0] + dr, pos[1] + dc)
            if 1 <= cell[0] <= h - 2 and 1 <= cell[1] <= w - 2:
                floor.add(cell)
        nxt = (pos[0] + direction[0], pos[1] + direction[1])
        if 1 <= nxt[0] <= h - 2 and 1 <= nxt[1] <= w - 2:
            pos = nxt
    return floor


def _reverse_play(floor: set[Pos], targets: set[Pos], player: Pos, max_depth: int, max_states: int) -> State:
    """Depth-first reverse play from the solved state: the state with the best score."""
    start: State = (player, frozenset(targets))
    best, best_score = start, 0
    seen = {start}
    # stack entries: (state, depth, swaps, last pulled box position)
    stack = [(start, 0, 0, None)]
    while stack and len(seen) < max_states:
        state, depth, swaps, last = stack.pop()
        boxes = state[1]
        displacement = sum(min(abs(b[0] - t[0]) + abs(b[1] - t[1]) for t in targets) for b in boxes)
        score = swaps * displacement
        if score > best_score:
            best, best_score = state, score
        if depth >= max_depth:
            continue
        (r, c) = state[0]
        for action in ACTIONS:
            dr, dc = MOVES[action]
            nxt = (r + dr, c + dc)
            if nxt not in floor or nxt in boxes:
                continue
            behind = (r - dr, c - dc)
            options = [((nxt, boxes), swaps, last)]
            if behind in boxes:  # pull the box behind the player onto the player's cell
                moved = (boxes - {behind}) | {(r, c)}
                options.append(((nxt, moved), swaps + (last != behind), (r, c)))
            for new_state, new_swaps, new_last in options:
                if new_state not in seen:
                    seen.add(new_state)
                    stack.append((new_state, depth + 1, new_swaps, new_last))
    return best


def generate(seed: int, *, size: tuple[int, int] = (6, 6), boxes: int = 1, search_depth: int = 30,
             max_states: int = 300_000, max_attempts: int = 1000) -> list[str]:
    """The level of ``seed``: a grid whose boxes are not all on targets, solvable by construction."""
    h, w = size
    for attempt in range(max_attempts):
        rng = np.random.default_rng([int(seed), attempt])
        floor = _carve_room(rng, h, w)
        cells = sorted(floor)
        if len(cells) < boxes + 2:
            continue
        pick = rng.permutation(len(cells))
        targets = {cells[i] for i in pick[:boxes]}
        player = cells[pick[boxes]]
        state = _reverse_play(floor, targets, player, search_depth, max_states)
        if state[1] <= targets:
            continue  # no box moved off its target
        (r, c), box_set = state
        for _ in range(int(rng.integers(1, 4))):  # 1-3 random player steps (no pulls)
            free = [(r + dr, c + dc) for dr, dc in MOVES.values()
                    if (r + dr, c + dc) in floor and (r + dr, c + dc) not in box_set]
            if free:
                r, c = free[int(rng.integers(len(free)))]
        walls = {(i, j) for i in range(h) for j in range(w)} - floor
        return to_grid((h, w), walls, targets, ((r, c), box_set))
    raise RuntimeError(f"sokoban: no level for seed {seed} in {max_attempts} attempts")


# ------------------------------------------------------------------ the environment
class SokobanEnv(gymnasium.Env):
    """One fixed level as a gymnasium environment. Actions: 0 Up, 1 Down, 2 Left, 3 Right.

    Observation: the grid as text (one string, rows joined by newlines). Reward per step:
    -0.1, +1 per box pushed onto a target, -1 per box pushed off one, +10 on the win (the
    reference's shaping); the episode terminates on the win; ``max_steps`` truncates.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, grid: list[str], max_steps: int = 100, render_mode: str | None = None):
        self.rules = Rules(grid)
        self.max_steps = max_steps
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(len(ACTIONS))
        h, w = self.rules.shape
        self.observation_space = spaces.Text(max_length=h * (w + 1), charset="".join(SYMBOLS) + "\n")
        self.state, self.steps = self.rules.start, 0

    def _obs(self) -> str:
        return "\n".join(self.rules.grid(self.state))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode at the level's start, or at ``options["state"]`` = (player, boxes):
        any state of this level (a cell that is not a wall, one box per target)."""
        super().reset(seed=seed)
        start = (options or {}).get("state")
        self.state, self.steps = self.rules.start if start is None else self._check_state(start), 0
        return self._obs(), {"won": self.rules.won(self.state)}

    def _check_state(self, state) -> State:
        player, boxes = state
        player, boxes = (int(player[0]), int(player[1])), frozenset((int(r), int(c)) for r, c in boxes)
        h, w = self.rules.shape
        cells = [player, *boxes]
        if any(not (0 <= r < h and 0 <= c < w) or (r, c) in self.rules.walls for r, c in cells):
            raise ValueError(f"sokoban reset: state {state!r} puts the player or a box outside the room or on a wall")
        if player in boxes or len(boxes) != len(self.rules.targets):
            raise ValueError(f"sokoban reset: state {state!r} needs the player off the boxes and "
                             f"{len(self.rules.targets)} box(es), one per target")
        return player, boxes

    def step(self, action: int):
        before = len(self.state[1] & self.rules.targets)
        self.state, moved = self.rules.step(self.state, ACTIONS[int(action)])
        self.steps += 1
        after = len(self.state[1] & self.rules.targets)
        won = self.rules.won(self.state)
        reward = -0.1 + (after - before) + (10.0 if won else 0.0)
        return self._obs(), reward, won, self.steps >= self.max_steps and not won, {"won": won, "moved": moved}

    def render(self) -> str:
        return self._obs()
