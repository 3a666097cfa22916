"""Evaluation by playing: a policy plays each held-out level through the environment's ``step``.

The prompt at every step is built by :func:`prompts.messages` exactly as in training (the
same history setting; the history holds the policy's own replies). A reply that is not
exactly one ``<answer>`` with an action name does not move (the observation is repeated)
and still counts as a step. An episode ends on a win, a loss (FrozenLake hole) or at
``max_steps``.

Policies: ``model`` (any HF model directory; greedy, or ``k`` sampled episodes per level),
``random`` (a uniformly random action each step, seeded), ``bfs`` (the solver, replanning
from the current state each step). All episodes of one policy advance in lockstep, so a
model answers one batch of prompts per step.

Besides playing, each policy answers the prompt of every state on the solver's path of every
test level (the test rows, teacher-forced): ``optimal_action_rate`` is the share of answers
that start a shortest plan (several actions may), next to ``chance_optimal_action_rate``,
what a uniformly random action scores on the same states. It measures the policy itself,
one step at a time, where success compounds every step.

Metrics per policy and mode: success rate with an interval at ``eval.ci_level`` (Wilson for one episode per
level; a percentile bootstrap over levels for k episodes per level, which are not
independent), valid-action rate and invalid-format rate (shares of all replies), mean
steps and mean steps / BFS optimum over the won episodes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ...stats import wilson
from . import ACTIONS, frozenlake
from .prompts import messages, parse_action
from .sokoban import SokobanEnv
from .solver import bfs, optimal_actions, plan_states

Policy = Callable[[list["Episode"], list[list[dict[str, str]]]], list[str]]


@dataclass
class Episode:
    env_name: str
    level: dict[str, Any]
    episode: int                # 0..k-1 for this level
    cfg: dict[str, Any]
    max_steps: int
    seed: int
    env: Any = None
    rules: Any = None
    grids: list[list[str]] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    steps: int = 0
    won: bool = False
    lost: bool = False
    well_formed: int = 0
    turn_rewards: list[float] = field(default_factory=list)  # the environment's reward of each turn (0: no move)
    turn_valid: list[bool] = field(default_factory=list)     # whether each turn's reply named an action
    start: Any = None           # a state to start from (what state() returns; the env's reset option); None: the level's start

    def __post_init__(self):
        from .data import rules

        self.rules = rules(self.env_name, self.level["grid"])
        if self.env_name == "sokoban":
            self.env = SokobanEnv(self.level["grid"], max_steps=self.max_steps)
        else:
            self.env = frozenlake.make_env(self.level["grid"], bool(self.cfg["frozenlake"].get("slippery", False)),
                                           self.max_steps)
        self.env.reset(seed=self.seed, options=None if self.start is None else {"state": self.start})
        self.grids = [self.grid()]

    @property
    def valid(self) -> int:
        """Turns whose reply named an action (the others did not move)."""
        return sum(self.turn_valid)

    @property
    def env_reward(self) -> float:
        """The sum of the environment's own step rewards (RAGEN's)."""
        return float(sum(self.turn_rewards))

    @property
    def done(self) -> bool:
        return self.won or self.lost or self.steps >= self.max_steps

    def state(self):
        return self.env.state if self.env_name == "sokoban" else frozenlake.position(self.env)

    def grid(self) -> list[str]:
        return self.rules.grid(self.state())

    def prompt(self) -> list[dict[str, str]]:
        c = self.cfg
        return messages(self.env_name, self.grids, self.replies, style=c["render"], history=c["history"],
                        with_thinking=c["with_thinking"],
                        slippery=bool(c[self.env_name].get("slippery", False)))

    def act(self, reply: str) -> None:
        action, formed = parse_action(reply)
        self.steps += 1
        reward = 0.0
        self.well_formed += formed
        if action is not None:
            env_action = ACTIONS.index(action) if self.env_name == "sokoban" else frozenlake.ENV_ACTION[action]
            _, reward, terminated, _, _ = self.env.step(env_action)
            if terminated:
                self.won = self.rules.won(self.state())
                self.lost = not self.won
        self.turn_rewards.append(float(reward))
        self.turn_valid.append(action is not None)
        self.replies.append(reply)
        self.grids.append(self.grid())

    def record(self) -> dict[str, Any]:
        return {"env": self.env_name, "level": self.level["index"], "episode": self.episode, "won": self.won,
                "lost": self.lost, "steps": self.steps, "optimal": self.level["optimal"], "valid": self.valid,
                "well_formed": self.well_formed, "env_reward": self.env_reward, "replies": self.replies}


def random_policy(seed: int) -> Policy:
    rng = random.Random(seed)

    def act(episodes, prompts):
        return [f"<answer> {rng.choice(ACTIONS)} </answer>" for _ in episodes]
    return act


def random_baselines(levels_path: str, games: dict[str, Any], episodes: int) -> dict[str, float]:
    """The random policy's success (uniformly random moves, ``games.eval.seed``) on the levels
    the RL curves are measured on, ``episodes`` per level: the val levels (``val``: beside the
    greedy val success) and the train levels RL plays (``train``, :func:`data.rl_levels`: beside
    the training episodes' success), within ``games.eval.max_steps`` moves. ``games``: the
    env's games config with its ``eval`` and ``rl`` sections (the RL run's)."""
    from .data import read_levels, rl_levels

    ev = games["eval"]
    out = {}
    for name, levels in (("val", read_levels(levels_path, "val")), ("train", rl_levels(levels_path, games))):
        records = play(levels[0]["env"], levels, random_policy(ev["seed"]), games, episodes=episodes,
                       max_steps=ev["max_steps"], seed=ev["seed"], progress=False)
        out[name] = float(np.mean([r["won"] for r in records]))
    return out


def bfs_policy(max_depth: int) -> Policy:
    def act(episodes, prompts):
        out = []
        for ep in episodes:
            plan = bfs(ep.rules, ep.state(), max_depth=max_depth)
            out.append(f"<answer> {plan[0] if plan else ACTIONS[0]} </answer>")
        return out
    return act


def play(env_name: str, levels: list[dict[str, Any]], policy: Policy, cfg: dict[str, Any], *, episodes: int,
         max_steps: int, seed: int, progress: bool = True) -> list[dict[str, Any]]:
    """Play ``episodes`` episodes of every level with ``policy``; one record per episode."""
    from tqdm import tqdm

    eps = [Episode(env_name, lv, k, cfg, max_steps, seed * 100_003 + lv["index"] * 101 + k)
           for lv in levels for k in range(episodes)]
    bar = tqdm(total=max_steps, desc=f"play {env_name}", mininterval=5, disable=not progress)
    while True:
        active = [e for e in eps if not e.done]
        if not active:
            break
        replies = policy(active, [e.prompt() for e in active])
        for e, reply in zip(active, replies):
            e.act(reply)
        bar.update(1)
    bar.close()
    return [e.record() for e in eps]


def path_states(env_name: str, levels: list[dict[str, Any]], cfg: dict[str, Any]):
    """(level, step, state, prompt, optimal actions) of every state on the solver's path of each
    level: the prompt is the training row's (with history, the solver's earlier answers)."""
    from .data import level_rows, rules

    out = []
    for lv in levels:
        r = rules(env_name, lv["grid"])
        rows = level_rows(lv, cfg)
        for k, (state, row) in enumerate(zip(plan_states(r, lv["solution"]), rows)):
            out.append((lv, k, state, row["prompt"], optimal_actions(r, state, cfg["max_solution_length"])))
    return out


def step_accuracy(env_name: str, levels: list[dict[str, Any]], policy: Policy, cfg: dict[str, Any],
                  max_steps: int, seed: int) -> dict[str, float]:
    """Optimal-action rate of ``policy`` on every state of the solver's paths, and chance's."""
    states = path_states(env_name, levels, cfg)
    # episodes started on the path's states (through the environments' reset option; what bfs/random read)
    episodes = [Episode(env_name, lv, k, cfg, max_steps, seed, start=state) for lv, k, state, _, _ in states]
    replies = policy(episodes, [p for *_, p, _ in states])
    hits = [parse_action(reply)[0] in best for reply, (*_, best) in zip(replies, states)]
    return {"optimal_action_rate": float(np.mean(hits)) if hits else float("nan"),
            "chance_optimal_action_rate": float(np.mean([len(b) / len(ACTIONS) for *_, b in states]))
            if states else float("nan"), "path_states": len(states)}


# ------------------------------------------------------------------ metrics
def level_bootstrap(records: list[dict[str, Any]], *, samples: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the success rate, resampling levels (their k episodes together)."""
    by_level: dict[int, list[float]] = {}
    for r in records:
        by_level.setdefault(r["level"], []).append(float(r["won"]))
    per_level = np.array([np.mean(v) for _, v in sorted(by_level.items())])
    rng = np.random.default_rng(seed)
    draws = per_level[rng.integers(0, len(per_level), size=(samples, len(per_level)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def summarize(records: list[dict[str, Any]], *, ci_level: float = 0.95, bootstrap_samples: int = 2000,
              bootstrap_seed: int = 0) -> dict[str, Any]:
    """One table row's numbers from the episode records of one policy and mode."""
    n = len(records)
    won = sum(r["won"] for r in records)
    replies = sum(r["steps"] for r in records)
    per_level = len({r["level"] for r in records})
    if n == per_level:
        lo, hi = wilson(won, n, ci_level)
        method = "wilson"
    else:
        lo, hi = level_bootstrap(records, samples=bootstrap_samples, level=ci_level, seed=bootstrap_seed)
        method = "bootstrap-levels"
    solved = [r for r in records if r["won"]]
    return {
        "episodes": n, "levels": per_level, "success": won / n if n else float("nan"),
        "success_lo": lo, "success_hi": hi, "ci": method,
        "valid_action_rate": sum(r["valid"] for r in records) / replies if replies else float("nan"),
        "invalid_format_rate": 1 - sum(r["well_formed"] for r in records) / replies if replies else float("nan"),
        # episodes that used every step without winning or losing (a loop of moves that change nothing)
        "timeout_rate": sum(not r["won"] and not r["lost"] for r in records) / n if n else float("nan"),
        "mean_steps_solved": float(np.mean([r["steps"] for r in solved])) if solved else float("nan"),
        "steps_over_optimal": float(np.mean([r["steps"] / r["optimal"] for r in solved])) if solved else float("nan"),
    }


# ------------------------------------------------------------------ one policy, one env: the rule's job
def reply_length(tokenizer, text: str) -> int:
    """The tokens a model generates for the reply ``text`` as SFT trained it: the chat
    template's rendering of the reply (with a think scaffold where the template adds one, as
    Qwen3's does) through its first stop id (:func:`sft2rl.generation.stop_token_ids`); a
    tokenizer without a template: the text's tokens and one end-of-turn token."""
    from ...generation import stop_token_ids

    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": "."}]
        head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": text}], tokenize=False)
        stops = set(stop_token_ids(None, tokenizer))
        if full.startswith(head) and stops:
            ids = tokenizer.encode(full[len(head):], add_special_tokens=False)
            ends = [i for i, t in enumerate(ids) if t in stops]
            if ends:
                return ends[0] + 1
    return len(tokenizer.encode(text, add_special_tokens=False)) + 1


def check_reply_limit(tokenizer, levels: list[dict[str, Any]], limit: int, with_thinking: bool, source: str) -> None:
    """Stop when ``limit`` (``games.eval.max_new_tokens``, the reply limit of play and RL) is
    shorter than the solver's own reply, as the model generates it (:func:`reply_length`: its
    end-of-turn token included), at some state of these levels' solver paths (with
    ``games.with_thinking`` the think block states the remaining plan): such replies would be
    cut before their end (their answer, or the stop id that ends the turn), and the turns
    scored as malformed or left open."""
    from ...errors import ConfigError
    from .prompts import response

    limit = int(limit)
    longest, where = 0, None
    for lv in levels:
        plan = lv["solution"]
        for k in range(len(plan)):
            n = reply_length(tokenizer, response(plan[k], plan[k:], with_thinking))
            if n > longest:
                longest, where = n, (lv["index"], k)
    if longest > limit:
        raise ConfigError(f"config key 'games.eval.max_new_tokens' = {limit} is shorter than the solver's reply "
                          f"at step {where[1]} of level {where[0]} of {source} ({longest} tokens with its "
                          f"end-of-turn token, games.with_thinking: {str(with_thinking).lower()}): replies would "
                          f"be cut before their end; raise it to at least {longest}")


def evaluate_policy(env_name: str, policy: str, levels_path: str, model_path: str | None, games: dict[str, Any],
                    ev: dict[str, Any], bootstrap: dict[str, Any], episodes_out: str, summary_out: str
                    ) -> list[dict[str, Any]]:
    """Play the test levels with ``policy`` (sft | base | rl | random | bfs); write the episodes
    (jsonl) and the summary rows (json: one per mode); return the rows."""
    from ...io import write_json, write_jsonl
    from .data import read_levels

    levels = read_levels(levels_path, "test")
    k = ev["k_samples"]
    stats = dict(ci_level=bootstrap["ci_level"], bootstrap_samples=bootstrap["bootstrap_samples"],
                 bootstrap_seed=bootstrap["bootstrap_seed"])
    runs: list[tuple[str, Policy, int]] = []
    if policy in ("sft", "base", "rl"):
        from ...generation import reply_policy
        from ...model import load_model

        model, tokenizer = load_model(model_path)
        check_reply_limit(tokenizer, levels, ev["max_new_tokens"], games["with_thinking"], levels_path)
        common = dict(max_new_tokens=ev["max_new_tokens"], temperature=ev["temperature"], top_p=ev["top_p"],
                      seed=ev["seed"], batch_size=ev["batch_size"])
        runs.append(("greedy", reply_policy(model, tokenizer, do_sample=False, **common), 1))
        if k:
            runs.append(("sampled", reply_policy(model, tokenizer, do_sample=True, **common), k))
    elif policy == "random":
        runs.append(("sampled", random_policy(ev["seed"]), max(k, 1)))
    elif policy == "bfs":
        runs.append(("greedy", bfs_policy(games["max_solution_length"]), 1))
    else:
        raise ValueError(f"unknown policy {policy!r}: expected sft, base, rl, random or bfs")
    from ...generation import cut_share

    rows, episodes = [], []
    for mode, pol, n in runs:
        steps = step_accuracy(env_name, levels, pol, games, ev["max_steps"], ev["seed"])
        before = dict(getattr(pol, "counts", {}))
        records = play(env_name, levels, pol, games, episodes=n, max_steps=ev["max_steps"], seed=ev["seed"])
        for r in records:
            r.update(policy=policy, mode=mode)
        episodes += records
        # replies_cut: the share of the model's replies in play that reached the reply limit
        rows.append({"env": env_name, "policy": policy, "mode": mode, "max_steps": ev["max_steps"],
                     **summarize(records, **stats), **steps, "replies_cut": cut_share(pol, before)})
    write_jsonl(episodes_out, episodes)
    write_json(summary_out, rows)
    return rows
