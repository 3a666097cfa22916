"""Game environments (SPEC section B): Sokoban and FrozenLake.

Everything about the games lives in this folder:

* ``sokoban``, ``frozenlake``: level generation, the environments (gymnasium ``Env``),
  rendering as text grids;
* ``solver``: breadth-first search over whole states (shortest action list);
* ``prompts``: the instruction, the multi-turn prompt and the answer format;
* ``data``: levels -> SFT rows (one per solver step), splits disjoint by every solver-path state,
  validation of user-supplied rows, the pretraining corpus of the embedded base model;
* ``play``: evaluation by playing (model, random and BFS policies), success with Wilson
  intervals.
"""
from __future__ import annotations

ACTIONS = ("Up", "Down", "Left", "Right")
#: (row, column) offset of each action.
MOVES = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}
ENVS = ("sokoban", "frozenlake")

