"""verl's multi-turn SFT dataset with the loss on the final assistant turn only.

verl 0.9.1's ``MultiTurnSFTDataset`` puts the loss on every assistant turn and reads no
per-message flag. The prompt/response rows of the games (and the medical task) hold earlier
assistant turns as context: only the last turn is a target, as in the local backend
(``sft.encode_conversation(..., loss_turns="last")``). Loaded by verl's SFT trainer through
``data.custom_cls.path=pkg://sft2rl.verl_sft_data`` and ``data.custom_cls.name=LastTurnSFTDataset``
(``verl_launch.sft_overrides(loss_turns="last")``); imported only inside verl jobs.
"""
from __future__ import annotations

import torch
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset


class LastTurnSFTDataset(MultiTurnSFTDataset):
    def _process_single_message(self, index, message, full_message, tools=None, enable_thinking=None):
        input_ids, loss_mask, attention_mask, extra = super()._process_single_message(
            index, message, full_message, tools, enable_thinking)
        if index != len(full_message) - 1:
            loss_mask = torch.zeros_like(loss_mask)
        return input_ids, loss_mask, attention_mask, extra
