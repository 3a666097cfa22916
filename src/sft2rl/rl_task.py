"""What a task gives the one GRPO trainer (:func:`sft2rl.grpo.train_rl`).

The trainer knows no task. A task supplies:

* ``items``: its training items (QA prompts, game levels, medical cases), loaded once;
* ``rollout(model, tokenizer, items, n, cfg, seed)``: ``n`` episodes of each item through the
  shared generation engine, as a :class:`Rollout`;
* ``rewards(items, rollout)``: the score of every trajectory, computed per group (QA's
  group-aware reward is a function of the whole group), and the task's metrics of the batch;
* ``validate(model, tokenizer)``: held-out metrics every ``rl.val_every`` steps (``{}``: none);
* ``key``: what the restart key holds besides the trainer's own (data files, parameters and
  the task's package modules), so a rerun after a change to any of them starts afresh.

A trajectory is one or more *rows*. A row is a prompt (left-padded) and a response
(right-padded); ``response_mask`` is 1 on every real response token (what the forward pass
attends to) and ``loss_mask`` 1 only on the tokens the policy sampled. A one-turn answer is
one row with both masks equal; a Markov prompt per turn gives one row per turn; a growing
multi-turn history gives one row per episode whose response holds the policy's turns and the
environment's observations, the observations with loss mask 0 (:func:`chain_turns`; the
episode's tokens grow as :class:`sft2rl.chat_tokens.TokenChat` grows them). Every
row of a trajectory takes the trajectory's advantage; with step advantages (GiGPO,
``rl.step_adv_weight``) each sampled token adds its turn's (``Rollout.turn_of`` marks the
turn; the task's ``turn_rewards`` gives each turn's state and reward).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch


@dataclass
class Rollout:
    prompt_ids: torch.Tensor        # (rows, P) left-padded
    prompt_mask: torch.Tensor       # (rows, P)
    response_ids: torch.Tensor      # (rows, R) right-padded
    response_mask: torch.Tensor     # (rows, R) 1 on every real response token (attention)
    loss_mask: torch.Tensor         # (rows, R) 1 on the tokens the policy sampled
    row_traj: torch.Tensor          # (rows,) the trajectory of each row
    traj_group: np.ndarray          # (T,) the group (item of the batch) of each trajectory
    logprobs: torch.Tensor | None = None  # (rows, R) the engine's log-probs of sampled tokens
    #: (rows,) rows with the same index have the same prompt (the n answers of a one-turn
    #: group): the trainer computes each such prompt once; None: no sharing assumed
    prompt_index: torch.Tensor | None = None
    #: (rows, R) the turn of its trajectory each sampled token belongs to (0, 1, ...), -1 on every
    #: other token; None: one-turn rows (what step advantages need, see :func:`step_advantages`)
    turn_of: torch.Tensor | None = None
    info: Any = None                # the task's own record of the episodes (for its rewards)
    metrics: dict[str, float] = field(default_factory=dict)  # the task's rollout metrics

    @property
    def n_traj(self) -> int:
        return len(self.traj_group)


class RLTask(Protocol):
    items: list

    def key(self) -> dict[str, Any]: ...

    def rollout(self, model, tokenizer, items: list, n: int, cfg: dict[str, Any], seed: int) -> Rollout: ...

    def rewards(self, items: list, rollout: Rollout) -> tuple[np.ndarray, dict[str, float]]: ...

    def validate(self, model, tokenizer) -> dict[str, float]: ...

    # optional, for step advantages (``rl.step_adv_weight`` > 0; multi-turn tasks):
    # ``turn_rewards(items, rollout)`` -> per trajectory, per turn, (the state the turn acted in
    # as a hashable key, the turn's reward), with the turn rewards summing to the trajectory's score


def check_limits(tokenizer, cfg: dict[str, Any], source: str, items: list, first_prompts: list[list[dict]],
                 reply_limit: int, reply_key: str) -> None:
    """The checks every multi-turn task makes when it loads its items: there are some, the
    trainer's reply limit is the one evaluation uses (``reply_key`` names that setting), and no
    first-turn prompt is longer than ``rl.max_prompt_length`` (prompts are never cut)."""
    from .generation import prompt_lengths

    if not items:
        raise ValueError(f"{source}: no training items")
    if cfg["max_response_length"] != reply_limit:
        raise ValueError(f"rl.max_response_length = {cfg['max_response_length']} differs from {reply_key} = "
                         f"{reply_limit}: training and evaluation must allow the same reply length")
    longest = max(prompt_lengths(tokenizer, first_prompts))
    if longest > cfg["max_prompt_length"]:
        raise ValueError(f"{source}: a first-turn prompt has {longest} tokens, more than rl.max_prompt_length = "
                         f"{cfg['max_prompt_length']}; raise it (prompts are never cut)")


def pack_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
              loss: Sequence[Sequence[int]], logprobs: Sequence[Sequence[float]] | None, pad_id: int,
              device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Token lists -> the padded tensors of a :class:`Rollout` (prompts left-, responses right-padded)."""
    if not (len(prompts) == len(responses) == len(loss)):
        raise ValueError("prompts, responses and loss masks differ in number")
    if any(len(r) != len(m) for r, m in zip(responses, loss)):
        raise ValueError("a response and its loss mask differ in length")
    rows = len(prompts)
    p = max(len(x) for x in prompts)
    r = max(1, max(len(x) for x in responses))
    out = {
        "prompt_ids": torch.full((rows, p), pad_id, dtype=torch.long),
        "prompt_mask": torch.zeros((rows, p), dtype=torch.long),
        "response_ids": torch.full((rows, r), pad_id, dtype=torch.long),
        "response_mask": torch.zeros((rows, r), dtype=torch.long),
        "loss_mask": torch.zeros((rows, r), dtype=torch.long),
    }
    if logprobs is not None:
        out["logprobs"] = torch.zeros((rows, r), dtype=torch.float32)
    for i, (pr, rs, lm) in enumerate(zip(prompts, responses, loss)):
        if pr:
            out["prompt_ids"][i, p - len(pr):] = torch.as_tensor(list(pr))
            out["prompt_mask"][i, p - len(pr):] = 1
        if rs:
            out["response_ids"][i, :len(rs)] = torch.as_tensor(list(rs))
            out["response_mask"][i, :len(rs)] = 1
            out["loss_mask"][i, :len(rs)] = torch.as_tensor(list(lm))
            if logprobs is not None:
                out["logprobs"][i, :len(rs)] = torch.as_tensor(list(logprobs[i]), dtype=torch.float32)
    return {k: v.to(device) for k, v in out.items()}


def group_filter(scores: np.ndarray, traj_group: np.ndarray, keep: float) -> np.ndarray:
    """StarPO-S's variance filter: the groups to train on, the ``keep`` share (rounded up, at
    least one) with the highest standard deviation of trajectory reward; ties keep the earlier
    group. ``keep`` 1.0 keeps every group. Returns a bool per group."""
    groups = int(traj_group.max()) + 1 if len(traj_group) else 0
    if keep >= 1.0:
        return np.ones(groups, dtype=bool)
    std = np.array([scores[traj_group == g].std() for g in range(groups)])
    k = max(1, int(np.ceil(keep * groups)))
    order = np.argsort(-std, kind="stable")[:k]
    kept = np.zeros(groups, dtype=bool)
    kept[order] = True
    return kept


def step_advantages(turns: Sequence[Sequence[tuple[Any, float]]], traj_group: np.ndarray, gamma: float,
                    norm_by_std: bool, eps: float = 1e-6) -> np.ndarray:
    """GiGPO's step-level advantage (Feng et al. 2025, "Group-in-Group Policy Optimization"):
    ``turns[j]`` is trajectory j's turns as (state key, reward). Each turn's discounted return
    from there on (``gamma``) is normalised among the turns of the same group that acted in the
    same state (the anchor state: episodes of one level that reach one grid), as GRPO normalises
    trajectories within their group (minus the mean, over the unbiased std + ``eps`` where
    ``norm_by_std``); a state reached once in its group gives 0. So a move that loses from a
    state where the group's other moves won is singled out within its episode. Returns
    (trajectories, most turns), 0 past a trajectory's last turn."""
    width = max((len(t) for t in turns), default=0)
    out = np.zeros((len(turns), max(1, width)), dtype=np.float64)
    returns: list[np.ndarray] = []
    for t in turns:
        g = np.zeros(len(t))
        acc = 0.0
        for k in range(len(t) - 1, -1, -1):
            acc = float(t[k][1]) + gamma * acc
            g[k] = acc
        returns.append(g)
    anchors: dict[tuple[int, Any], list[tuple[int, int]]] = {}
    for j, t in enumerate(turns):
        for k, (key, _) in enumerate(t):
            anchors.setdefault((int(traj_group[j]), key), []).append((j, k))
    for members in anchors.values():
        if len(members) < 2:
            continue
        vals = np.array([returns[j][k] for j, k in members])
        adv = vals - vals.mean()
        if norm_by_std:
            adv = adv / (vals.std(ddof=1) + eps)
        for (j, k), a in zip(members, adv):
            out[j, k] = a
    return out


def common_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, keeping at least one token of each after them."""
    shortest = min(len(p) for p in prompts)
    c = 0
    while c < shortest - 1 and all(p[c] == prompts[0][c] for p in prompts):
        c += 1
    return c


def chain_turns(turns: Sequence[tuple[int, list[int], list[int], list[float] | None]]):
    """Turns ``(episode, prompt ids, sampled reply ids, their log-probs)``, in the order played,
    -> rows ``(owner, prompt, tail, loss mask, log-probs, turn)``, the last four over the tail
    (``turn``: the episode's turn of each sampled token, counted from 0; -1 elsewhere). A
    turn whose prompt starts with its episode's open row (that row's prompt and tail, token
    for token) appends the rest of its prompt (the observation: loss 0, log-prob 0) and its
    reply (loss 1) to the row; any other turn opens a row. Each sampled token then sees the
    same tokens before it as in its own turn's prompt, so its log-prob is the same, and a
    growing history costs one sequence per episode instead of one per turn."""
    owner: list[int] = []
    prompts: list[list[int]] = []
    tails: list[list[int]] = []
    loss: list[list[int]] = []
    logps: list[list[float] | None] = []
    turn_of: list[list[int]] = []
    open_row: dict[int, int] = {}
    played: dict[int, int] = {}
    for i, p, r, lp in turns:
        t = played.get(i, 0)
        played[i] = t + 1
        k = open_row.get(i)
        if k is not None:
            n_p, n_t = len(prompts[k]), len(tails[k])
            if len(p) > n_p + n_t and p[:n_p] == prompts[k] and p[n_p:n_p + n_t] == tails[k]:
                ctx = p[n_p + n_t:]
                tails[k] += ctx + r
                loss[k] += [0] * len(ctx) + [1] * len(r)
                logps[k] = None if lp is None or logps[k] is None else logps[k] + [0.0] * len(ctx) + lp
                turn_of[k] += [-1] * len(ctx) + [t] * len(r)
                continue
        open_row[i] = len(owner)
        owner.append(i)
        prompts.append(list(p))
        tails.append(list(r))
        loss.append([1] * len(r))
        logps.append(None if lp is None else list(lp))
        turn_of.append([t] * len(r))
    return owner, prompts, tails, loss, logps, turn_of


def multi_turn_rollout(model, tokenizer, episodes: list, groups: np.ndarray, *, done: Callable[[Any], bool],
                       prompt: Callable[[Any], list[dict[str, str]]], advance: Callable[[list, list[str]], None],
                       max_new_tokens: int, cfg: dict[str, Any], metrics: dict[str, float] | None = None) -> Rollout:
    """Episodes played in lockstep through the generation engine: each turn the prompts of the
    episodes not ``done`` go through :func:`sft2rl.generation.generate` as one batch (sampled
    at ``rl.temperature`` / ``rl.top_p``, prompts never cut), and ``advance(active episodes,
    replies)`` moves them on (the environment or the patient). ``rl.max_prompt_length`` bounds
    the first turn's prompts (what :func:`check_limits` checks when the task loads, and what
    verl's ``data.max_prompt_length`` bounds); a later turn's prompt, grown by the replies and
    observations so far, is bounded by the episode (its turns and reply limit), as in play and
    in verl's agent loops, which count it in the response: it was checked against the first
    turn's limit, which stopped a run mid-rollout on an episode play had played whole.

    Each episode keeps its tokens as play does (:class:`sft2rl.chat_tokens.TokenChat`): a
    prompt that extends the episode's chat is its tokens so far (the sampled replies as
    sampled) and the new messages as the chat template renders them, so a growing history is
    one row per episode (:func:`chain_turns`); any other turn (a Markov prompt, a window of
    turns past its first, a reply the prompt shows otherwise) is rendered whole and starts a
    row. The rows' common start (chat header, instruction) is their one shared prompt
    (computed once per batch by the trainer); the rest of a row's prompt and the observations
    between its turns are context (loss mask 0), the sampled replies have loss mask 1.
    ``groups``: the group of each episode."""
    from .chat_tokens import TokenChat, model_type, token_builder
    from .generation import generate, reply_texts

    builder = token_builder(tokenizer, model_type(model))
    chats = [TokenChat(tokenizer, builder) for _ in episodes]
    kv: list = [None] * len(episodes)  # each episode's K/V so far: a continuing prompt prefills its new tokens only
    turns: list[tuple[int, list[int], list[int], list[float] | None]] = []
    cut: list[bool] = []  # per reply: it reached max_new_tokens without a stop id
    first_turn = True
    while True:
        active = [i for i, e in enumerate(episodes) if not done(e)]
        kv = [None if done(e) else c for e, c in zip(episodes, kv)]  # a finished episode's cache goes
        if not active:
            break
        out: list = []
        gen = generate(model, tokenizer, [chats[i].prompt(prompt(episodes[i])) for i in active],
                       max_new_tokens=max_new_tokens, do_sample=True, temperature=cfg["temperature"],
                       top_p=cfg["top_p"], max_prompt_length=cfg["max_prompt_length"] if first_turn else None,
                       past=[kv[i] for i in active], caches_out=out)
        first_turn = False
        cut += gen.cut.tolist()
        for row, i in enumerate(active):
            kv[i] = out[row]
            pm, rm = gen.prompt_mask[row].bool(), gen.response_mask[row].bool()
            turns.append((i, gen.prompt_ids[row][pm].tolist(), gen.response_ids[row][rm].tolist(),
                          gen.logprobs[row][rm].tolist() if gen.logprobs is not None else None))
        advance([episodes[i] for i in active], reply_texts(gen, [chats[i] for i in active]))
    owner, prompts, tails, loss, logps, turn_of = chain_turns(turns)
    c = common_prefix(prompts)
    with_logps = all(lp is not None for lp in logps)
    t = pack_rows([p[:c] for p in prompts], [p[c:] + r for p, r in zip(prompts, tails)],
                  [[0] * (len(p) - c) + m for p, m in zip(prompts, loss)],
                  [[0.0] * (len(p) - c) + lp for p, lp in zip(prompts, logps)] if with_logps else None,
                  tokenizer.pad_token_id, model.device)
    width = t["response_ids"].shape[1]
    turn_t = torch.full((len(owner), width), -1, dtype=torch.long)
    for k, (p, tt) in enumerate(zip(prompts, turn_of)):
        row = [-1] * (len(p) - c) + tt
        turn_t[k, :len(row)] = torch.as_tensor(row, dtype=torch.long)
    return Rollout(t["prompt_ids"], t["prompt_mask"], t["response_ids"], t["response_mask"], t["loss_mask"],
                   torch.as_tensor(owner, device=model.device), groups, t.get("logprobs"),
                   prompt_index=torch.zeros(len(owner), dtype=torch.long, device=model.device),
                   turn_of=turn_t.to(model.device), info=episodes,
                   metrics={**(metrics or {}), "rows": float(len(owner)), "replies_cut": float(np.mean(cut))})
