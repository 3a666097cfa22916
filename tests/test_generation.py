"""Replies stop at every end-of-turn id (generation.stop_token_ids), in both engines.

A Qwen2.5 *base* model's tokenizer EOS is ``<|endoftext|>`` while its chat turns end with
``<|im_end|>``. The tiny model here is set up the same way: its tokenizer's EOS is the
document end, its generation config lists both ids, and its ``<|im_end|>`` is made likely, so
replies stop at the turn end (and would run on past it if only the EOS stopped them).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sft2rl import rollout
from sft2rl.generation import encode_prompts, generate, response_mask, stop_token_ids, turn_end_token_id

PROMPTS = [[{"role": "user", "content": q}] for q in (
    "What is 3 plus 9?", "What is the capital of Norland?", "Who founded it?", "hi",
    "What is the river of the country whose capital is the city you named before?", "What is 8 plus 8?")]
NEW = 24


def _load(tiny_base):
    from sft2rl.model import load_model

    return load_model(str(tiny_base), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def base_like(tiny_base):
    """The tiny model as a Qwen2.5 base: EOS (and pad) ``<|endoftext|>``, generation config
    ``eos_token_id = [<|endoftext|>, <|im_end|>]``; weights redrawn at std 0.3 (varied text) and
    the ``<|im_end|>`` embedding (tied to its logit) scaled up, so rows end at the turn end."""
    model, tok = _load(tiny_base)
    doc_end, turn_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    tok.eos_token = "<|endoftext|>"
    assert tok.eos_token_id == doc_end == tok.pad_token_id != turn_end
    model.generation_config.eos_token_id = [doc_end, turn_end]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.get_input_embeddings().weight[turn_end] *= 2.5
    return model.eval(), tok, doc_end, turn_end


def _first_stop(row: torch.Tensor, stops: list[int]) -> int | None:
    hits = [i for i, t in enumerate(row.tolist()) if t in stops]
    return hits[0] if hits else None


def _check_stops_at_turn_end(gen, tok, stops, turn_end):
    """Each row: mask 1 up to and including its first stop id, pad after, text = the tokens before."""
    ended = 0
    for row, m, text in zip(gen.response_ids, gen.response_mask, gen.texts):
        k = _first_stop(row, stops)
        length = int(m.sum())
        if k is None:
            assert length == row.shape[0]
            continue
        ended += int(row[k] == turn_end)
        assert length == k + 1 and m[:k + 1].all() and not m[k + 1:].any()
        assert (row[k + 1:] == tok.pad_token_id).all()  # nothing after the turn end
        assert text == tok.decode(row[:k], skip_special_tokens=True)
    return ended


# ------------------------------------------------------------------ stop_token_ids
def test_stop_token_ids_of_the_tiny_model_is_its_one_eos(tiny_base):
    """The default tiny model: the only stop id is its EOS <|im_end|>, as before (GRPO unchanged)."""
    model, tok = _load(tiny_base)
    turn_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == turn_end and turn_end_token_id(tok) == turn_end
    assert stop_token_ids(model, tok) == [turn_end]
    # what build_base saves: a generation config that lists the turn end
    saved = json.loads((tiny_base / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [turn_end]


@pytest.mark.parametrize("gen_eos, expected", [
    (None, ["<|endoftext|>", "<|im_end|>"]),                       # none: the template's turn end still counts
    ("<|endoftext|>", ["<|endoftext|>", "<|im_end|>"]),            # an int
    (["<|im_end|>", "<|endoftext|>"], ["<|endoftext|>", "<|im_end|>"]),  # a list, tokenizer EOS first
    (["<|im_start|>"], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),  # union, no duplicates
])
def test_stop_token_ids_is_the_union(tiny_base, gen_eos, expected):
    _, tok = _load(tiny_base)
    tok.eos_token = "<|endoftext|>"
    ids = tok.convert_tokens_to_ids
    value = None if gen_eos is None else (ids(gen_eos) if isinstance(gen_eos, str) else [ids(t) for t in gen_eos])
    cfg = SimpleNamespace(eos_token_id=value)
    assert stop_token_ids(None, tok, cfg) == [ids(t) for t in expected]
    assert stop_token_ids(SimpleNamespace(generation_config=cfg), tok) == [ids(t) for t in expected]
    assert stop_token_ids(None, tok, None) == [ids("<|endoftext|>"), ids("<|im_end|>")]


def test_turn_end_from_other_chat_templates(tiny_base):
    _, tok = _load(tiny_base)
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>", "<end_of_turn>"]})
    llama = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n\n{{ m['content'] | trim }}<|eot_id|>"
             "{% endfor %}")
    gemma = "{% for m in messages %}<start>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    for template, token in ((llama, "<|eot_id|>"), (gemma, "<end_of_turn>")):
        tok.chat_template = template
        assert turn_end_token_id(tok) == tok.convert_tokens_to_ids(token)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # nothing closes a turn
    assert turn_end_token_id(tok) is None
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<think>{% endfor %}"  # not a special token
    assert turn_end_token_id(tok) is None
    tok.chat_template = None
    assert turn_end_token_id(tok) is None
    assert stop_token_ids(None, tok, None) == [tok.eos_token_id]


def test_response_mask_takes_several_stop_ids():
    ids = torch.tensor([[5, 7, 2, 9, 0], [5, 0, 2, 9, 9], [5, 6, 7, 8, 9]])
    assert response_mask(ids, [2, 0]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert response_mask(ids, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert torch.equal(response_mask(ids, 2), response_mask(ids, [2]))


# ------------------------------------------------------------------ both engines stop at the turn end
@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("engine", ["lean", "hf"])
def test_generate_stops_at_the_turn_end(base_like, engine, do_sample):
    model, tok, doc_end, turn_end = base_like
    stops = stop_token_ids(model, tok)
    assert stops == [doc_end, turn_end]
    gen = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=do_sample, temperature=1.0,
                   num_return_sequences=3 if do_sample else 1, seed=3, engine=engine)
    ended = _check_stops_at_turn_end(gen, tok, stops, turn_end)
    assert ended >= 2, "some rows end at <|im_end|> before max_new_tokens"
    assert (gen.response_mask.sum(1) < NEW).sum() >= 2


@pytest.mark.parametrize("engine", ["lean", "hf"])
def test_cut_replies_are_marked_and_texts_end_before_the_stop(base_like, engine):
    """Generated.cut marks exactly the replies that reached max_new_tokens without a stop id;
    a reply's text ends before its stop id, also where a model lists an ordinary token among
    its stops (the text then used to end with that token)."""
    from collections import Counter

    model, tok, doc_end, turn_end = base_like
    first = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=True, num_return_sequences=4, seed=3,
                     engine=engine)
    special = set(tok.all_special_ids)
    ordinary = Counter(t for t in first.response_ids.flatten().tolist() if t not in special).most_common(1)[0][0]
    gc = model.generation_config
    saved = gc.eos_token_id
    gc.eos_token_id = [doc_end, ordinary]
    try:
        stops = stop_token_ids(model, tok)
        assert ordinary in stops
        gen = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=True, num_return_sequences=4, seed=3,
                       engine=engine)
    finally:
        gc.eos_token_id = saved
    at_ordinary = 0
    for row, text, cut in zip(gen.response_ids, gen.texts, gen.cut.tolist()):
        k = _first_stop(row, stops)
        assert cut == (k is None)
        if k is None:
            assert int((row != tok.pad_token_id).sum()) == NEW
            k = NEW
        else:
            at_ordinary += int(row[k]) == ordinary
        assert text == tok.decode(row[:k], skip_special_tokens=True)
    assert at_ordinary >= 1 and gen.cut.any() and not gen.cut.all()


def test_engines_agree_and_eos_alone_runs_on(base_like):
    """Greedy: both engines give the same tokens at every stop id; sampled with match_generate,
    the same tokens as generate(eos_token_id=list) for the same seed. Stopping at the EOS alone
    (the old behaviour) runs past the turn end."""
    model, tok, doc_end, turn_end = base_like
    stops = stop_token_ids(model, tok)
    lean = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=False, engine="lean")
    hf = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=False, engine="hf")
    assert lean.texts == hf.texts and torch.equal(lean.response_mask, hf.response_mask)
    assert torch.equal(lean.response_ids, hf.response_ids[:, :lean.response_ids.shape[1]])

    ids, mask = encode_prompts(tok, PROMPTS, None, "cpu")
    n = 2
    torch.manual_seed(5)
    ours, _ = rollout.decode(model, ids, mask, max_new_tokens=NEW, stop_token_ids=stops, pad_token_id=tok.pad_token_id,
                             do_sample=True, num_return_sequences=n, match_generate=True)
    torch.manual_seed(5)
    with torch.no_grad():
        ref = model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                             max_new_tokens=NEW, do_sample=True, top_k=0, temperature=1.0, top_p=1.0,
                             pad_token_id=tok.pad_token_id, eos_token_id=stops)[:, ids.shape[1]:]
    ref = ref.masked_fill(response_mask(ref, stops) == 0, tok.pad_token_id)
    assert torch.equal(ours, ref[:, :ours.shape[1]]) and (ref[:, ours.shape[1]:] == tok.pad_token_id).all()

    old, _ = rollout.decode(model, ids, mask, max_new_tokens=NEW, stop_token_ids=[doc_end],
                            pad_token_id=tok.pad_token_id, do_sample=False)
    ran_on = [r for r in old if (k := _first_stop(r, [turn_end])) is not None and k < NEW - 1
              and (r[k + 1:] != tok.pad_token_id).any()]
    assert ran_on, "with the EOS alone some replies continue after <|im_end|>"


def test_the_hf_engine_applies_none_of_the_models_own_generation_settings(base_like):
    """A model whose generation config carries a repetition penalty and an n-gram ban (as
    Qwen2.5-Instruct's carries repetition_penalty 1.05): model.generate runs with our settings
    only, so greedy tokens equal the lean engine's, and the model's config is left as it was."""
    model, tok, _, _ = base_like
    gc = model.generation_config
    old = (gc.repetition_penalty, gc.no_repeat_ngram_size)
    gc.repetition_penalty, gc.no_repeat_ngram_size = 1.5, 2
    try:
        lean = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=False, engine="lean")
        hf = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=False, engine="hf")
        assert lean.texts == hf.texts
        with torch.no_grad():  # what generate() does with the model's own settings: other text
            ids, mask = encode_prompts(tok, PROMPTS, None, "cpu")
            own = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=stop_token_ids(model, tok))
        assert not torch.equal(own[:, ids.shape[1]:][:, :lean.response_ids.shape[1]], lean.response_ids)
        assert (model.generation_config.repetition_penalty, model.generation_config.no_repeat_ngram_size) == (1.5, 2)
    finally:
        gc.repetition_penalty, gc.no_repeat_ngram_size = old


def test_reply_policy_stops_at_the_turn_end(base_like):
    """The games' players and the medical doctor (generation.reply_policy) get the same stops."""
    from sft2rl.generation import reply_policy

    model, tok, _, turn_end = base_like
    act = reply_policy(model, tok, max_new_tokens=NEW, do_sample=False, temperature=1.0, seed=0, batch_size=4)
    direct = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=False)
    assert act(None, PROMPTS) == direct.texts
    # the policy counts its replies and those cut at the limit (the evaluations' replies_cut)
    from sft2rl.generation import cut_share

    assert act.counts == {"replies": len(PROMPTS), "cut": int(direct.cut.sum())}
    short = reply_policy(model, tok, max_new_tokens=2, do_sample=False, temperature=1.0, seed=0, batch_size=4)
    short(None, PROMPTS)
    cut = int(generate(model, tok, PROMPTS, max_new_tokens=2, do_sample=False).cut.sum())
    assert cut > int(direct.cut.sum()) and cut_share(short) == cut / len(PROMPTS)
    since = dict(short.counts)
    short(None, PROMPTS[:2])
    assert short.counts["replies"] == len(PROMPTS) + 2 and cut_share(short, since) is not None
    assert cut_share(lambda items, prompts: []) is None  # a scripted policy has no token limit
    # top_p reaches the sampler (the medical sampled evaluation's nucleus): a nucleus of one
    # token replies greedily, the full distribution does not
    nucleus = reply_policy(model, tok, max_new_tokens=NEW, do_sample=True, temperature=1.0, seed=0, batch_size=4,
                           top_p=1e-6)
    full = reply_policy(model, tok, max_new_tokens=NEW, do_sample=True, temperature=1.0, seed=0, batch_size=4)
    assert nucleus(None, PROMPTS) == direct.texts and full(None, PROMPTS) != direct.texts


def test_prompts_as_token_ids_generate_as_their_chats(base_like):
    """A prompt given as token ids (a conversation's tokens, sft2rl.chat_tokens) is left-padded
    as the rendered chats are: the chat's own ids draw the same replies; a policy given its
    items answers their first prompts as the chats."""
    from sft2rl.chat_tokens import chat_ids
    from sft2rl.generation import reply_policy

    model, tok, _, _ = base_like
    ids = [chat_ids(tok, p) for p in PROMPTS]
    assert len({len(x) for x in ids}) > 1  # left padding is exercised
    a = generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=True, seed=3)
    b = generate(model, tok, ids, max_new_tokens=NEW, do_sample=True, seed=3)
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    with pytest.raises(ValueError, match="max_prompt_length"):
        generate(model, tok, ids, max_new_tokens=NEW, do_sample=False, max_prompt_length=min(map(len, ids)))
    act = reply_policy(model, tok, max_new_tokens=NEW, do_sample=False, temperature=1.0, seed=0, batch_size=4)
    items = [object() for _ in PROMPTS]
    assert act(items, PROMPTS) == generate(model, tok, PROMPTS, max_new_tokens=NEW, do_sample=False).texts


def test_decode_takes_one_stop_argument(base_like):
    model, tok, _, _ = base_like
    ids, mask = encode_prompts(tok, PROMPTS[:2], None, "cpu")
    kw = dict(max_new_tokens=4, pad_token_id=tok.pad_token_id, do_sample=False)
    a, _ = rollout.decode(model, ids, mask, eos_token_id=tok.eos_token_id, **kw)
    b, _ = rollout.decode(model, ids, mask, stop_token_ids=[tok.eos_token_id], **kw)
    assert torch.equal(a, b)
    with pytest.raises(TypeError):
        rollout.decode(model, ids, mask, **kw)
    with pytest.raises(TypeError):
        rollout.decode(model, ids, mask, eos_token_id=1, stop_token_ids=[1], **kw)
