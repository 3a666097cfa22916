"""The games on the shared GRPO trainer: multi-turn episodes on the train levels.

One item is a train level; its ``n`` episodes are one group (RAGEN: 16 episodes of the same
level seed, 8 levels per batch). All episodes of a batch advance in lockstep: each turn the
active episodes' prompts go through the generation engine as one batch, exactly as in play
(:mod:`sft2rl.tasks.games.play`: the same prompt, built by :func:`prompts.messages` with the
same history setting, the same reply limit ``games.eval.max_new_tokens``, the same turn limit
``games.eval.max_steps``, the same parsing of a reply into an action).

Each turn is one row of the trajectory: its prompt, and the policy's sampled reply (loss
mask 1 on every sampled token). The prompts of every turn of a batch start alike (chat
header and instruction): that common start is the rows' shared prompt, computed once per
batch by the trainer, and the rest of a turn's prompt (grid and answer line) leads the row's
response as context (loss mask 0), so the log-probs are those of the whole prompt. With ``games.history: false`` (the default)
the prompt is Markov (the current grid); with ``true`` it holds the earlier grids and
replies (with an integer ``k`` the last ``k`` of them), and the row's prompt is that turn's whole chat. Every row of an episode takes the
episode's advantage; with ``rl.step_adv_weight`` (GiGPO) each turn adds its step advantage, the
grid it acted on being its anchor state (:meth:`GamesTask.turn_rewards`).

Reward of an episode (RAGEN's): the sum of the environment's step rewards (Sokoban: -0.1
per action, +1 per box pushed onto a target, -1 per box pushed off, +10 on solving;
FrozenLake: +1 on reaching the goal) plus ``format_penalty`` for every turn whose reply is
not one well-formed answer with an action (such a turn does not move; the grid is shown
again).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from ...rl_task import Rollout, check_limits, multi_turn_rollout
from . import VERL_AGENT_NAME
from .data import read_levels, rl_levels
from .play import Episode, check_reply_limit, play
from .prompts import OBSERVATION, render


def episode_score(ep: Episode, format_penalty: float) -> float:
    """RAGEN's episode reward: the environment's step rewards plus ``format_penalty`` for every
    turn whose reply was not one well-formed answer with an action."""
    return float(ep.env_reward + format_penalty * (ep.steps - ep.valid))


def episode_seeds(seed: int, n_items: int, n: int) -> list[int]:
    """The environment seeds of one rollout's episodes (level by level, n each): one per
    episode of the whole run (slippery ice draws its slips from it). A step's rollout seed is
    the previous one's + 1, so spacing them by the batch's episode count keeps every (step,
    episode) apart."""
    return [seed * n_items * n + i for i in range(n_items * n)]


class GamesTask:
    """One env's multi-turn RL task (:func:`sft2rl.grpo.train_rl`)."""

    def __init__(self, env: str, levels_path: str, games: dict[str, Any]):
        self.env, self.levels_path, self.games = env, levels_path, games
        self.rl = games["rl"]
        self.max_turns = games["eval"]["max_steps"]
        self.max_new_tokens = games["eval"]["max_new_tokens"]
        self.items: list[dict] = []
        self.val_levels: list[dict] = []

    def key(self) -> dict[str, Any]:
        return {"data": {"levels": self.levels_path}, "params": {"games": self.games, "env": self.env},
                "modules": ["tasks.games.rl"]}

    def load(self, tokenizer, cfg: dict[str, Any]) -> list[dict]:
        self.items = rl_levels(self.levels_path, self.games)
        self.val_levels = read_levels(self.levels_path, "val")
        first = [Episode(self.env, lv, 0, self.games, self.max_turns, 0).prompt() for lv in self.items]
        check_limits(tokenizer, cfg, self.levels_path, self.items, first, self.max_new_tokens,
                     "games.eval.max_new_tokens")
        check_reply_limit(tokenizer, self.items, self.max_new_tokens, self.games["with_thinking"], self.levels_path)
        return self.items

    def rollout(self, model, tokenizer, items: list[dict], n: int, cfg: dict[str, Any], seed: int) -> Rollout:
        torch.manual_seed(seed)
        seeds = episode_seeds(seed, len(items), n)
        eps = [Episode(self.env, lv, k, self.games, self.max_turns, seeds[g * n + k])
               for g, lv in enumerate(items) for k in range(n)]

        def advance(active: list[Episode], replies: list[str]) -> None:
            for e, reply in zip(active, replies):
                e.act(reply)

        ro = multi_turn_rollout(model, tokenizer, eps, np.repeat(np.arange(len(items)), n), done=lambda e: e.done,
                                prompt=Episode.prompt, advance=advance, max_new_tokens=self.max_new_tokens, cfg=cfg)
        ro.metrics["turns"] = float(np.mean([e.steps for e in eps]))
        return ro

    def rewards(self, items: list[dict], rollout: Rollout) -> tuple[np.ndarray, dict[str, float]]:
        eps: list[Episode] = rollout.info
        penalty = float(self.rl["format_penalty"])
        scores = np.array([episode_score(e, penalty) for e in eps], dtype=np.float64)
        steps = sum(e.steps for e in eps)
        return scores, {"success": float(np.mean([e.won for e in eps])),
                        "lost": float(np.mean([e.lost for e in eps])),
                        "invalid_rate": 1 - sum(e.valid for e in eps) / steps if steps else 0.0,
                        "env_reward": float(np.mean([e.env_reward for e in eps]))}

    def turn_rewards(self, items: list[dict], rollout: Rollout) -> list[list[tuple[str, float]]]:
        """Per episode, per turn: the grid the turn acted on (the anchor state of step advantages)
        and the turn's reward (the environment's, plus the format penalty on a turn without a
        move); they sum to :func:`episode_score`."""
        penalty = float(self.rl["format_penalty"])
        out = []
        for e in rollout.info:
            out.append([("\n".join(e.grids[t]), r + (0.0 if ok else penalty))
                        for t, (r, ok) in enumerate(zip(e.turn_rewards, e.turn_valid))])
        return out

    def validate(self, model, tokenizer) -> dict[str, float]:
        """Greedy success on the val levels, played as the table plays the test levels."""
        from ...generation import reply_policy

        ev = self.games["eval"]
        pol = reply_policy(model, tokenizer, max_new_tokens=ev["max_new_tokens"], do_sample=False,
                           temperature=ev["temperature"], seed=ev["seed"], batch_size=ev["batch_size"])
        records = play(self.env, self.val_levels, pol, self.games, episodes=1, max_steps=ev["max_steps"],
                       seed=ev["seed"], progress=False)  # generate() restores the model's training mode
        return {"success": float(np.mean([r["won"] for r in records])),
                "timeout_rate": float(np.mean([not r["won"] and not r["lost"] for r in records]))}


# ------------------------------------------------------------------ verl (backend: verl)
def verl_rows(env: str, levels: list[dict], games: dict[str, Any], seed: int) -> list[dict]:
    """One row of verl's RL parquet per train level: the first turn's chat (``prompt``, what
    verl's dataset tokenises and filters by length), the agent loop that plays it, and the
    level itself (``extra_info.level``, JSON) for the environment inside the loop."""
    rows = []
    for lv in levels:
        first = Episode(env, lv, 0, games, games["eval"]["max_steps"], 0).prompt()
        rows.append({"data_source": f"sft2rl/games/{env}", "prompt": first, "agent_name": VERL_AGENT_NAME,
                     "ability": "game", "reward_model": {"style": "rule", "ground_truth": ""},
                     "extra_info": {"level": json.dumps(lv), "index": int(lv["index"]),
                                    "seed": seed * 100_003 + int(lv["index"])}})
    return rows


def episode_token_budget(tokenizer, env: str, levels: list[dict], games: dict[str, Any],
                         model_type: str | None = None) -> dict[str, int]:
    """The most response tokens one episode can take in the agent loop (its ``rollout.response_length``):
    ``max_steps`` replies of ``max_new_tokens`` and, between them, ``max_steps - 1`` observations,
    each as long as the longest observation turn the chat template renders for a grid of these
    levels (every state on their solver paths), as the agent loop's token builder for
    ``model_type`` appends it (:func:`sft2rl.chat_tokens.message_tokens`: a template's think
    scaffold included), plus two tokens for the turn boundary."""
    from ...chat_tokens import message_tokens, rendered_length

    ev = games["eval"]
    longest, widest = 0, None
    for lv in levels:
        ep = Episode(env, lv, 0, games, ev["max_steps"], 0)
        first = ep.prompt()
        head = first + [{"role": "assistant", "content": "x"}]
        base = rendered_length(tokenizer, head, False)
        for grid in _path_grids(env, lv, games):
            user = [{"role": "user", "content": OBSERVATION.format(grid=render(grid, games["render"]))}]
            n = rendered_length(tokenizer, head + user, True) - base
            if n > longest:
                longest, widest = n, (head, user)
    if widest is not None:  # the widest observation as the builder appends it (at least the template's count)
        longest = message_tokens(tokenizer, *widest, model_type)
    steps, reply = int(ev["max_steps"]), int(ev["max_new_tokens"])
    return {"observation_tokens": longest + 2, "reply_tokens": reply,
            "response_length": steps * reply + (steps - 1) * (longest + 2)}


def _path_grids(env: str, level: dict, games: dict[str, Any]) -> list[list[str]]:
    """The grids of every state on the level's solver path (the start included)."""
    from . import ACTIONS

    ep = Episode(env, level, 0, games, len(level["solution"]) + 1, 0)
    for a in level["solution"]:
        if a in ACTIONS and not ep.done:
            ep.act(f"<answer> {a} </answer>")
    return ep.grids
