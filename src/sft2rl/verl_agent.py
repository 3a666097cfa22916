"""What the tasks' verl agent loops share (``backend: verl``): one episode's token sequence,
grown against the rollout server, and the episode log.

An agent loop (:mod:`sft2rl.tasks.games.verl_agent`, :mod:`sft2rl.tasks.med.verl_agent`) plays
one episode per call of its ``run`` and returns it as one sequence (:class:`EpisodeTokens`): the
first prompt, then every reply of the policy (mask 1, the server's log-probs) and everything
the environment or the patient says between them (mask 0, log-prob 0), merged through verl's
continuous-token builder. :func:`append_record` writes a finished episode to the run's episode
log.

This module imports verl; only verl's workers import it.
"""
from __future__ import annotations

import json
import os
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput
from verl.utils.profiler import simple_timer


class EpisodeTokens:
    """The token sequence of one episode of ``loop`` (an ``AgentLoopBase``): ``prompt_ids`` (the
    first prompt), ``ids`` (the whole sequence so far), ``mask`` and ``logprobs`` of the response
    part (``logprobs`` None once the server returns none: verl then recomputes them,
    ``old_log_prob``), ``version`` (the weights version the server last reported), ``metrics``
    (verl's timings). Build it with :meth:`start`."""

    def __init__(self, loop, prompt_ids: list[int], sampling_params: dict[str, Any], max_tokens: int):
        self.loop = loop
        self.prompt_ids, self.ids = list(prompt_ids), list(prompt_ids)
        self.mask: list[int] = []
        self.logprobs: list[float] | None = []
        self.params = dict(sampling_params, max_tokens=max_tokens)
        self.request_id = uuid4().hex
        self.metrics: dict[str, Any] = {}
        self.version = None

    @classmethod
    async def start(cls, loop, messages: list[dict[str, str]], sampling_params: dict[str, Any],
                    max_tokens: int) -> EpisodeTokens:
        """The sequence of the chat ``messages`` (the first prompt), replies of at most ``max_tokens``."""
        return cls(loop, await loop.ct_build_initial_tokens(messages), sampling_params, max_tokens)

    @property
    def response_length(self) -> int:
        return len(self.mask)

    async def reply(self) -> list[int]:
        """The policy's next reply on the sequence so far, appended; returns its token ids."""
        with simple_timer("generate_sequences", self.metrics):
            out = await self.loop.server_manager.generate(request_id=self.request_id, prompt_ids=self.ids,
                                                          sampling_params=self.params)
        self.version = out.extra_fields.get("global_steps", self.version)
        if out.log_probs is None:
            self.logprobs = None
        merged, self.mask, self.logprobs = await self.loop.ct_merge_assistant_token(
            self.ids, out.token_ids, self.mask, self.logprobs,
            assistant_logprobs=list(out.log_probs) if self.logprobs is not None else None)
        self.ids = merged.token_ids
        return list(out.token_ids)

    async def hear(self, messages: list[dict[str, str]]) -> None:
        """Append the last message of the chat ``messages`` (a user turn), as the chat template renders it."""
        merged, self.mask, self.logprobs = await self.loop.ct_merge_context_msg(
            messages[:-1], messages, self.ids, self.mask, self.logprobs)
        self.ids = merged.token_ids

    def output(self, reward: float, num_turns: int, **extra_fields: Any) -> AgentLoopOutput:
        """verl's output of the finished episode: ``reward`` on its last token."""
        return AgentLoopOutput(
            prompt_ids=self.prompt_ids, response_ids=self.ids[len(self.prompt_ids):], response_mask=self.mask,
            response_logprobs=self.logprobs, reward_score=reward, num_turns=num_turns, metrics=self.metrics,
            extra_fields={"turn_scores": [], "tool_rewards": [], **extra_fields})


def append_record(path: str | None, rec: dict[str, Any]) -> None:
    """Append ``rec`` as one JSON line to ``path`` (nothing when ``path`` is None)."""
    if not path:
        return
    line = (json.dumps(rec) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one short append: lines of concurrent workers do not interleave
    finally:
        os.close(fd)
