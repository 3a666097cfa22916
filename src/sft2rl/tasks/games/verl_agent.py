"""The games on verl (``backend: verl``): a multi-turn agent loop in which the environment steps.

verl 0.9 runs multi-turn rollouts through agent loops: an :class:`AgentLoopBase` subclass
whose ``async run`` plays one episode against the rollout server (vLLM or SGLang) and returns
one sequence: the prompt, then every reply of the policy (``response_mask`` 1, with the
server's log-probs) and every observation between them (mask 0, log-prob 0), the episode's
reward on its last token. :class:`GameAgentLoop` is ours, listed in the agent-loop file the
``game_rl`` rule writes (``rollout.agent.agent_loop_config_path``) and chosen by every row of
the games' verl parquet (``agent_name``).

One episode plays exactly as :mod:`sft2rl.tasks.games.play` plays (:class:`~.play.Episode`:
the same parsing, the same environment step, the same turn limit ``games.eval.max_steps`` and
reply limit ``games.eval.max_new_tokens``). verl trains on one sequence per episode, so the
conversation grows: the prompt of a turn is the whole history, which is what play and SFT
use with ``games.history: true`` (the ``game_rl`` rule refuses ``history: false`` on verl).
Observation tokens come from verl's continuous-token builder (the chat template's own
rendering of the next user message, appended to the tokens the server generated: no
re-tokenisation of the policy's replies).

Reward (RAGEN's, as the local backend's :func:`~.rl.episode_score`): the environment's step
rewards plus ``games.rl.format_penalty`` per turn without a valid action. GRPO groups the
``rollout.n`` episodes of a level (verl's ``grpo`` advantage estimator). Every finished
episode is appended to ``episode_log`` (one JSON line: the weights version the server
reported, won, steps, valid, reward), from which the run's summary and ``rl/*`` curves are
made (:func:`sft2rl.verl_export.game_rl_history`).

This module imports verl; only verl's workers import it.
"""
from __future__ import annotations

import json
import random
from typing import Any

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register

from ...verl_agent import EpisodeTokens, append_record
from . import VERL_AGENT_NAME
from .play import Episode
from .rl import episode_score


@register(VERL_AGENT_NAME)
class GameAgentLoop(AgentLoopBase):
    """One game episode per call of :meth:`run` (see the module docstring).

    ``games``: the games config of the run (the env's keys, ``eval``, ``rl``), from the agent
    loop file; ``env``: sokoban or frozenlake; ``episode_log``: where finished episodes go
    (``None``: nowhere), each tagged with ``attempt``, the run's start (from the agent loop file)."""

    def __init__(self, *args, games: Any, env: str, episode_log: str | None = None, attempt: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.games = OmegaConf.to_container(games, resolve=True) if isinstance(games, DictConfig) else dict(games)
        if self.games.get("history") is not True:
            raise ValueError("games on verl need games.history: true (one sequence per episode)")
        self.env = env
        self.episode_log = episode_log
        self.attempt = int(attempt)  # this start of the run (a resumed run replays steps; the later start wins)
        self.max_turns = int(self.games["eval"]["max_steps"])
        self.max_new_tokens = int(self.games["eval"]["max_new_tokens"])
        self.penalty = float(self.games["rl"]["format_penalty"])
        self.response_length = self.rollout_config.response_length

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        info = kwargs["extra_info"]
        level = json.loads(info["level"])
        seed = int(info.get("seed", random.randrange(2**31)))
        ep = Episode(self.env, level, 0, self.games, self.max_turns, seed)
        seq = await EpisodeTokens.start(self, ep.prompt(), sampling_params, self.max_new_tokens)
        while True:
            reply = await seq.reply()
            ep.act(self.tokenizer.decode(reply, skip_special_tokens=True))
            if ep.done:
                break
            await seq.hear(ep.prompt())  # the next observation: the chat template's rendering of the new user message
        if seq.response_length > self.response_length:
            raise ValueError(f"a {self.env} episode of {ep.steps} turns has {seq.response_length} response tokens, "
                             f"more than rollout.response_length = {self.response_length} (computed by "
                             "prepare-game-rl from the levels; episodes are never cut)")
        score = episode_score(ep, self.penalty)
        append_record(self.episode_log, {"step": seq.version, "attempt": self.attempt, "level": ep.level["index"],
                                         "won": ep.won,
                                         "lost": ep.lost, "steps": ep.steps, "valid": ep.valid,
                                         "env_reward": ep.env_reward, "score": score})
        return seq.output(score, 2 * ep.steps)
