"""Batched generation from chat prompts (greedy or sampled), shared by evaluation,
samples, GRPO rollouts, the games' players and the medical task's doctor. Left padding,
``skip_special_tokens=True`` (the tags are not special tokens, so they survive decoding).

Two engines: :mod:`sft2rl.rollout` (the lean decode loop, used for every model it supports)
and ``model.generate`` (any other model, or ``engine='hf'``, run with only the settings below:
the model's own generation config, e.g. a repetition penalty, is not applied). Greedy, they
give the same tokens; sampled, the same distribution (the same tokens for the same seed only
with the lean engine's ``match_generate``).

A reply ends at the first of the model's stop ids (:func:`stop_token_ids`): the tokenizer's
EOS, every id of the generation config's ``eos_token_id`` and the token that closes an
assistant turn in the chat template. A base model's EOS is often its document end
(Qwen2.5 base: ``<|endoftext|>``) while its chat turns end with ``<|im_end|>``; stopping at
the EOS alone lets a reply run on into invented turns."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .rollout import as_ids


@dataclass
class Generated:
    prompt_ids: torch.Tensor      # (B, P) left-padded
    prompt_mask: torch.Tensor     # (B, P)
    response_ids: torch.Tensor    # (B, R) right-padded with pad id
    response_mask: torch.Tensor   # (B, R) 1 up to and including the first stop id
    texts: list[str]
    logprobs: torch.Tensor | None = None  # (B, R) log-prob of each token under logits / temperature (lean engine)
    #: (B,) bool: the reply reached ``max_new_tokens`` without a stop id (cut by the limit: its
    #: text is scored and, in GRPO, trained as it stands; the tasks count these, never silently)
    cut: torch.Tensor | None = None


_TURN_MARK = "SFT2RL_TURN_END_PROBE"


def turn_end_token_id(tokenizer) -> int | None:
    """The special token that closes an assistant turn in ``tokenizer``'s chat template
    (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ...), or None (no template, or none
    after the content).

    Renders a user turn and an assistant turn whose content is a marker, and takes the first
    special token the template writes after the marker."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": _TURN_MARK}], tokenize=False)
    except Exception:  # a template that refuses this conversation has no turn end we can read
        return None
    at = text.rfind(_TURN_MARK) if isinstance(text, str) else -1
    if at < 0:
        return None
    tail = text[at + len(_TURN_MARK):]
    if not tail:
        return None
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                if getattr(t, "special", False)}
    for i in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if i in special:
            return int(i)
    return None


def stop_token_ids(model, tokenizer, generation_config=None) -> list[int]:
    """Every id at which a reply ends, the tokenizer's EOS first: the union of
    ``tokenizer.eos_token_id``, the generation config's ``eos_token_id`` (an int, a list or
    None; ``generation_config``, else ``model.generation_config``; ``model`` may be None) and
    the chat template's end-of-turn token (:func:`turn_end_token_id`).

    The lean engine, ``model.generate``, :func:`response_mask` and everything built on
    :func:`generate` (evaluation, samples, GRPO, the games' players, the medical doctor)
    stop at these ids; the verl backend gives vLLM the same list
    (:func:`sft2rl.verl_export.write_rollout_generation_config`)."""
    if generation_config is None and model is not None:
        get = getattr(model, "get_base_model", None)
        base = get() if get is not None else model
        generation_config = getattr(base, "generation_config", None)
    out: list[int] = []
    candidates = (as_ids(getattr(tokenizer, "eos_token_id", None))
                  + as_ids(getattr(generation_config, "eos_token_id", None))
                  + as_ids(turn_end_token_id(tokenizer)))
    for i in candidates:
        if i not in out:
            out.append(i)
    if not out:
        raise ValueError("no stop id: the tokenizer has no eos_token_id, the generation config none and the "
                         "chat template no end-of-turn token")
    return out


def chat_texts(tokenizer, prompts: list[list[dict[str, str]]]) -> list[str]:
    return [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]


def prompt_lengths(tokenizer, prompts: list[list[dict[str, str]]]) -> list[int]:
    """Tokens of each chat prompt with the assistant header (what verl's overlong filter counts)."""
    return [len(ids) for ids in tokenizer(chat_texts(tokenizer, prompts), add_special_tokens=False)["input_ids"]]


def filter_overlong_prompts(rows: list[dict], tokenizer, max_prompt_length: int,
                            prompt_key: str = "prompt") -> tuple[list[dict], list[int]]:
    """Rows whose prompt fits in ``max_prompt_length`` tokens, and the indices of those dropped.

    verl's ``data.filter_overlong_prompts`` (on by default, and in our overrides) does the
    same, so both backends train on the same rows. A prompt is never cut.
    """
    lengths = prompt_lengths(tokenizer, [r[prompt_key] for r in rows])
    kept = [r for r, n in zip(rows, lengths) if n <= max_prompt_length]
    dropped = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    return kept, dropped


def _token_prompts(prompts) -> bool:
    """Whether ``prompts`` are token id lists (else chats)."""
    return bool(prompts) and all(isinstance(p, (list, tuple)) and p and isinstance(p[0], int) for p in prompts)


def encode_prompts(tokenizer, prompts: list[list[dict[str, str]]] | list[list[int]], max_prompt_length: int | None,
                   device):
    """Left-padded prompt ids of chats (rendered with the assistant header) or of prompts given
    as token ids (:class:`sft2rl.chat_tokens.TokenChat`). Never truncates: a prompt over
    ``max_prompt_length`` is an error (cutting it would remove the end of the question and the
    assistant header)."""
    tokenizer.padding_side = "left"
    if _token_prompts(prompts):
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            att[i, width - len(p):] = 1
        enc = {"input_ids": ids, "attention_mask": att}
    else:
        enc = tokenizer(chat_texts(tokenizer, prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    if max_prompt_length is not None:
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        over = [(i, n) for i, n in enumerate(lengths) if n > max_prompt_length]
        if over:
            i, n = over[0]
            raise ValueError(f"{len(over)} prompt(s) longer than max_prompt_length = {max_prompt_length} tokens "
                             f"(prompt {i}: {n} tokens); filter them first (generation.filter_overlong_prompts)")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def response_mask(response_ids: torch.Tensor, stop_ids: int | Iterable[int]) -> torch.Tensor:
    """1 for each response token up to and including the first stop id (an int or several,
    :func:`stop_token_ids`), 0 after it (long, (B, R))."""
    stop = torch.tensor(as_ids(stop_ids), dtype=response_ids.dtype, device=response_ids.device)
    is_stop = torch.isin(response_ids, stop)
    return ((is_stop.cumsum(dim=1) - is_stop.long()) == 0).long()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict[str, str]]] | list[list[int]], *, max_new_tokens: int,
             do_sample: bool, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             max_prompt_length: int | None = None, seed: int | None = None, engine: str = "auto",
             past: list | None = None, caches_out: list | None = None) -> Generated:
    """Generate for each prompt (a chat, or its token ids) ``num_return_sequences`` responses
    (grouped consecutively).

    ``engine``: ``auto`` (the lean loop where :func:`sft2rl.rollout.supports` the model,
    else ``generate``), ``lean`` or ``hf``. Greedy, both give the same tokens; sampled, the
    same distribution (not the same draws: :func:`sft2rl.rollout.decode`'s ``match_generate``).
    Both stop a row at any of :func:`stop_token_ids`; the response mask ends with the first,
    the text just before it. ``Generated.cut`` marks each reply that reached
    ``max_new_tokens`` without one.

    ``past`` / ``caches_out``: the lean engine's K/V of each row's sequence so far, carried
    from one turn to the next (:func:`sft2rl.rollout.decode`); ``model.generate`` takes none
    and fills ``caches_out`` with None.
    """
    from . import rollout

    if engine not in ("auto", "lean", "hf"):
        raise ValueError(f"engine must be auto, lean or hf, got {engine!r}")
    lean = engine == "lean" or (engine == "auto" and rollout.supports(model))
    if lean and not rollout.supports(model):
        raise ValueError(f"the lean engine does not support {type(model).__name__}; use engine='hf'")
    device = next(model.parameters()).device
    unique_ids, unique_mask = encode_prompts(tokenizer, prompts, max_prompt_length, device)
    ids, mask = unique_ids, unique_mask
    if num_return_sequences > 1:
        ids = ids.repeat_interleave(num_return_sequences, dim=0)
        mask = mask.repeat_interleave(num_return_sequences, dim=0)
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    stops = stop_token_ids(model, tokenizer)
    logprobs = None
    if lean:
        resp, logprobs = rollout.decode(model, unique_ids, unique_mask, max_new_tokens=max_new_tokens,
                                        stop_token_ids=stops, pad_token_id=tokenizer.pad_token_id, do_sample=do_sample,
                                        temperature=temperature, top_p=top_p,
                                        num_return_sequences=num_return_sequences, past=past,
                                        caches_out=caches_out)
    else:
        if caches_out is not None:
            caches_out[:] = [None] * ids.shape[0]
        from transformers import GenerationConfig

        kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=stops if len(stops) > 1 else stops[0])
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        # only these settings: the model's own generation config may carry more (Qwen2.5-Instruct:
        # repetition_penalty 1.05), which generate() would apply and the lean engine does not
        saved = model.generation_config
        model.generation_config = GenerationConfig(bos_token_id=saved.bos_token_id, **kwargs)
        try:
            resp = model.generate(input_ids=ids, attention_mask=mask, use_cache=True)[:, ids.shape[1]:]
        finally:
            model.generation_config = saved
    if was_training:
        model.train()
    resp_mask = response_mask(resp, stops)
    resp = resp.masked_fill(resp_mask == 0, tokenizer.pad_token_id)
    is_stop = torch.isin(resp, torch.tensor(stops, dtype=resp.dtype, device=resp.device)) & (resp_mask == 1)
    # the text ends before the stop id, also where a model's stop ids include an ordinary token
    texts = tokenizer.batch_decode(resp.masked_fill(is_stop, tokenizer.pad_token_id), skip_special_tokens=True)
    return Generated(ids, mask, resp, resp_mask, texts, logprobs, cut=~is_stop.any(dim=1))


def reply_texts(gen: Generated, chats: list | None = None) -> list[str]:
    """The replies of ``gen`` as text; each appended, tokens and text, to its
    :class:`sft2rl.chat_tokens.TokenChat` in ``chats`` (one per prompt) where given."""
    if chats is not None:
        for row, chat in enumerate(chats):
            chat.reply(gen.response_ids[row][gen.response_mask[row].bool()].tolist(), gen.texts[row])
    return list(gen.texts)


def reply_policy(model, tokenizer, *, max_new_tokens: int, do_sample: bool, temperature: float, seed: int,
                 batch_size: int, top_p: float = 1.0):
    """A model as an agent that answers a list of prompts per call, ``batch_size`` at a time
    (the games' players and the medical task's doctor). Call ``i`` of the policy seeds its
    sampling with ``seed + i``, so a run is reproducible while calls draw differently. Each
    item (an episode, a consultation) keeps its tokens (:class:`sft2rl.chat_tokens.TokenChats`):
    a prompt that extends the item's chat continues the tokens the model produced (``items``
    None: every prompt stands alone). ``top_p`` < 1 samples from the nucleus only.
    ``act.counts``: the replies it gave and those cut at ``max_new_tokens`` (no stop id), so
    an evaluation reports the share (:func:`cut_share`)."""
    from .chat_tokens import TokenChats

    calls = [0]
    chats = TokenChats(model, tokenizer)
    counts = {"replies": 0, "cut": 0}

    def act(items, prompts: list[list[dict[str, str]]]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            calls[0] += 1
            batch = prompts[i:i + batch_size]
            part = None if items is None else [chats(item) for item in items[i:i + batch_size]]
            ids = batch if part is None else [c.prompt(p) for c, p in zip(part, batch)]
            gen = generate(model, tokenizer, ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                           temperature=temperature, top_p=top_p, seed=seed + calls[0])
            counts["replies"] += len(gen.texts)
            counts["cut"] += int(gen.cut.sum())
            out += reply_texts(gen, part)
        return out
    act.counts = counts
    return act


def cut_share(policy, since: dict[str, int] | None = None) -> float | None:
    """The share of a :func:`reply_policy`'s replies cut at its token limit (since the counts
    ``since``, a copy taken earlier); None for a policy that is not a model's (no token limit)."""
    counts = getattr(policy, "counts", None)
    if counts is None:
        return None
    since = since or {"replies": 0, "cut": 0}
    replies = counts["replies"] - since["replies"]
    return (counts["cut"] - since["cut"]) / replies if replies else None
