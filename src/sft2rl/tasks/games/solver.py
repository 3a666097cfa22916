"""Breadth-first search over whole game states: a shortest action list, or None.

Works on any ``Rules`` object of the games (``start``, ``step(state, action)``, ``won``,
``failed``). Actions are tried in the fixed order of :data:`ACTIONS`, so among several
shortest plans the one returned is always the same. Moves that change nothing are not
expanded (they never shorten a plan), and a losing state (a FrozenLake hole) is a dead end.
"""
from __future__ import annotations

from collections import deque

from . import ACTIONS


def bfs(rules, start=None, max_depth: int = 100) -> list[str] | None:
    start = rules.start if start is None else start
    if rules.won(start):
        return []
    parent = {start: None}
    queue = deque([(start, 0)])
    while queue:
        state, depth = queue.popleft()
        if depth >= max_depth:
            continue
        for action in ACTIONS:
            nxt, moved = rules.step(state, action)
            if not moved or nxt in parent:
                continue
            parent[nxt] = (state, action)
            if rules.won(nxt):
                plan = []
                node = nxt
                while parent[node] is not None:
                    node, act = parent[node]
                    plan.append(act)
                return plan[::-1]
            if not rules.failed(nxt):
                queue.append((nxt, depth + 1))
    return None


def plan_states(rules, plan: list[str], start=None) -> list:
    """The states along a plan, the start included (len(plan) + 1 states)."""
    state = rules.start if start is None else start
    states = [state]
    for action in plan:
        state, _ = rules.step(state, action)
        states.append(state)
    return states


def optimal_actions(rules, state, max_depth: int = 100) -> list[str]:
    """Every action that starts a shortest plan from ``state`` (several may tie)."""
    plan = bfs(rules, state, max_depth)
    if not plan:
        return []
    out = []
    for action in ACTIONS:
        nxt, moved = rules.step(state, action)
        if not moved:
            continue
        if rules.won(nxt):
            rest = []
        elif rules.failed(nxt):
            continue
        else:
            rest = bfs(rules, nxt, max_depth)
            if rest is None:
                continue
        if len(rest) == len(plan) - 1:
            out.append(action)
    return out
