"""Base models: build the embedded tiny Qwen2 model from the world corpus, load any model.

The tiny tokenizer is a byte-level BPE with Qwen2's own pre-tokenizer (its regex, NFC),
so transformers rebuilding it as a Qwen2 tokenizer on reload changes nothing. The chat
tokens are special; the four tags are added tokens that are *not* special, so decoding
with ``skip_special_tokens=True`` keeps them. The tiny model's EOS is the chat turn's end
``<|im_end|>``, and its saved ``generation_config.json`` lists exactly its stop ids
(:func:`sft2rl.generation.stop_token_ids`: that one id), so every engine, vLLM included,
stops a reply where its turn ends.
"""
from __future__ import annotations

import contextlib
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from . import TAG_TOKENS
from .io import atomic_dir, write_json
from .logutil import LOG

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 otherwise (CPU)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def has_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def pretrain_precision(device: torch.device, requested: str, what: str = "pretraining") -> str:
    """The training precision actually used (pretraining; SFT with ``what='SFT'``): ``fp32``;
    ``bf16`` (autocast, fp32 master weights) where the device has native bf16 and it was asked
    for (``bf16``) or allowed (``auto``); fp32 otherwise. Part of the run's log."""
    if requested not in ("fp32", "bf16", "auto"):
        raise ValueError(f"{what} precision must be fp32, bf16 or auto, got {requested!r}")
    if requested != "fp32" and has_bf16(device):
        return "bf16"
    if requested == "bf16":
        LOG.warning("%s precision bf16 asked for, but %s has no native bf16: fp32", what, device)
    return "fp32"


def autocast(device: torch.device, used: str):
    """The context a forward pass runs in at precision ``used`` (:func:`pretrain_precision`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if used == "bf16" else contextlib.nullcontext()


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def build_tokenizer(texts: list[str], vocab_size: int, added_tokens: tuple[str, ...] = TAG_TOKENS):
    """Train the byte-level BPE on ``texts`` (special and added tokens split out first)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(added_tokens), special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )

    def plain(text: str) -> str:
        for special in SPECIAL_TOKENS + list(added_tokens):
            text = text.replace(special, "\n")
        return text

    tok.train_from_iterator((plain(t) for t in texts), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(tokenizer, arch: dict[str, Any]):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_kv_heads"],
        max_position_embeddings=arch["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg)
    from .generation import stop_token_ids

    # the saved generation config lists every stop id (vLLM, model.generate and the lean engine agree)
    model.generation_config.eos_token_id = stop_token_ids(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config._from_model_config = False  # ours, not to be rebuilt from the model config
    return model


def load_model(path: str, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a causal LM and its tokenizer from a local directory or a hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or pick_device()
    dtype = dtype or train_dtype(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device)
    return model, tokenizer


def attach_lora(model, config):
    """``peft.get_peft_model`` with the adapter's target modules in a fixed (sorted) order.

    PEFT expands ``target_modules: all-linear`` into a set and saves it in the set's order,
    which follows PYTHONHASHSEED: the ``adapter_config.json`` of the same config would differ
    between two runs (the weights do not)."""
    from peft import get_peft_model

    return sort_lora_targets(get_peft_model(model, config))


def sort_lora_targets(model):
    """The target modules of ``model``'s adapters as a sorted list (see :func:`attach_lora`);
    also after ``PeftModel.from_pretrained``, which reads the saved list back into a set."""
    for cfg in model.peft_config.values():
        if isinstance(cfg.target_modules, set):
            cfg.target_modules = sorted(cfg.target_modules)
    return model


def _token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for batch_start in range(0, len(texts), 1024):
        for enc in tokenizer(texts[batch_start:batch_start + 1024], add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
            ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def pretrain(model, tokenizer, texts: list[str], cfg: dict[str, Any], tb_dir: str | None = None,
             device: torch.device | None = None) -> dict[str, float]:
    """Causal-LM pretraining on the packed, shuffled corpus (a fresh shuffle per pass)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    device = device or pick_device()
    used = pretrain_precision(device, cfg.get("precision", "fp32"))
    amp = autocast(device, used)
    LOG.info("pretraining precision: %s (asked: %s)", used, cfg.get("precision", "fp32"))
    set_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    model.to(device).train()
    seq, bsz = cfg["seq_len"], cfg["batch_size"]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, cfg["warmup_steps"], cfg["steps"])
    if tb_dir:
        shutil.rmtree(tb_dir, ignore_errors=True)  # a rerun pretrains from step 0: no stale curve
    writer = SummaryWriter(tb_dir) if tb_dir else None
    order: list[int] = []
    rng = random.Random(cfg["seed"])
    chunks = None
    losses: list[float] = []
    t0, tokens = time.time(), 0
    for step in tqdm(range(cfg["steps"]), desc="pretrain", mininterval=5):
        if len(order) < bsz:
            shuffled = texts[:]
            rng.shuffle(shuffled)
            stream = _token_stream(tokenizer, shuffled)
            n = (len(stream) - 1) // seq
            chunks = stream[: n * seq + 1]
            order = torch.randperm(n, generator=gen).tolist()
        idx, order = order[:bsz], order[bsz:]
        batch = torch.stack([chunks[i * seq: i * seq + seq + 1] for i in idx]).to(device)
        with amp:
            logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = sched.get_last_lr()[0]  # the rate this step trains at
        opt.step()
        sched.step()
        tokens += batch[:, 1:].numel()  # the trained positions: seq_len per row (a row holds seq_len + 1 ids)
        losses.append(loss.item())
        if writer:
            writer.add_scalar("pretrain/loss", loss.item(), step)
            writer.add_scalar("pretrain/lr", lr, step)
            writer.add_scalar("pretrain/grad_norm", float(gnorm), step)
            writer.add_scalar("pretrain/tokens_per_s", tokens / (time.time() - t0), step)
    if writer:
        writer.close()
    elapsed = time.time() - t0
    tail = losses[-20:]
    return {"final_loss": sum(tail) / len(tail), "first_loss": losses[0], "steps": cfg["steps"],
            "seconds": elapsed, "tokens_per_s": tokens / elapsed, "precision": used}


def build_base(corpus_path: str, out_dir: str, tiny: dict[str, Any], pretrain_cfg: dict[str, Any],
               tb_dir: str | None = None, added_tokens: tuple[str, ...] = TAG_TOKENS,
               sft_rows: list[str] | None = None, overlong: str = "error", loss_turns: str = "all") -> dict[str, Any]:
    """Tokenizer + tiny Qwen2 + pretraining, saved atomically as an HF directory. ``sft_rows``:
    the SFT files this base will train on, checked against the pretraining window with the new
    tokenizer before any pretraining (:func:`sft2rl.sft.check_window`)."""
    from .rows import load_corpus

    texts = load_corpus(corpus_path)
    set_seed(pretrain_cfg["seed"])
    tokenizer = build_tokenizer(texts, tiny["vocab_size"], tuple(added_tokens))
    if sft_rows:
        from .sft import check_window

        longest = check_window(tokenizer, sft_rows, pretrain_cfg["seq_len"], overlong, loss_turns)
        LOG.info("SFT rows against the pretraining window of %d tokens: longest %s", pretrain_cfg["seq_len"], longest)
    model = build_tiny_model(tokenizer, tiny)
    n_params = sum(p.numel() for p in model.parameters())
    LOG.info("tiny Qwen2: %d parameters, vocab %d", n_params, len(tokenizer))
    stats = pretrain(model, tokenizer, texts, pretrain_cfg, tb_dir)
    # seq_len: the pretraining window, which the SFT job checks its rows against (sft2rl.sft.pretrain_window)
    stats.update({"parameters": n_params, "vocab_size": len(tokenizer), "seq_len": pretrain_cfg["seq_len"]})
    LOG.info("pretraining: %s", stats)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "pretrain_metrics.json", stats)
    return stats

