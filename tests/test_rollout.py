"""The lean decode loop (sft2rl.rollout) against transformers' ``generate``: exactness, not speed."""
import pytest
import torch

from sft2rl import rollout
from sft2rl.generation import encode_prompts, generate
from sft2rl.grpo import response_logprobs

PROMPTS = [[{"role": "user", "content": q}] for q in (
    "What is 3 plus 9?", "What is the capital of Norland?", "Who founded it?", "hi",
    "What is the river of the country whose capital is the city you named before?", "What is 8 plus 8?")]


def _eos_model(tiny_base, std: float = 0.3, eos_scale: float = 2.0):
    """The tiny base with every weight matrix drawn again at std 0.3 (the untrained model repeats
    one token) and its EOS embedding doubled: greedy rows of varied text, some stopping early."""
    from sft2rl.model import load_model

    model, tok = load_model(str(tiny_base), torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
        model.get_input_embeddings().weight[tok.eos_token_id] *= eos_scale
    return model.eval(), tok


def _hf(model, tok, ids, mask, seed=None, **kw):
    if seed is not None:
        torch.manual_seed(seed)
    sample = kw.get("do_sample", False)
    extra = dict(temperature=kw.pop("temperature", 1.0), top_p=kw.pop("top_p", 1.0), top_k=0) if sample else {}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, **kw, **extra)[:, ids.shape[1]:]
    eos = out == tok.eos_token_id
    return out.masked_fill((eos.cumsum(1) - eos.long()) > 0, tok.pad_token_id)


def _lean(model, tok, ids, mask, seed=None, n=1, **kw):
    """The engine on the distinct prompts of a ``_batch`` (every ``n``-th row), ``n`` rows each."""
    if seed is not None:
        torch.manual_seed(seed)
    return rollout.decode(model, ids[::n], mask[::n], eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          num_return_sequences=n, **kw)


def _batch(tok, n=4):
    """Each prompt repeated ``n`` times, as GRPO's groups (what ``generate`` is given)."""
    ids, mask = encode_prompts(tok, PROMPTS, None, "cpu")
    return ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)


def _resp_mask(ids, eos):
    e = ids == eos
    return (~((e.cumsum(1) - e.long()) > 0)).long()


@pytest.fixture(scope="module")
def eos_model(tiny_base):
    return _eos_model(tiny_base)


def test_supported_architectures(eos_model):
    from transformers import GPT2Config, GPT2LMHeadModel

    model, _ = eos_model
    assert rollout.supports(model)
    assert not rollout.supports(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)))


def test_greedy_tokens_identical_to_generate(eos_model):
    model, tok = eos_model
    ids, mask = _batch(tok, 1)
    ref = _hf(model, tok, ids, mask, max_new_tokens=40, do_sample=False)
    out, lp = _lean(model, tok, ids, mask, max_new_tokens=40, do_sample=False)
    lengths = _resp_mask(out, tok.eos_token_id).sum(1)
    assert lengths.min() < 40 and lengths.max() == 40, "the test needs rows that stop early and rows that do not"
    assert torch.equal(out, ref[:, :out.shape[1]]) and (ref[:, out.shape[1]:] == tok.pad_token_id).all()
    assert (mask.sum(1).unique().numel() > 1), "prompts of different lengths: left padding is exercised"


def test_shared_instruction_is_prefilled_once_with_the_same_tokens(eos_model, monkeypatch):
    """Prompts that start with the same instruction (the games' and the doctor's) prefill it once:
    greedy tokens stay those of ``generate``; sampled tokens and log-probs those of the engine
    without the shared prefill, for groups of n rows per prompt."""
    model, tok = eos_model
    system = {"role": "system", "content": "You play a game. Read the grid, then answer with one action "
                                           "between answer tags and nothing else. Rewards follow."}
    prompts = [[system, *p] for p in PROMPTS]
    ids, mask = encode_prompts(tok, prompts, None, "cpu")
    c = rollout.shared_prompt_prefix(ids, mask)
    assert c >= rollout.MIN_SHARED_PROMPT and mask.sum(1).unique().numel() > 1
    ref = _hf(model, tok, ids, mask, max_new_tokens=30, do_sample=False)
    out, lp = _lean(model, tok, ids, mask, max_new_tokens=30, do_sample=False)
    assert torch.equal(out, ref[:, :out.shape[1]]) and (ref[:, out.shape[1]:] == tok.pad_token_id).all()
    rids, rmask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    shared = _lean(model, tok, rids, rmask, seed=3, n=3, max_new_tokens=30, do_sample=True, temperature=0.8)
    monkeypatch.setattr(rollout, "MIN_SHARED_PROMPT", 10**6)
    assert rollout.shared_prompt_prefix(ids, mask) == 0
    plain = _lean(model, tok, rids, rmask, seed=3, n=3, max_new_tokens=30, do_sample=True, temperature=0.8)
    assert torch.equal(shared[0], plain[0])
    assert torch.allclose(shared[1], plain[1], atol=1e-5)
    assert rollout.shared_prompt_prefix(ids[:1], mask[:1]) == 0


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_sampled_tokens_identical_to_generate_for_the_same_seed(eos_model, temperature, top_p):
    """In match_generate mode the engine draws from the RNG exactly as generate does
    (each prompt prefilled once, its cache shared by its n rows)."""
    model, tok = eos_model
    ids, mask = _batch(tok)
    kw = dict(max_new_tokens=32, do_sample=True, temperature=temperature, top_p=top_p)
    ref = _hf(model, tok, ids, mask, seed=11, **kw)
    out, _ = _lean(model, tok, ids, mask, seed=11, n=4, match_generate=True, **kw)
    assert torch.equal(out, ref[:, :out.shape[1]]) and (ref[:, out.shape[1]:] == tok.pad_token_id).all()
    other, _ = _lean(model, tok, ids, mask, seed=12, n=4, match_generate=True, **kw)
    assert not torch.equal(other, out), "a different seed draws different tokens"


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_match_a_fresh_forward(eos_model, temperature):
    """The fast mode (finished rows dropped, inverse-CDF draws) samples other tokens than
    generate, from the same model: every token's log-prob is the model's, under
    logits / temperature, to 2e-5 (relative where |log p| > 1: this model's logits are
    large, and fp32 rounding of a log-prob of -9 is already ~1e-6; at temperature 0.6 the
    largest relative difference measured was 1.5e-5)."""
    model, tok = eos_model
    ids, mask = _batch(tok)
    out, lp = _lean(model, tok, ids, mask, seed=3, n=4, max_new_tokens=48, do_sample=True, temperature=temperature)
    rmask = _resp_mask(out, tok.eos_token_id)
    assert rmask.sum(1).min() < out.shape[1], "some rows stopped early (compaction ran)"
    with torch.no_grad():
        ref, _ = response_logprobs(model, ids, mask, out, rmask, temperature)
    assert float(((ref - lp).abs() / ref.abs().clamp(min=1) * rmask).max()) < 2e-5
    assert (lp[rmask == 0] == 0).all() and (out[rmask == 0] == tok.pad_token_id).all()


def test_lora_policy(eos_model):
    """A peft-wrapped policy (LoRA GRPO) runs through the same loop, adapter included."""
    from peft import LoraConfig, get_peft_model

    base, tok = eos_model
    import copy

    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # a trained adapter, not the zero init
    model.eval()
    assert rollout.supports(model)
    ids, mask = _batch(tok, 2)
    ref = _hf(model, tok, ids, mask, max_new_tokens=24, do_sample=False)
    out, _ = _lean(model, tok, ids, mask, max_new_tokens=24, do_sample=False)
    assert torch.equal(out, ref[:, :out.shape[1]])
    base_out, _ = _lean(base, tok, ids, mask, max_new_tokens=24, do_sample=False)
    assert not torch.equal(base_out, out), "the adapter changes the tokens"
    out, lp = _lean(model, tok, ids, mask, seed=5, max_new_tokens=24, do_sample=True)
    rmask = _resp_mask(out, tok.eos_token_id)
    with torch.no_grad():
        ref_lp, _ = response_logprobs(model, ids, mask, out, rmask, 1.0)
    assert float(((ref_lp - lp).abs() * rmask).max()) < 1e-5


def test_generate_uses_the_engine_and_falls_back(eos_model):
    model, tok = eos_model
    lean = generate(model, tok, PROMPTS, max_new_tokens=20, do_sample=False)
    hf = generate(model, tok, PROMPTS, max_new_tokens=20, do_sample=False, engine="hf")
    assert lean.logprobs is not None and hf.logprobs is None
    assert lean.texts == hf.texts and torch.equal(lean.response_mask, hf.response_mask)
    with pytest.raises(ValueError, match="engine must be"):
        generate(model, tok, PROMPTS, max_new_tokens=4, do_sample=False, engine="vllm")


def test_bf16_autocast_logprobs_are_as_close_as_the_forward(eos_model):
    """Under bf16 autocast (a bf16 GPU's rollouts) the engine's log-probs are as far from the
    fp32 values as bf16's own training forward is (no error of the engine's making)."""
    model, tok = eos_model
    ids, mask = _batch(tok, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lp = _lean(model, tok, ids, mask, seed=1, n=2, max_new_tokens=16, do_sample=True)
        rmask = _resp_mask(out, tok.eos_token_id)
        with torch.no_grad():
            fwd_bf16, _ = response_logprobs(model, ids, mask, out, rmask, 1.0)
    with torch.no_grad():
        fp32, _ = response_logprobs(model, ids, mask, out, rmask, 1.0)
    err = lambda x: float(((x - fp32).abs() * rmask).sum() / rmask.sum())  # noqa: E731
    assert err(fwd_bf16) > 0, "bf16 ran"
    assert err(lp) < 2 * err(fwd_bf16) + 1e-3


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_fast_sampler_draws_from_the_model_distribution(top_p):
    """The inverse-CDF draw (the fast mode's) against the distribution multinomial samples from:
    a chi-square test on 40,000 draws, and top-p's removed tokens never drawn."""
    from scipy.stats import chisquare

    torch.manual_seed(0)
    logits = torch.randn(1, 12) * 1.5
    torch.manual_seed(1)
    draws = torch.cat([rollout._sample(logits.expand(4000, -1), True, 1.0, top_p, False) for _ in range(10)])
    counts = torch.bincount(draws, minlength=12).double()
    # the target: generate's warpers applied to the logits (temperature 1, then top-p)
    from transformers.generation.logits_process import TopPLogitsWarper

    scores = TopPLogitsWarper(top_p)(None, logits.clone()) if top_p < 1 else logits
    probs = torch.softmax(scores, dim=-1)[0].double()
    keep = probs > 0
    assert counts[~keep].sum() == 0
    expected = probs[keep] / probs[keep].sum() * counts.sum()
    assert chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 1e-3
    if top_p < 1:
        assert (~keep).any(), "top-p removed some tokens"


def test_a_carried_cache_prefills_only_the_new_tokens_with_the_same_tokens(eos_model, monkeypatch):
    """Multi-turn: each row's cache from one turn (its prompt and the reply tokens that went
    through the model) is carried to the next, whose prompt continues it with new tokens (the
    reply's end and an observation, of different lengths per row): only the new tokens are
    prefilled, and the next replies are those of a decode from scratch (greedy tokens equal,
    log-probs to 1e-5). A row without a cache, or whose cache is not its prompt's start, is
    prefilled whole in the same call."""
    model, tok = eos_model
    ids, mask = _batch(tok, 1)
    kw = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=12, do_sample=False)
    caches: list = []
    out, _ = rollout.decode(model, ids, mask, caches_out=caches, **kw)
    assert len(caches) == len(PROMPTS) and all(c is not None for c in caches)
    nxt = []
    for i, c in enumerate(caches):
        prompt = ids[i][mask[i].bool()].tolist()
        reply = out[i][_resp_mask(out[i:i + 1], tok.eos_token_id)[0].bool()].tolist()
        assert c.ids == prompt + reply[:len(c.ids) - len(prompt)] and len(c.ids) >= len(prompt) + len(reply) - 1
        assert c.k[0].shape[1] == len(c.ids)
        obs = tok.encode(" and then" * (i % 3 + 1), add_special_tokens=False)
        nxt.append(prompt + reply + obs)
    width = max(map(len, nxt))
    ids2 = torch.full((len(nxt), width), tok.pad_token_id)
    mask2 = torch.zeros((len(nxt), width), dtype=torch.long)
    for i, p in enumerate(nxt):
        ids2[i, width - len(p):], mask2[i, width - len(p):] = torch.tensor(p), 1
    fresh, fresh_lp = rollout.decode(model, ids2, mask2, **kw)
    prefilled = []
    real = rollout._forward
    monkeypatch.setattr(rollout, "_forward", lambda m, x, *a, **k: prefilled.append(x.shape[1]) or real(m, x, *a, **k))
    past = list(caches)
    past[1] = None                                     # no cache: prefilled whole
    past[2] = rollout.RowCache([7] + caches[2].ids[1:], caches[2].k, caches[2].v)  # not its prompt's start
    again, again_lp = rollout.decode(model, ids2, mask2, past=past, **kw)
    assert torch.equal(again, fresh) and torch.allclose(again_lp, fresh_lp, atol=1e-5)
    rest = [len(p) - (0 if i in (1, 2) else len(c.ids)) for i, (p, c) in enumerate(zip(nxt, caches))]
    assert prefilled[0] == max(rest) == max(len(nxt[1]), len(nxt[2]))  # rows 1 and 2: their whole prompt
    prefilled.clear()
    carried, carried_lp = rollout.decode(model, ids2, mask2, past=caches, **kw)
    assert torch.equal(carried, fresh) and torch.allclose(carried_lp, fresh_lp, atol=1e-5)
    new = max(len(p) - len(c.ids) for p, c in zip(nxt, caches))
    assert prefilled[0] == new < width // 2  # the window of the longest new part only

    # preallocated cache memory may hold anything, NaN included: the slots left of the window
    # (left padding) must not reach a row's attention (a masked key still multiplies its value)
    init = rollout._Cache.__init__

    def nan_init(self, *a, **k):
        init(self, *a, **k)
        for t in self.k + self.v:
            t.fill_(float("nan"))

    monkeypatch.setattr(rollout._Cache, "__init__", nan_init)
    for past in (None, caches):
        got, got_lp = rollout.decode(model, ids2, mask2, past=past, **kw)
        assert torch.equal(got, fresh) and torch.allclose(got_lp, fresh_lp, atol=1e-5)
