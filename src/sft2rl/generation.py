"""Batched generation from chat prompts (greedy or sampled), shared by evaluation,
samples, GRPO rollouts, the games' players and the medical task's doctor. Left padding,
``skip_special_tokens=True`` (the tags are not special tokens, so they survive decoding).

Two engines give the same tokens: :mod:`sft2rl.rollout` (the lean decode loop, used for
every model it supports) and ``model.generate`` (any other model, or ``engine='hf'``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generated:
    prompt_ids: torch.Tensor      # (B, P) left-padded
    prompt_mask: torch.Tensor     # (B, P)
    response_ids: torch.Tensor    # (B, R) right-padded with pad id
    response_mask: torch.Tensor   # (B, R) 1 up to and including EOS
    texts: list[str]
    logprobs: torch.Tensor | None = None  # (B, R) log-prob of each token under logits / temperature (lean engine)


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


def encode_prompts(tokenizer, prompts: list[list[dict[str, str]]], max_prompt_length: int | None, device):
    """Left-padded prompt ids. Never truncates: a prompt over ``max_prompt_length`` is an error
    (cutting it would remove the end of the question and the assistant header)."""
    texts = chat_texts(tokenizer, prompts)
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    if max_prompt_length is not None:
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        over = [(i, n) for i, n in enumerate(lengths) if n > max_prompt_length]
        if over:
            i, n = over[0]
            raise ValueError(f"{len(over)} prompt(s) longer than max_prompt_length = {max_prompt_length} tokens "
                             f"(prompt {i}: {n} tokens); filter them first (generation.filter_overlong_prompts)")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for each response token up to and including the first EOS, 0 after it (long, (B, R))."""
    is_eos = response_ids == eos_token_id
    return ((is_eos.cumsum(dim=1) - is_eos.long()) == 0).long()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict[str, str]]], *, max_new_tokens: int,
             do_sample: bool, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
             max_prompt_length: int | None = None, seed: int | None = None, engine: str = "auto") -> Generated:
    """Generate for each prompt ``num_return_sequences`` responses (grouped consecutively).

    ``engine``: ``auto`` (the lean loop where :func:`sft2rl.rollout.supports` the model,
    else ``generate``), ``lean`` or ``hf``. Both draw the same tokens from the same seed.
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
    eos = tokenizer.eos_token_id
    logprobs = None
    if lean:
        resp, logprobs = rollout.decode(model, unique_ids, unique_mask, max_new_tokens=max_new_tokens,
                                        eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, do_sample=do_sample,
                                        temperature=temperature, top_p=top_p,
                                        num_return_sequences=num_return_sequences)
    else:
        kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=eos, use_cache=True)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        resp = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1]:]
    if was_training:
        model.train()
    resp_mask = response_mask(resp, eos)
    resp = resp.masked_fill(resp_mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(resp, skip_special_tokens=True)
    return Generated(ids, mask, resp, resp_mask, texts, logprobs)


def reply_policy(model, tokenizer, *, max_new_tokens: int, do_sample: bool, temperature: float, seed: int,
                 batch_size: int):
    """A model as an agent that answers a list of prompts per call, ``batch_size`` at a time
    (the games' players and the medical task's doctor). Call ``i`` of the policy seeds its
    sampling with ``seed + i``, so a run is reproducible while calls draw differently."""
    calls = [0]

    def act(items, prompts: list[list[dict[str, str]]]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), batch_size):
            calls[0] += 1
            out += generate(model, tokenizer, prompts[i:i + batch_size], max_new_tokens=max_new_tokens,
                            do_sample=do_sample, temperature=temperature, seed=seed + calls[0]).texts
        return out
    return act
