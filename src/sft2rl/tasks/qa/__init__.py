"""The proactive-QA task (SPEC section A): answer, or hedge with a ``<proactive>`` block.

Everything about the QA task lives in this folder:

* ``world``: the embedded synthetic knowledge world (raw SFT and RL files, the pretraining
  corpus of the embedded base model, the SFT styles);
* ``data``: raw SFT and RL rows -> processed SFT data and verl's RL schema, validation with
  errors naming file, line and field, splits that keep one entity's questions together, the
  pretraining corpus for your own data;
* ``reward``: the group-aware proactive reward;
* ``rl``: the QA task of the shared GRPO trainer (one-turn answers, the group-aware reward);
* ``verl_hooks``: the same reward inside verl (a per-rollout reward function and a group-level
  advantage estimator, ``backend: verl``);
* ``evaluate``: evaluation of a model on the RL test set, its answers and metrics;
* ``runs``: run names (``sft<N>_seed<S>[_<style>]``, ``rl-<init>-beta<b>-seed<s>``);
* ``tables``: the ablation tables with bootstrap intervals, and their LaTeX.

The QA metrics and intervals are in :mod:`sft2rl.stats`, its figures in :mod:`sft2rl.plots`.
"""
from __future__ import annotations

SYSTEM_PROMPT = "You are a helpful proactive assistant."  # the world's default (config: system_prompt)
