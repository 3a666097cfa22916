"""verl's SFT datasets with the tokens and the loss mask of the local backend.

verl 0.9.1's ``MultiTurnSFTDataset`` renders each message of a conversation alone and checks
the concatenation against the whole chat's rendering: under Qwen3's template, which renders an
assistant turn otherwise alone than in the chat (and an earlier one without its think block),
that check refuses every row. It also puts the loss on every assistant turn, reading no per-message flag,
while the prompt/response rows of the games and the medical task hold earlier assistant turns
as context (only the last turn is a target). These classes tokenise each conversation once,
with :func:`sft2rl.sft.encode_conversation` (the chat template over the whole conversation, the
assistant spans from its growing prefixes), so verl trains exactly the tokens the local backend
trains: :class:`ConversationSFTDataset` every assistant turn (``loss_turns: all``),
:class:`LastTurnSFTDataset` the last one (``last``). A row longer than ``data.max_length`` is an
error (never cut). Loaded by verl's SFT trainer through ``data.custom_cls.path=pkg://sft2rl.verl_sft_data``
(``verl_launch.sft_overrides``); imported only inside verl jobs and the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from verl.utils.dataset.dataset_utils import DatasetPadMode
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

from .sft import IGNORE, encode_conversation


class ConversationSFTDataset(MultiTurnSFTDataset):
    loss_turns = "all"

    def __getitem__(self, item):
        row = self.dataframe.iloc[item].to_dict()
        messages = [{"role": m["role"], "content": m["content"]} for m in self._build_messages(row)]
        enc = encode_conversation(self.tokenizer, messages, self.max_length, self.loss_turns)
        if enc["truncated"]:
            raise ValueError(f"row {item}: {enc['length']} tokens, more than data.max_length = {self.max_length} "
                             "(rows are never cut)")
        input_ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        loss_mask = torch.tensor([int(lab != IGNORE) for lab in enc["labels"]], dtype=torch.long)
        position_ids = torch.arange(len(input_ids), dtype=torch.long)
        if self.pad_mode == DatasetPadMode.NO_PADDING:
            return {"input_ids": input_ids, "position_ids": position_ids, "loss_mask": loss_mask}
        if self.pad_mode != DatasetPadMode.RIGHT:
            raise ValueError(f"pad mode {self.pad_mode!r}: expected right or no_padding")
        pad = self.max_length - len(input_ids)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return {"input_ids": F.pad(input_ids, (0, pad), value=pad_id),
                "attention_mask": F.pad(torch.ones_like(input_ids), (0, pad), value=0),
                "position_ids": F.pad(position_ids, (0, pad), value=0),
                "loss_mask": F.pad(loss_mask, (0, pad), value=0)}


class LastTurnSFTDataset(ConversationSFTDataset):
    loss_turns = "last"
