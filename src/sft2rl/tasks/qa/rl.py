"""QA on the shared GRPO trainer: one-turn answers scored by the group-aware reward.

Items are the rows of ``rl/train.parquet`` (verl's schema); prompts longer than
``rl.max_prompt_length`` tokens are left out before training and counted (verl's
``data.filter_overlong_prompts``), none is ever cut. Each item's ``n`` answers are one
group; the reward of an answer depends on the whole group (:func:`sft2rl.tasks.qa.reward.group_aware_details`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...generation import filter_overlong_prompts, generate
from ...io import read_parquet_rows
from ...logutil import LOG
from ...rl_task import Rollout
from .reward import group_aware_details, options_from_config, well_formed


class QATask:
    """The QA task of :func:`sft2rl.grpo.train_rl`."""

    def __init__(self, train_file: str, reward_cfg: dict[str, Any]):
        self.train_file = train_file
        self.reward_cfg = reward_cfg
        self.items: list[dict] = []
        self.filtered = 0

    def key(self) -> dict[str, Any]:
        return {"data": {"train": self.train_file}, "params": {"reward": self.reward_cfg},
                "modules": ["tasks.qa.rl"]}

    def load(self, tokenizer, cfg: dict[str, Any]) -> list[dict]:
        rows, dropped = filter_overlong_prompts(read_parquet_rows(self.train_file), tokenizer, cfg["max_prompt_length"])
        if dropped:
            LOG.warning("%s: %d of %d prompts are longer than rl.max_prompt_length = %d tokens and are left out "
                        "(as verl's data.filter_overlong_prompts does); first: row %d", self.train_file, len(dropped),
                        len(rows) + len(dropped), cfg["max_prompt_length"], dropped[0])
        if not rows:
            raise ValueError(f"{self.train_file}: every prompt is longer than rl.max_prompt_length = "
                             f"{cfg['max_prompt_length']}")
        self.items, self.filtered = rows, len(dropped)
        return rows

    def rollout(self, model, tokenizer, items: list[dict], n: int, cfg: dict[str, Any], seed: int) -> Rollout:
        torch.manual_seed(seed)
        gen = generate(model, tokenizer, [r["prompt"] for r in items], max_new_tokens=cfg["max_response_length"],
                       do_sample=True, temperature=cfg["temperature"], top_p=cfg["top_p"], num_return_sequences=n,
                       max_prompt_length=cfg["max_prompt_length"])
        rows = len(gen.texts)
        return Rollout(gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask, gen.response_mask,
                       torch.arange(rows), np.repeat(np.arange(len(items)), n), gen.logprobs,
                       prompt_index=torch.arange(len(items), device=gen.prompt_ids.device).repeat_interleave(n),
                       info=gen.texts, metrics={"replies_cut": float(gen.cut.float().mean())})

    def rewards(self, items: list[dict], rollout: Rollout) -> tuple[np.ndarray, dict[str, float]]:
        texts = rollout.info
        n = len(texts) // len(items)
        rkw = options_from_config(self.reward_cfg)
        details = []
        for g, r in enumerate(items):
            details += group_aware_details(texts[g * n:(g + 1) * n], r["reward_model"]["ground_truth"], **rkw)
        metrics = {
            "accuracy": float(np.mean([d.correct for d in details])),
            "format_rate": float(np.mean([well_formed(t) for t in texts])),
            "proactive_block_rate": float(np.mean([d.has_proactive for d in details])),
            "group_accuracy": float(np.mean([d.group_accuracy for d in details])),
        }
        for key, split in (("knowable", True), ("unknowable", False)):
            sel = [d for d, r in zip(details, np.repeat(items, n)) if r["extra_info"].get("knowable") is split]
            if sel:
                metrics[f"proactive_block_rate_{key}"] = float(np.mean([d.has_proactive for d in sel]))
        return np.array([d.reward for d in details], dtype=np.float64), metrics

    def validate(self, model, tokenizer) -> dict[str, float]:
        return {}


def train_grpo(init_model: str, train_file: str, run_dir: str, cfg: dict[str, Any], reward_cfg: dict[str, Any],
               stop_after: int | None = None, precision_mode: str = "auto") -> dict[str, Any]:
    """GRPO on the QA task: :func:`sft2rl.grpo.train_rl` with :class:`QATask`."""
    from ...grpo import train_rl

    return train_rl(init_model, QATask(train_file, reward_cfg), run_dir, cfg, stop_after=stop_after,
                    precision_mode=precision_mode)
