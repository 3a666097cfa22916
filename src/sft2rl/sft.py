"""SFT, local backend: transformers + peft with our own training loop.

``sft.train_mode``: ``lora`` (the default; each checkpoint is a peft adapter) or ``full``
(every weight trains; each checkpoint is a whole HF model, what suits a tiny base whose
adapters cannot reach the capacity a policy needs). :func:`sft2rl.merge.merge_adapter`
exports either, verified.

A killed job resumes: after each epoch the run's full training state (trainable weights,
optimizer, scheduler, data-order and torch RNG states, history) is saved under
``<run>/resume/`` with the run's content key (:func:`sft_run_key`: base weights, data bytes,
package source, parameters, library versions). ``resume/`` is not an output Snakemake
deletes, so the rerun of a killed job (``--rerun-incomplete``) continues after the last
finished epoch, to the same numbers as an uninterrupted run; any other key starts from
epoch 0. When the job finishes, the epoch checkpoints move to ``<run>/checkpoints/`` and
``resume/`` is removed (a finished job that Snakemake reruns trains from epoch 0).

Loss is computed on assistant tokens only, for every assistant turn of a multi-turn
conversation (``loss_turns: all``) or its last one (``last``: the games' and the medical
rows). Assistant spans are found by rendering the chat template on growing prefixes of the
conversation: every turn's needs a prefix-stable template (ours, Qwen2.5's); the last
turn's also works with Qwen3's, which renders earlier assistant turns without their think
block.

No row is cut: a row (train or val) longer than the length limit, the smallest of
``sft.max_length``, the model's positions (``max_position_embeddings``) and, for a base that
records it, its pretraining window (``pretrain_metrics.json`` ``seq_len``, the tiny bases),
stops the job before anything is written, with a DataError naming the file, the row, its
length and the limit (``sft.overlong: error``, the default); ``sft.overlong: drop`` leaves such
rows out, logged and counted in metrics.json and run_log.json (``overlong_rows``; metrics.json
also records ``length_limit`` and ``longest_row``, the longest row trained on).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError, DataError
from .io import atomic_dir, read_parquet_rows, write_json
from .logutil import LOG
from .model import attach_lora, autocast, load_model, pick_device, pretrain_precision, set_seed

IGNORE = -100


def assistant_char_spans(tokenizer, messages: list[dict[str, str]],
                         last_only: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (with
    ``last_only``, of the final one only: the rendering of the turns before it with the
    generation prompt, then the rest). Every turn's span needs a template whose rendering of
    each prefix of the conversation begins the whole one; Qwen3's is not (it renders an
    earlier assistant turn without the think block it gives the last one), but its last turn
    is found all the same."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or (last_only and i != len(messages) - 1):
            continue
        start_text = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        end_text = full if i == len(messages) - 1 else tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise ValueError("chat template is not prefix-stable: cannot locate the assistant turns for loss "
                             "masking" + ("" if last_only else " (with loss on the last turn only, as the games' "
                                          "and the medical rows train, a template such as Qwen3's works)"))
        spans.append((len(start_text), len(end_text)))
    return full, spans


def encode_conversation(tokenizer, messages: list[dict[str, str]], max_length: int,
                        loss_turns: str = "all") -> dict[str, Any]:
    """input_ids and labels (IGNORE outside the trained assistant turns), cut to max_length;
    ``length`` is the row's full length and ``truncated`` whether it was cut (:func:`train_sft`
    never trains on a cut row: see :func:`length_limit`).

    ``loss_turns``: ``all`` trains every assistant turn; ``last`` only the final one (the
    prompt/response rows of the games and the medical task: earlier turns are context).
    """
    if loss_turns not in ("all", "last"):
        raise ValueError(f"loss_turns {loss_turns!r}: expected all or last")
    if loss_turns == "last" and messages[-1]["role"] != "assistant":
        raise ValueError("loss_turns 'last': the conversation does not end with an assistant turn")
    text, spans = assistant_char_spans(tokenizer, messages, last_only=loss_turns == "last")
    # Each trained reply starts a new tokenization, as in play: the prompt (with the assistant
    # header) is tokenized alone and the reply's tokens follow it, so no token merges the
    # header's newline with a reply's leading whitespace, and the row's tokens before a reply
    # are the generation prompt's (the same tokens as one pass wherever nothing merges across)
    bounds = [0, *sorted({s for s, _ in spans if 0 < s < len(text)}), len(text)]
    ids, offsets = [], []
    for a, b in zip(bounds, bounds[1:]):
        enc = tokenizer(text[a:b], add_special_tokens=False, return_offsets_mapping=True)
        ids += enc["input_ids"]
        offsets += [(s + a, e + a) for s, e in enc["offset_mapping"]]
    labels = [
        tok if any(s <= start and end <= e for s, e in spans) and end > start else IGNORE
        for tok, (start, end) in zip(ids, offsets)
    ]
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated,
            "length": len(ids)}


#: config ``sft.lr_scheduler`` -> transformers' scheduler. ``constant`` warms up over
#: ``warmup_ratio`` as verl's does (transformers' own "constant" ignores the warmup steps)
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
#: what ``sft.overlong`` allows: stop the job (default) or leave the over-long rows out
OVERLONG = ("error", "drop")
#: written by :func:`sft2rl.model.build_base` into a tiny base's directory
PRETRAIN_INFO = "pretrain_metrics.json"


def pretrain_window(base: str) -> int | None:
    """The pretraining window (tokens) a base directory records (``seq_len`` in its
    pretrain_metrics.json, as the workflow's tiny bases have); None for any other model."""
    path = Path(base) / PRETRAIN_INFO
    if not path.is_file():
        return None
    seq_len = json.loads(path.read_text()).get("seq_len")
    return int(seq_len) if seq_len else None


def length_limit(max_length: int, positions: int | None, window: int | None, base: str) -> tuple[int, str]:
    """The longest row SFT trains on, and what sets it: ``sft.max_length``, the model's
    positions or the base's pretraining window, whichever is smallest."""
    limits = [(max_length, f"sft.max_length = {max_length}")]
    if positions:
        limits.append((positions, f"the model's positions (max_position_embeddings = {positions} of {base})"))
    if window:
        limits.append((window, f"the base's pretraining window (seq_len = {window} in {Path(base) / PRETRAIN_INFO})"))
    return min(limits, key=lambda x: x[0])


def check_window(tokenizer, paths: list[str], window: int, overlong: str, loss_turns: str = "all") -> dict[str, int]:
    """Before a tiny base pretrains: the SFT rows of ``paths`` against its pretraining window
    (``seq_len``), with the tokenizer just built, as the SFT job will check them
    (:func:`check_lengths`: ``overlong: error`` stops here, naming file, row and length, so no
    pretraining is spent on a base SFT would refuse; ``drop`` counts the rows SFT will leave
    out). Returns the longest row per file."""
    longest = {}
    for path in paths:
        rows = read_parquet_rows(path)
        enc = [encode_conversation(tokenizer, r["messages"], window, loss_turns) for r in rows]
        _, over = check_lengths(path, enc, window,
                                f"the pretraining window (games/model pretrain.seq_len = {window})", overlong)
        if over:
            LOG.warning("%s: %d of %d rows are longer than the pretraining window (%d tokens): SFT will leave them "
                        "out (overlong: drop)", path, len(over), len(rows), window)
        longest[str(path)] = max(e["length"] for e in enc)
    return longest


def check_lengths(path: str, encoded: list[dict[str, Any]], limit: int, what: str, overlong: str
                  ) -> tuple[list[dict[str, Any]], list[int]]:
    """The rows of ``path`` that fit in ``limit`` tokens and the (1-based) rows that do not.

    ``overlong: error``: the first row over the limit is a DataError naming the file, the
    row, its length and the limit (and how many rows are over). ``drop``: they are left out."""
    if overlong not in OVERLONG:
        raise ConfigError(f"config key 'sft.overlong' = {overlong!r} is not allowed; allowed values: {list(OVERLONG)}")
    over = [i + 1 for i, e in enumerate(encoded) if e["length"] > limit]
    if over and overlong == "error":
        first = encoded[over[0] - 1]["length"]
        longest = max(encoded[i - 1]["length"] for i in over)
        raise DataError(path, over[0], "messages",
                        f"row {over[0]} is {first} tokens, longer than {what}; {len(over)} of {len(encoded)} rows "
                        f"are over the limit of {limit} tokens (the longest {longest}); nothing is cut: shorten the "
                        f"rows, raise the limit, or set overlong: drop in the run's sft section to leave them out")
    if not over:
        return encoded, over
    kept = [e for e in encoded if e["length"] <= limit]
    if not kept:
        raise DataError(path, None, "messages", f"every row is longer than {what}: nothing left to train on")
    return kept, over


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


#: a shared prefix shorter than this is not worth a second forward pass
MIN_SHARED_PREFIX = 16


def shared_prefix_length(batch: dict[str, torch.Tensor]) -> int:
    """Tokens every row of ``batch`` starts with, up to the position before the first label (the
    prefix's last logits would predict a label otherwise); 0 when the rows share too few, or
    the batch is one row. Rows are right-padded, so a shared prefix is all real tokens."""
    ids, labels = batch["input_ids"], batch["labels"]
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(dim=0) & (batch["attention_mask"] == 1).all(dim=0)
    common = int(same.long().cumprod(0).sum())
    has_label = (labels != IGNORE).any(dim=0).long()
    first_label = int(has_label.argmax()) if bool(has_label.any()) else ids.shape[1]
    n = min(common, first_label - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def masked_lm_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Sum of token losses over assistant tokens, and their count.

    Rows that start with the same tokens (a task's constant instruction, the system turn)
    compute that prefix once: one row's prefix runs first with its keys and values kept,
    every row then runs its own tokens attending to them, and the prefix's gradient is the
    sum over the rows (autograd through the repeated cache). The same loss and gradient as
    one forward pass over the whole rows (tests/test_sft.py), at a fraction of the cost when
    the prefix is most of a row. Off under gradient checkpointing, which keeps no cache.
    """
    target = batch["labels"][:, 1:]
    n = 0 if getattr(model, "is_gradient_checkpointing", False) else shared_prefix_length(batch)
    if n:
        prefix = model(input_ids=batch["input_ids"][:1, :n], use_cache=True).past_key_values
        prefix.batch_repeat_interleave(batch["input_ids"].shape[0])
        logits = model(input_ids=batch["input_ids"][:, n:], attention_mask=batch["attention_mask"],
                       past_key_values=prefix, use_cache=True).logits
        logits, target = logits[:, :-1].float(), target[:, n:]
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, :-1].float()
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE,
                                             reduction="sum")
    return loss, int((target != IGNORE).sum())


def lora_config(lora: dict[str, Any], tokenizer, train_tokens: list[str]):
    from peft import LoraConfig

    ids = []
    for text in train_tokens:  # a token's text ("<think>", "\n\n"); texts that are not one token are skipped
        enc = tokenizer.encode(text, add_special_tokens=False)
        if len(enc) == 1:
            ids.append(enc[0])
    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=lora["target_modules"], task_type="CAUSAL_LM",
        trainable_token_indices=sorted(set(ids)) or None,
    )


def evaluate_loss(model, data: list[dict], micro_batch: int, pad_id: int, device, precision: str = "fp32") -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast(device, precision):
        for i in range(0, len(data), micro_batch):
            batch = {k: v.to(device) for k, v in collate(data[i:i + micro_batch], pad_id).items()}
            loss, n = masked_lm_loss(model, batch)
            total, count = total + loss.item(), count + n
    model.train()
    return total / max(count, 1)


LIBRARIES = ("torch", "transformers", "peft")
STATE_FILE = "training_state.pt"


def sft_run_key(base: str, train_file: str, val_file: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The content key of an SFT run (what must match for a killed run to resume). The base's
    pretraining window is in it too: its file is left out of the model's content (a report), but
    the run reads the length limit from it."""
    from .fingerprint import module_closure, run_key

    return run_key(models={"base": base}, data={"train": train_file, "val": val_file},
                   modules=module_closure(["sft"]), params={**cfg, "pretrain_window": pretrain_window(base)},
                   libraries=LIBRARIES)


def _last_epoch_state(resume_ckpts: Path) -> Path | None:
    done = [p for p in resume_ckpts.glob("epoch_*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def sft_param_dtype(train_mode: str, precision: str) -> torch.dtype:
    """The dtype SFT loads the model in: fp32 for full fine-tuning whatever the autocast (AdamW's
    master weights; in bf16 most small updates round away), and for LoRA's frozen base unless
    it runs under bf16 autocast (then bf16; the adapters stay fp32). Loading in the device's
    bf16 regardless trained full fine-tuning in pure bf16 on a GPU."""
    return torch.bfloat16 if precision == "bf16" and train_mode == "lora" else torch.float32


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A resume checkpoint's training state, on the CPU: the RNG states must be CPU byte
    tensors (``map_location`` of the training device made every resume on a GPU fail), and the
    weights and optimizer state are copied to their parameters' device when restored."""
    return torch.load(path, map_location="cpu", weights_only=False)


def train_sft(base: str, train_file: str, val_file: str, out_dir: str, cfg: dict[str, Any],
              devices: int = 1) -> dict[str, Any]:
    """Train a LoRA adapter; write checkpoints/epoch_<k>/, tensorboard/ and metrics.json in out_dir
    (resuming a killed run of the same content key after its last finished epoch)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    from transformers import get_scheduler

    from .resume import discard_run_dir, prepare_run_dir

    out = Path(out_dir)
    train_mode = cfg.get("train_mode", "lora")
    if train_mode not in ("lora", "full"):
        raise ConfigError(f"config key 'sft.train_mode' = {train_mode!r}: expected lora or full")
    set_seed(cfg["seed"])
    device = pick_device()
    # bf16 autocast over fp32 weights where asked for / allowed and the device has native bf16
    precision = pretrain_precision(device, cfg.get("precision", "fp32"), "SFT")
    param_dtype = sft_param_dtype(train_mode, precision)
    model, tokenizer = load_model(base, device, param_dtype)
    overlong = cfg.get("overlong", "error")
    limit, limit_what = length_limit(cfg["max_length"], getattr(model.config, "max_position_embeddings", None),
                                     pretrain_window(base), base)

    def encode(path: str) -> tuple[list[dict], list[int]]:  # nothing is written before every row is checked
        rows = read_parquet_rows(path)
        enc = [encode_conversation(tokenizer, r["messages"], limit, cfg.get("loss_turns", "all")) for r in rows]
        return check_lengths(path, enc, limit, limit_what, overlong)

    train, over_train = encode(train_file)
    val, over_val = encode(val_file)
    overlong_rows = {"train": len(over_train), "val": len(over_val)}
    for path, over, kept in ((train_file, over_train, train), (val_file, over_val, val)):
        if over:
            LOG.warning("SFT: %s: %d of %d rows are longer than %s and are left out (sft overlong: drop); "
                        "rows %s", path, len(over), len(over) + len(kept), limit_what, over[:20])
    # the precision used joins the key: a run killed on one device never resumes on another
    # that trains in another precision
    guard = prepare_run_dir(out / "resume",
                            sft_run_key(base, train_file, val_file, dict(cfg, precision_used=precision)))
    resume_ckpts = out / "resume" / "checkpoints"
    last = _last_epoch_state(resume_ckpts) if guard["resume"] else None
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if train_mode == "lora":  # full: every weight trains, each checkpoint is a whole model
        model = attach_lora(model, lora_config(cfg["lora"], tokenizer, cfg["train_tokens"]))
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    LOG.info("SFT: %d train rows, %d val rows (longest %d tokens; limit %d: %s; over it and left out: %s); "
             "%d trainable params; precision %s (asked: %s)", len(train), len(val),
             max(e["length"] for e in train + val), limit, limit_what, overlong_rows, n_trainable, precision,
             cfg.get("precision", "fp32"))

    micro = cfg["micro_batch"]
    accum = max(1, cfg["train_batch"] // (micro * devices))
    steps_per_epoch = math.ceil(len(train) / (micro * accum))
    total_steps = steps_per_epoch * cfg["epochs"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg["lr"],
                            weight_decay=cfg["weight_decay"])
    sched = get_scheduler(SCHEDULERS[cfg["lr_scheduler"]], opt, num_warmup_steps=int(cfg["warmup_ratio"] * total_steps),
                          num_training_steps=total_steps)
    gen = torch.Generator().manual_seed(cfg["seed"])
    history: list[dict[str, float]] = []
    step, t0, tokens, first_epoch = 0, time.time(), 0, 1
    pad_id = tokenizer.pad_token_id
    if last is not None:  # a killed run of this very key: continue after its last finished epoch
        state = load_training_state(last / STATE_FILE)
        trainable = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in state["weights"].items():
                trainable[name].copy_(value)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["data_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history, step, initial_val_loss = state["history"], state["step"], state["initial_val_loss"]
        first_epoch = history[-1]["epoch"] + 1
        LOG.info("SFT resumes after epoch %d (step %d of %d): %s", history[-1]["epoch"], step, total_steps, last)
    else:
        shutil.rmtree(out / "tensorboard", ignore_errors=True)  # this job trains from step 0: no stale curve
    start_step = step
    writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)
    bar = tqdm(total=total_steps, initial=step, desc="sft", mininterval=5)
    if last is None:
        initial_val_loss = evaluate_loss(model, val, micro, pad_id, device, precision)
        writer.add_scalar("val/loss", initial_val_loss, 0)
    model.train()  # also on resume, which skips that evaluation: gradient checkpointing and dropout act in train mode only
    for epoch in range(first_epoch, cfg["epochs"] + 1):
        order = torch.randperm(len(train), generator=gen).tolist()
        epoch_losses: list[float] = []
        for s in range(steps_per_epoch):
            rows = [train[i] for i in order[s * micro * accum:(s + 1) * micro * accum]]
            micro_batches = [collate(rows[i:i + micro], pad_id) for i in range(0, len(rows), micro)]
            n_tok = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in micro_batches)
            step_loss = 0.0
            for b in micro_batches:
                b = {k: v.to(device) for k, v in b.items()}
                with autocast(device, precision):
                    loss, _ = masked_lm_loss(model, b)
                (loss / n_tok).backward()
                step_loss += loss.item() / n_tok
                tokens += int(b["attention_mask"].sum())
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            lr = sched.get_last_lr()[0]  # the rate this step trains at
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            epoch_losses.append(step_loss)
            bar.update(1)
            writer.add_scalar("train/loss", step_loss, step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/grad_norm", float(gnorm), step)
            writer.add_scalar("train/tokens_per_s", tokens / (time.time() - t0), step)
        val_loss = evaluate_loss(model, val, micro, pad_id, device, precision)
        writer.add_scalar("val/loss", val_loss, step)
        train_loss = sum(epoch_losses) / len(epoch_losses)  # mean over the epoch's optimizer steps
        history.append({"epoch": epoch, "step": step, "train_loss": train_loss, "last_step_loss": step_loss,
                        "val_loss": val_loss})
        LOG.info("epoch %d: train loss %.4f (epoch mean), val loss %.4f", epoch, train_loss, val_loss)
        with atomic_dir(resume_ckpts / f"epoch_{epoch}") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_json(Path(tmp) / "trainer_state.json", history[-1])
            torch.save({"weights": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "data_rng": gen.get_state(),
                        "torch_rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                        "history": history, "step": step,
                        "initial_val_loss": initial_val_loss}, Path(tmp) / STATE_FILE)
    bar.close()
    writer.close()
    # the finished run: its epoch checkpoints (without the training state) become the output
    with atomic_dir(out / "checkpoints") as tmp:
        for h in history:
            src = resume_ckpts / f"epoch_{h['epoch']}"
            shutil.copytree(src, Path(tmp) / src.name, ignore=shutil.ignore_patterns(STATE_FILE))
    discard_run_dir(out / "resume")
    write_json(out / "run_log.json", {"resumed_after_epoch": first_epoch - 1, "steps_trained": step - start_step,
                                      "steps": step, "reason": guard["reason"], "overlong_rows": overlong_rows,
                                      "precision": precision, "params": str(param_dtype)})
    # metrics.json holds what the run computed, nothing of the machine: the same config gives the
    # same bytes (the time is in the log and in the job's benchmark file)
    LOG.info("SFT: %d steps (%d in this job) in %.1f s", step, step - start_step, time.time() - t0)
    metrics = {
        "initial_val_loss": initial_val_loss, "epochs": history, "steps": step, "train_rows": len(train),
        # the longest row trained on: what play / evaluation prompts may be checked against
        "length_limit": limit, "longest_row": max(e["length"] for e in train), "overlong_rows": overlong_rows,
        "trainable_params": n_trainable, "grad_accum": accum,
        "best_epoch": min(history, key=lambda h: h["val_loss"])["epoch"],
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def checkpoint_epoch(metrics: dict[str, Any], which: str | int) -> int:
    """The epoch ``sft.merge_checkpoint`` names: ``last``, ``best`` (lowest validation loss) or a number."""
    epochs = [e["epoch"] for e in metrics["epochs"]]
    if which == "last":
        return epochs[-1]
    if which == "best":
        best = min(metrics["epochs"], key=lambda e: e["val_loss"])
        before = metrics.get("initial_val_loss")
        if before is not None and before <= best["val_loss"]:
            raise ValueError(f"config key 'sft.merge_checkpoint' = best: the validation loss before training "
                             f"({before:.4f}) is lower than after every epoch (best: epoch {best['epoch']}, "
                             f"{best['val_loss']:.4f}); SFT made the model worse, refusing to merge")
        return best["epoch"]
    if str(which).isdigit() and int(which) in epochs:
        return int(which)
    raise ValueError(f"config key 'sft.merge_checkpoint' = {which!r}: expected last, best or one of the "
                     f"run's epochs {epochs}")


def choose_checkpoint(run_dir: str, which: str | int) -> Path:
    """The checkpoint directory of the epoch ``which`` names (see :func:`checkpoint_epoch`): an
    adapter (LoRA) or a whole model (``sft.train_mode: full``)."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    path = Path(run_dir) / "checkpoints" / f"epoch_{checkpoint_epoch(metrics, which)}"
    if not any((path / f).is_file() for f in ("adapter_config.json", "config.json")):
        raise FileNotFoundError(f"{path}: no adapter_config.json nor config.json (is this a step/epoch "
                                "checkpoint directory?)")
    return path
