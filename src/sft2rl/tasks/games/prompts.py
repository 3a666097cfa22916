"""The game prompts: instruction, grid rendering, multi-turn history, answer format and parsing.

Training rows and evaluation episodes build their prompts with the same function,
:func:`messages`, so a model plays with exactly the context it was trained on.

Protocol (the reference's, restated): the system turn; a user turn with the instruction
(goal, symbols, rules, answers, rewards), the initial grid, "Decide the next action:" and
a format line; then, after each action, an assistant turn with the answer and a user turn
"After you take this action, the observation is: \\n{grid}\\n". With ``history: false``
the prompt is the first user turn built on the current grid (a Markov prompt); with
``history: k`` (an integer) it holds the last ``k`` turns: the first user turn is built on
the grid of ``k`` actions ago, followed by the ``k`` replies and observations since, exactly
the prompt of an episode that started there. The
response is ``<answer> Up </answer>``, with ``with_thinking`` preceded by a think block
that states the solver's remaining plan.

Render styles: ``reference`` writes each cell as ``" c \\t"`` (the reference); ``spaced``
writes each cell as ``" c"`` (half the tokens for a byte-level BPE). Rows are joined by
newlines in both. :func:`cell_tokens` lists the text of every cell of a style, one token
each in the games' tiny tokenizer (``games.tiny.cell_tokens``): the prompt text stays the
reference's, only the embedded model reads it one token per cell.
"""
from __future__ import annotations

import re

from . import ACTIONS
from .frozenlake import SYMBOLS as FROZENLAKE_SYMBOLS
from .sokoban import SYMBOLS as SOKOBAN_SYMBOLS

SYSTEM = "You are a helpful assistant."
DECIDE = "Decide the next action:"
OBSERVATION = "After you take this action, the observation is: \n{grid}\n"
RENDER_STYLES = ("reference", "spaced")

ANSWER_LINE = "Answers: <answer> Up </answer> | <answer> Down </answer> | <answer> Left </answer> | <answer> Right </answer>"
INSTRUCTIONS = {
    "sokoban": (
        "You play Sokoban. Goal: push every box onto a target.\n"
        "Symbols: # wall, _ floor, O target, X box, √ box on a target, P you, S you on a target.\n"
        "Rules: each action moves you one cell. Walking into a box pushes it one cell if the cell behind it "
        "is free; walls and other boxes block the move. Boxes cannot be pulled.\n"
        f"{ANSWER_LINE}\n"
        "Rewards: -0.1 per move, +1.0 for each box pushed onto a target, +10.0 when all boxes are on targets."
    ),
    "frozenlake": (
        "You play FrozenLake. Goal: walk to the goal without falling into a hole.\n"
        "Symbols: P you, _ frozen ice, O hole, G goal, X you in a hole, √ you on the goal.\n"
        "Rules: each action moves you one cell. Walking off the edge leaves you in place. "
        "A hole or the goal ends the game.{slippery}\n"
        f"{ANSWER_LINE}\n"
        "Rewards: +1.0 for reaching the goal, 0 otherwise."
    ),
}
SLIPPERY = " The ice is slippery: a move may take you sideways instead."
FORMAT = {
    True: "Reply as <think> your reasoning </think> <answer> your action </answer> and nothing else.",
    False: "Reply as <answer> your action </answer> and nothing else.",
}
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def render(grid: list[str], style: str) -> str:
    if style == "reference":
        return "\n".join("".join(f" {ch} \t" for ch in row) for row in grid)
    if style == "spaced":
        return "\n".join("".join(f" {ch}" for ch in row) for row in grid)
    raise ValueError(f"render style {style!r}: expected one of {list(RENDER_STYLES)}")


def cell_tokens(style: str) -> list[str]:
    """The text of every grid cell of ``style`` (each symbol of either game with its spacing)."""
    symbols = dict.fromkeys(SOKOBAN_SYMBOLS + FROZENLAKE_SYMBOLS)  # ordered, no repeats
    return [render([ch], style) for ch in symbols]


def base_added_tokens(games: dict) -> list[str]:
    """The tokens the games' tiny base adds to its tokenizer: the answer and think tags, and one
    token per grid cell when ``games.tiny.cell_tokens`` is on (the ``game_base_model`` rule and
    bench/games_levers.py both take them from here)."""
    tags = ["<think>", "</think>", "<answer>", "</answer>"]
    return tags + (cell_tokens(games["render"]) if games["tiny"].get("cell_tokens") else [])


def instruction(env: str, slippery: bool = False) -> str:
    return INSTRUCTIONS[env].format(slippery=SLIPPERY if slippery else "")


def first_turn(env: str, grid: list[str], style: str, with_thinking: bool, slippery: bool = False) -> str:
    return f"{instruction(env, slippery)}\n\n{render(grid, style)}\n{DECIDE}\n{FORMAT[with_thinking]}"


def history_window(history: bool | int) -> int | None:
    """How many earlier turns a prompt holds under ``games.history``: 0 (``false``, Markov),
    ``k`` (an integer k >= 1), or None (``true``, every one)."""
    if history is True or history is False:
        return None if history else 0
    if not isinstance(history, int) or history < 1:
        raise ValueError(f"games.history = {history!r}: expected true, false or an integer >= 1")
    return history


def messages(env: str, grids: list[str], answers: list[str], *, style: str, history: bool | int,
             with_thinking: bool, slippery: bool = False) -> list[dict[str, str]]:
    """The prompt before the next action: ``grids`` are the observations so far (the initial
    grid first), ``answers`` the assistant replies so far (one fewer than ``grids``);
    ``history`` as in :func:`history_window`."""
    if len(grids) != len(answers) + 1:
        raise ValueError(f"{len(grids)} observations for {len(answers)} answers")
    keep = history_window(history)
    start = 0 if keep is None else max(0, len(answers) - keep)
    out = [{"role": "system", "content": SYSTEM},
           {"role": "user", "content": first_turn(env, grids[start], style, with_thinking, slippery)}]
    for answer, grid in zip(answers[start:], grids[start + 1:]):
        out.append({"role": "assistant", "content": answer})
        out.append({"role": "user", "content": OBSERVATION.format(grid=render(grid, style))})
    return out


def response(action: str, plan: list[str] | None = None, with_thinking: bool = False) -> str:
    """The target reply; with thinking, the think block states the remaining shortest plan."""
    answer = f"<answer> {action} </answer>"
    if not with_thinking:
        return answer
    steps = ", ".join(plan or [action])
    return f"<think> A shortest plan from here: {steps}. </think> {answer}"


def parse_action(text: str) -> tuple[str | None, bool]:
    """(action, well_formed): well-formed means exactly one ``<answer>…</answer>`` block; the
    action is its content when that is one of the action names (case-insensitive), else None."""
    found = ANSWER_RE.findall(text)
    if len(found) != 1 or text.count("<answer>") != 1:
        return None, False
    word = found[0].strip().lower()
    for action in ACTIONS:
        if word == action.lower():
            return action, True
    return None, True
