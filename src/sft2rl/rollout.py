"""A lean batched decode loop for Qwen2/Llama-shaped causal LMs (rollouts and evaluation).

``model.generate`` prefills every copy of a GRPO group's prompt, keeps finished rows in the
batch to the end, draws with ``torch.multinomial`` (one exponential per vocabulary entry
and row), and spends a small model's decode step in per-token Python (cache objects, mask
construction, logits processors, stopping criteria). This engine runs the model's own
modules (so LoRA layers, autocast and any dtype work unchanged) in a plain loop:

- one prefill per distinct prompt, its cache copied to the prompt's ``n`` rows; the tokens
  every prompt starts with (a task's instruction) are prefilled once for the whole batch;
- a preallocated KV cache per layer, written in place (no concatenation per token);
- the rotary tables computed once by the model's own rotary module;
- a row finishes at any of its stop ids (:func:`sft2rl.generation.stop_token_ids`: EOS and
  the chat template's end of turn); finished rows are dropped from the batch once they are a quarter of it;
- sampling by inverting the cumulative distribution at one uniform number per row;
- the log-prob of each sampled token under ``logits / temperature`` comes back with it
  (verl's rollout log-probs), so the trainer can check them against its own forward;
- multi-turn: each row's K/V (prompt and reply) can be carried to the next turn
  (:class:`RowCache`), whose prompt continues it: only the new tokens (the reply's end and
  the observation) are prefilled, as a serving engine's prefix cache does.

Exactness (tests/test_rollout.py, and bench/rollout.py --check in CI): greedy tokens are
identical to ``model.generate``; with ``match_generate=True`` (finished rows kept, multinomial
draws) sampled tokens are identical to ``generate``'s for the same seed; in the default
fast mode the draws come from the same distribution (temperature, then top-p; chi-square
tested) and every token's log-prob matches a fresh forward pass to 1e-5 in fp32. Models of
another shape fall back to ``generate`` (:func:`supports`).
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable

import torch
import torch.nn.functional as F

#: Architectures whose decoder layer is the Llama shape this loop reproduces.
SUPPORTED_TYPES = ("qwen2", "llama")


def as_ids(value) -> list[int]:
    """An ``eos_token_id`` field (None, an int or a list of ints) as a list."""
    if value is None:
        return []
    if isinstance(value, numbers.Integral):
        return [int(value)]
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) for v in value if v is not None]


def _base(model):
    """The ``*ForCausalLM`` under a peft wrapper (the LoRA layers stay in place)."""
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def supports(model) -> bool:
    """Whether this loop reproduces ``model``'s forward (else use ``model.generate``)."""
    m = _base(model)
    cfg = getattr(m, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
        return False
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return False
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    inner = getattr(m, "model", None)
    return inner is not None and hasattr(inner, "layers") and hasattr(inner, "rotary_emb")


class _Cache:
    """Per-layer K/V tensors of shape (B, H_kv, L, D), preallocated for the whole sequence."""

    def __init__(self, n_layers: int, batch: int, heads: int, length: int, head_dim: int, dtype, device):
        self.k = [torch.empty(batch, heads, length, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(batch, heads, length, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows``."""
        self.k = [t.index_select(0, rows) for t in self.k]
        self.v = [t.index_select(0, rows) for t in self.v]


class RowCache:
    """One sequence's K/V so far, carried from one turn's decode to the next: ``ids`` are the
    tokens it holds (positions 0..len-1, the prompt's real tokens then the reply tokens that
    went through the model), ``k``/``v`` per layer (H_kv, len, D)."""

    def __init__(self, ids: list[int], k: list[torch.Tensor], v: list[torch.Tensor]):
        self.ids, self.k, self.v = ids, k, v

    def usable_for(self, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` this cache holds (0 unless it is a prefix of
        ``prompt`` that leaves at least one token to prefill)."""
        n = len(self.ids)
        return n if n < len(prompt) and prompt[:n] == self.ids else 0


def _snapshot(cache: _Cache, slot_rows: torch.Tensor, slots: list[torch.Tensor], ids: list[list[int]],
              out: list, orig: list[int]) -> None:
    """Copy the K/V of ``slots[j]`` of cache row ``slot_rows[j]`` into ``out[orig[j]]``."""
    for j, r in enumerate(slot_rows.tolist()):
        sl = slots[j]
        out[orig[j]] = RowCache(ids[j], [k[r].index_select(1, sl) for k in cache.k],
                                [v[r].index_select(1, sl) for v in cache.v])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def head_shape(cfg) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a Qwen2/Llama config."""
    n_heads = cfg.num_attention_heads
    return n_heads, cfg.num_key_value_heads, getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads


def project_qkv(layer, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, shape: tuple[int, int, int]):
    """A decoder layer's queries and keys (rotated) and values for hidden states ``h`` (B, T, C):
    (B, H, T, D), (B, H_kv, T, D), (B, H_kv, T, D). ``cos``/``sin``: (B, 1, T, D)."""
    n_heads, n_kv, head_dim = shape
    attn = layer.self_attn
    b, t = h.shape[:2]
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(b, t, n_heads, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, n_kv, head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, n_kv, head_dim).transpose(1, 2)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin, v


def finish_layer(layer, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """The rest of a decoder layer: attention output ``o`` (B, H, T, D) through the output
    projection onto the residual, then the MLP block."""
    b, t = h.shape[:2]
    h = h + layer.self_attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
    return h + layer.mlp(layer.post_attention_layernorm(h))


def prompt_layout(prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and prefill attention mask of left-padded prompts (B, P): the positions
    ``generate`` uses (real tokens counted from 0), and the causal mask over real keys (B, 1, P, P).
    A left-pad query attends to itself too, so no row of the mask is empty (an empty row is NaN)."""
    p, device = prompt_mask.shape[1], prompt_mask.device
    pos = (prompt_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    causal = torch.ones(p, p, dtype=torch.bool, device=device).tril()
    mask = (causal & prompt_mask.bool()[:, None, :]) | torch.eye(p, dtype=torch.bool, device=device)
    return pos, mask[:, None]


def _forward(m, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: _Cache, start: int,
             mask: torch.Tensor) -> torch.Tensor:
    """Hidden states of ``ids`` (B, T) at cache positions ``start..start+T``.

    ``cos``/``sin`` are (B, T, D) for these tokens; ``mask`` is the boolean attention mask
    (B, 1, T, start+T), True where a query may attend.
    """
    inner = m.model
    h = inner.embed_tokens(ids)
    b, t = ids.shape
    shape = head_shape(m.config)
    n_heads, n_kv, head_dim = shape
    groups = n_heads // n_kv
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    end = start + t
    mask_g = mask.repeat(1, 1, groups, 1) if groups > 1 and t > 1 else mask
    for i, layer in enumerate(inner.layers):
        q, k, v = project_qkv(layer, h, cos, sin, shape)
        cache.k[i][:, :, start:end] = k
        cache.v[i][:, :, start:end] = v
        keys, values = cache.k[i][:, :, :end], cache.v[i][:, :, :end]
        scale = layer.self_attn.scaling
        if groups > 1:  # grouped-query attention without copying the cache: a KV head's query heads as rows
            o = F.scaled_dot_product_attention(q.reshape(b, n_kv, groups * t, head_dim), keys, values,
                                               attn_mask=mask_g, scale=scale).view(b, n_heads, t, head_dim)
        else:
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        h = finish_layer(layer, h, o)
    return inner.norm(h)


def _sample(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
            match_generate: bool) -> torch.Tensor:
    """One token per row: argmax, or a draw after temperature and top-p (as ``generate``).

    ``match_generate``: draw with ``torch.multinomial``, consuming the random stream as
    ``generate`` does. Otherwise by inverting the cumulative distribution at one uniform number
    per row: the same distribution, ~15x cheaper (multinomial draws an exponential for every
    vocabulary entry)."""
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits / temperature if temperature != 1.0 else logits
    if top_p < 1.0:
        # transformers' TopPLogitsWarper: drop the lowest tokens whose cumulative mass <= 1 - top_p
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    probs = F.softmax(scores, dim=-1)
    if match_generate:
        return torch.multinomial(probs, num_samples=1).squeeze(1)
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    # the first token whose cumulative mass exceeds u; zero-mass tokens can never be it
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


#: a common prompt start shorter than this is prefilled with the rest
MIN_SHARED_PROMPT = 16


def shared_prompt_prefix(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> int:
    """Tokens every left-padded prompt starts with (its real tokens), keeping at least one
    token of each prompt after them; 0 for one prompt or a start shorter than
    :data:`MIN_SHARED_PROMPT`."""
    if prompt_ids.shape[0] < 2:
        return 0
    lengths = prompt_mask.long().sum(dim=1)
    shortest = int(lengths.min())
    p = prompt_ids.shape[1]
    starts = p - lengths                                        # first real token of each row
    idx = starts[:, None] + torch.arange(shortest, device=prompt_ids.device)[None]
    real = prompt_ids.gather(1, idx)                            # (B, shortest): each row's first tokens
    same = (real == real[:1]).all(dim=0).long().cumprod(0)
    c = min(int(same.sum()), shortest - 1)
    return c if c >= MIN_SHARED_PROMPT else 0


def _prefix_first(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, c: int, pad_token_id: int):
    """The layout [shared prefix (c) | each row's rest, left-padded]: same width, the padding
    moved after the prefix."""
    b, p = prompt_ids.shape
    lengths = prompt_mask.long().sum(dim=1)
    starts = p - lengths
    ids = torch.full_like(prompt_ids, pad_token_id)
    mask = torch.zeros_like(prompt_mask)
    ids[:, :c] = prompt_ids[0, p - int(lengths[0]):p - int(lengths[0]) + c]
    mask[:, :c] = 1
    for i in range(b):                                          # the rest of row i, right-aligned
        rest = prompt_ids[i, int(starts[i]) + c:]
        ids[i, p - rest.shape[0]:] = rest
        mask[i, p - rest.shape[0]:] = 1
    return ids, mask


@torch.no_grad()  # not inference_mode: the returned ids feed the training forward
def decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
           stop_token_ids: int | Iterable[int] | None = None, pad_token_id: int, do_sample: bool,
           temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
           match_generate: bool = False, eos_token_id: int | Iterable[int] | None = None,
           past: list[RowCache | None] | None = None, caches_out: list | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode up to ``max_new_tokens`` for left-padded prompts, ``num_return_sequences`` rows
    per prompt (consecutive, as ``generate`` orders them). Each prompt is prefilled once and
    its cache copied to its rows.

    ``stop_token_ids``: an id or several (``eos_token_id`` is an alias); a row is finished
    at the first of them it emits (that token kept), as ``generate`` with a list of EOS ids.

    Returns ``(response_ids, logprobs)``, both (B, R) with R <= ``max_new_tokens`` the
    longest response: tokens after a row's stop id are ``pad_token_id`` and their log-prob 0.
    ``logprobs`` are of each token under ``log_softmax(logits / temperature)``.

    ``match_generate``: keep finished rows and sample with ``torch.multinomial``, so the
    sampled tokens are those ``generate`` draws from the same seed (slower; for checks).

    Multi-turn (one row per prompt): ``past`` gives each row the :class:`RowCache` of its
    sequence so far (None: none); where it holds the start of the row's prompt, only the rest
    is prefilled (the window of the longest rest; a row's cached tokens inside that window are
    computed again). ``caches_out``, a list, receives one :class:`RowCache` per row: the
    prompt's real tokens and the reply tokens that went through the model, for the next turn.
    """
    if (stop_token_ids is None) == (eos_token_id is None):
        raise TypeError("decode() takes stop_token_ids (or its alias eos_token_id), exactly one of them")
    stops = as_ids(stop_token_ids if stop_token_ids is not None else eos_token_id)
    if not stops:
        raise ValueError("decode() needs at least one stop id")
    m = _base(model)
    cfg = m.config
    device = prompt_ids.device
    stop_t = torch.tensor(stops, dtype=torch.long, device=device)
    n = num_return_sequences
    b, p = prompt_ids.shape[0] * n, prompt_ids.shape[1]
    total = p + max_new_tokens
    _, n_kv, head_dim = head_shape(cfg)
    dtype = m.model.embed_tokens.weight.dtype
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    cache = _Cache(len(m.model.layers), b // n, n_kv, total, head_dim, dtype, device)

    # rotary tables for every position, from the model's own module (fp32, then the run's dtype)
    positions = torch.arange(total, device=device).unsqueeze(0)
    probe = torch.empty(1, dtype=dtype, device=device)
    cos_all, sin_all = m.model.rotary_emb(probe, positions)
    cos_all, sin_all = cos_all[0], sin_all[0]                       # (L, D)

    lengths = prompt_mask.long().sum(dim=1).tolist()
    real_ids = [prompt_ids[i, p - lengths[i]:].tolist() for i in range(b // n)] \
        if past is not None or caches_out is not None else None
    held = [0] * (b // n)
    if caches_out is not None and n != 1:
        raise ValueError("caches_out needs one row per prompt (num_return_sequences = 1)")
    if past is not None:
        if n != 1 or len(past) != b:
            raise ValueError("past caches need one row per prompt (num_return_sequences = 1)")
        held = [pc.usable_for(real_ids[i]) if pc is not None else 0 for i, pc in enumerate(past)]
    window = max(lengths[i] - held[i] for i in range(b // n)) if any(held) else p
    c = 0 if window < p else shared_prompt_prefix(prompt_ids, prompt_mask)
    if window < p:  # each row's cached start in place, then the rest of every prompt prefilled
        start = p - window
        for layer in range(len(cache.k)):  # slots no row fills (left padding) must hold finite values:
            cache.k[layer][:, :, :start].zero_()  # a masked key still multiplies its value by 0
            cache.v[layer][:, :, :start].zero_()
        for i, got in enumerate(held):
            if got:
                first = p - lengths[i]
                for layer in range(len(cache.k)):
                    cache.k[layer][i, :, first:first + got] = past[i].k[layer]
                    cache.v[layer][i, :, first:first + got] = past[i].v[layer]
        mask = prompt_mask.bool()
        pos, prefill_mask = prompt_layout(prompt_mask)
        h = _forward(m, prompt_ids[:, start:], cos_all[pos[:, start:]], sin_all[pos[:, start:]], cache, start,
                     prefill_mask[:, :, start:])
    elif c:  # the prompts' common start (a task's instruction) is prefilled once, for every row
        prompt_ids, prompt_mask = _prefix_first(prompt_ids, prompt_mask, c, pad_token_id)
        one = _Cache(len(m.model.layers), 1, n_kv, c, head_dim, dtype, device)
        _forward(m, prompt_ids[:1, :c], cos_all[None, :c], sin_all[None, :c], one, 0,
                 torch.ones(c, c, dtype=torch.bool, device=device).tril()[None, None])
        for i in range(len(one.k)):
            cache.k[i][:, :, :c] = one.k[i]
            cache.v[i][:, :, :c] = one.v[i]
        mask = prompt_mask.bool()
        suffix = mask[:, c:]
        pos = c + (suffix.long().cumsum(dim=1) - 1).clamp(min=0)
        s_len = p - c
        causal = torch.ones(s_len, s_len, dtype=torch.bool, device=device).tril()
        own = (causal & suffix[:, None, :]) | torch.eye(s_len, dtype=torch.bool, device=device)
        prefill_mask = torch.cat([torch.ones(own.shape[0], s_len, c, dtype=torch.bool, device=device), own], dim=2)
        h = _forward(m, prompt_ids[:, c:], cos_all[pos], sin_all[pos], cache, c, prefill_mask[:, None])
    else:
        mask = prompt_mask.bool()
        pos, prefill_mask = prompt_layout(prompt_mask)
        h = _forward(m, prompt_ids, cos_all[pos], sin_all[pos], cache, 0, prefill_mask)
    last_pos = pos[:, -1]
    if n > 1:
        rep = torch.arange(b // n, device=device).repeat_interleave(n)
        cache.keep(rep)
        h, last_pos, mask = h[rep], last_pos[rep], mask[rep]

    prompt_slots = [mask[i].nonzero().squeeze(1) for i in range(b)] if caches_out is not None else None

    def keep_caches(which: torch.Tensor, forwarded: int) -> None:
        """Snapshot the cache rows ``which`` (positions in the current batch) into ``caches_out``,
        once the first ``forwarded`` reply steps have gone through the model: a row holds its
        reply up to its stop id, at most ``forwarded`` tokens of it."""
        if caches_out is None or len(which) == 0:
            return
        orig = rows[which].tolist()
        held = _reply_lengths(out_ids[orig, :forwarded + 1], stop_t).clamp(max=forwarded).tolist()
        reply = [out_ids[r, :n].tolist() for r, n in zip(orig, held)]
        slots = [torch.cat([prompt_slots[r], p + torch.arange(len(reply[j]), device=device)])
                 for j, r in enumerate(orig)]
        _snapshot(cache, which, slots, [real_ids[r] + reply[j] for j, r in enumerate(orig)], caches_out, orig)

    if caches_out is not None:
        caches_out[:] = [None] * b
    out_ids = torch.full((b, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(b, max_new_tokens, dtype=torch.float32, device=device)
    rows = torch.arange(b, device=device)        # original index of each active row
    key_mask = torch.zeros(b, total, dtype=torch.bool, device=device)
    key_mask[:, :p] = mask
    hidden = h[:, -1]
    dead = torch.zeros(b, dtype=torch.bool, device=device)  # active rows that already emitted a stop id
    steps = 0
    for t in range(max_new_tokens):
        logits = m.lm_head(hidden).float()
        tok = _sample(logits, do_sample, temperature, top_p, match_generate).masked_fill(dead, pad_token_id)
        lp = torch.log_softmax(logits / temperature, dim=-1).gather(1, tok[:, None]).squeeze(1)
        out_ids[rows, t] = tok
        out_lp[rows, t] = lp.masked_fill(dead, 0.0)
        steps = t + 1
        dead = dead | (tok == stops[0] if len(stops) == 1 else torch.isin(tok, stop_t))
        n_dead = int(dead.sum())
        if t == max_new_tokens - 1 or n_dead == len(rows):
            break
        if not match_generate and n_dead * 4 >= len(rows):
            # drop finished rows once they are a quarter of the batch (each drop copies the cache)
            keep = (~dead).nonzero().squeeze(1)
            keep_caches(dead.nonzero().squeeze(1), t)
            rows, tok, last_pos, key_mask, dead = rows[keep], tok[keep], last_pos[keep], key_mask[keep], dead[keep]
            cache.keep(keep)
        last_pos = last_pos + 1
        key_mask[:, p + t] = True
        h = _forward(m, tok[:, None], cos_all[last_pos][:, None], sin_all[last_pos][:, None], cache, p + t,
                     key_mask[:, None, None, :p + t + 1])
        hidden = h[:, -1]
    # the loop ends before the last sampled token goes through the model
    keep_caches(torch.arange(len(rows), device=device), max(steps - 1, 0))
    return out_ids[:, :steps], out_lp[:, :steps]


def _reply_lengths(out: torch.Tensor, stop_t: torch.Tensor) -> torch.Tensor:
    """Tokens of each row's reply so far in ``out`` (B, T): up to and including its first stop id."""
    is_stop = torch.isin(out, stop_t)
    first = torch.where(is_stop.any(dim=1), is_stop.long().argmax(dim=1) + 1, torch.full_like(is_stop[:, 0], out.shape[1],
                                                                                               dtype=torch.long))
    return first
