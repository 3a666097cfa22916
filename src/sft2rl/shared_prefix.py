"""Response log-probs of GRPO groups with each group's prompt computed once.

The ``n`` rollouts of a prompt share it, so a forward pass over ``n`` copies of
prompt + response computes the prompt ``n`` times. :class:`SharedPrefix` runs the prompts
once (keeping each layer's keys and values and the last prompt position's hidden state),
then any chunk of rows runs only its response tokens, attending to its group's prompt
keys and values. With gradients, the chunks' gradients for the prompt's keys, values and
last hidden state are summed, and one backward pass through the prompt finishes the
gradient (:meth:`SharedPrefix.backward`): the same loss and gradient as the full forward
pass, with the prompts' share of the work divided by ``n``.

The layers are the model's own modules (LoRA layers and autocast work unchanged), in the
Qwen2/Llama shape :func:`sft2rl.rollout.supports` accepts; tests/test_grpo.py checks the
log-probs and the gradients against the plain forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .rollout import _base, finish_layer, head_shape, project_qkv, prompt_layout


class SharedPrefix:
    """The prompts of a batch of groups, computed once; see the module docstring.

    ``prompt_ids``/``prompt_mask``: (G, P), left-padded, one row per group (prompt).
    ``grad``: keep the graph so :meth:`backward` can finish the prompt's gradient.
    """

    def __init__(self, model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, grad: bool):
        m = _base(model)
        self.m, self.grad = m, grad
        self.shape = head_shape(m.config)
        self.prompt_mask = prompt_mask.bool()
        self.prompt_len = prompt_mask.long().sum(dim=1)                   # real tokens per prompt
        pos, mask = prompt_layout(prompt_mask)
        h = m.model.embed_tokens(prompt_ids)
        cos, sin = m.model.rotary_emb(h, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        keys, values = [], []
        for layer in m.model.layers:
            q, k, v = project_qkv(layer, h, cos, sin, self.shape)
            keys.append(k)
            values.append(v)
            h = finish_layer(layer, h, self._attend(q, k, v, mask, layer.self_attn.scaling))
        last = m.model.norm(h[:, -1])                                    # predicts the first response token
        self._outputs = keys + values + [last]
        if grad:  # leaves for the chunks; their summed gradients flow through the prompt once, in backward()
            self._leaves = [t.detach().requires_grad_() for t in self._outputs]
        else:
            self._leaves = self._outputs
        n_layers = len(keys)
        self.keys, self.values, self.last = (self._leaves[:n_layers], self._leaves[n_layers:2 * n_layers],
                                             self._leaves[-1])

    def _attend(self, q, k, v, mask, scale):
        groups = self.shape[0] // self.shape[1]
        if groups > 1:  # as transformers' repeat_kv
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def logits(self, groups: torch.Tensor, response_ids: torch.Tensor) -> torch.Tensor:
        """Logits (float) predicting each response token of rows whose prompt is ``groups``.

        ``response_ids``: (C, R), right-padded; position t's logits predict token t.
        """
        m = self.m
        c, r = response_ids.shape
        device = response_ids.device
        pos = self.prompt_len[groups][:, None] + torch.arange(r, device=device)[None, :]
        h = m.model.embed_tokens(response_ids)
        cos, sin = m.model.rotary_emb(h, pos)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        p = self.prompt_mask.shape[1]
        causal = torch.ones(r, r, dtype=torch.bool, device=device).tril()
        mask = torch.cat([self.prompt_mask[groups][:, None, :].expand(c, r, p), causal.expand(c, r, r)], dim=2)[:, None]
        for i, layer in enumerate(m.model.layers):
            q, k, v = project_qkv(layer, h, cos, sin, self.shape)
            keys = torch.cat([self.keys[i][groups], k], dim=2)
            values = torch.cat([self.values[i][groups], v], dim=2)
            h = finish_layer(layer, h, self._attend(q, keys, values, mask, layer.self_attn.scaling))
        h = torch.cat([self.last[groups][:, None], m.model.norm(h[:, :-1])], dim=1)
        return m.lm_head(h).float()

    def backward(self) -> None:
        """Finish the gradient: the chunks' summed gradients of the prompt's keys, values and
        last hidden state, back through the prompt pass (once)."""
        if not self.grad:
            return
        pairs = [(out, leaf.grad) for out, leaf in zip(self._outputs, self._leaves) if leaf.grad is not None]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        self._outputs = self._leaves = self.keys = self.values = self.last = None
