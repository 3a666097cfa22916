"""Game environments (SPEC section B): Sokoban and FrozenLake.

Everything about the games lives in this folder:

* ``sokoban``, ``frozenlake``: level generation, the environments (gymnasium ``Env``),
  rendering as text grids;
* ``solver``: breadth-first search over whole states (shortest action list);
* ``prompts``: the instruction, the multi-turn prompt and the answer format;
* ``data``: levels -> SFT rows (one per solver step), splits disjoint by every solver-path state,
  validation of user-supplied rows, the pretraining corpus of the embedded base model;
* ``play``: evaluation by playing (model, random and BFS policies), success with Wilson
  intervals;
* ``rl``: the games as a multi-turn task of the shared GRPO trainer (episodes in lockstep,
  RAGEN's reward and format penalty);
* ``verl_agent``: the same episodes as a verl agent loop (``backend: verl``);
* ``table``: the SFT table, the RL table (paired per-level differences) and their figures.
"""
from __future__ import annotations

ACTIONS = ("Up", "Down", "Left", "Right")
#: (row, column) offset of each action.
MOVES = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}
ENVS = ("sokoban", "frozenlake")
#: ``agent_name`` of the games' verl rows: :class:`sft2rl.tasks.games.verl_agent.GameAgentLoop`.
VERL_AGENT_NAME = "sft2rl_game"



def sft_config(config: dict) -> dict:
    """The shared ``sft:`` section with the games' overrides (``games.sft``), the loss on the
    last (the solver's) turn only: what the ``game_sft`` rule trains with. Keys sorted: a rule's
    params compare in order, and an override moves a key."""
    drop = ("n_samples", "val_size", "merge_checkpoint", "with_thinking")  # QA's: the data, not the trainer
    out = dict({k: v for k, v in config["sft"].items() if k not in drop},
               **{k: v for k, v in config["games"]["sft"].items() if k != "merge_checkpoint"},
               loss_turns="last")
    return dict(sorted(out.items()))


def rl_config(config: dict) -> dict:
    """The shared ``rl:`` section with the games' overrides (``games.rl``): what the ``game_rl``
    rule trains with. Replies are as long as in play (``games.eval.max_new_tokens``); the RL
    starts from the env's merged SFT model."""
    games = config["games"]
    over = {k: v for k, v in games["rl"].items() if k not in ("format_penalty", "levels")}
    out = dict(config["rl"], **over)
    out["max_response_length"] = games["eval"]["max_new_tokens"]
    return dict(sorted(out.items()))  # a rule's params compare in order (see sft_config)
