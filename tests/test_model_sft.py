"""Tiny base model round trip, SFT loss masking and training, verified merge."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sft2rl import TAG_TOKENS
from sft2rl.errors import ConfigError
from sft2rl.io import write_parquet
from sft2rl.merge import MergeError, merge_adapter
from sft2rl.sft import IGNORE, choose_checkpoint, encode_conversation, train_sft
from sft2rl.text import chat_text

@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


@pytest.fixture(scope="module")
def base_dir(tiny_base):
    return tiny_base


def test_base_round_trip(base_dir, world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    text = world["sft_rows"][0]["messages"][2]["content"]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for tag in TAG_TOKENS:  # single tokens, not special: skip_special_tokens keeps them
        assert tok.convert_tokens_to_ids(tag) in ids or tag not in text
    assert tok.decode(ids, skip_special_tokens=True) == text
    for doc in world["corpus"][:50]:
        assert tok.decode(tok(doc["text"], add_special_tokens=False)["input_ids"]) == doc["text"]
    rendered = tok.apply_chat_template(world["sft_rows"][0]["messages"], tokenize=False)
    assert rendered == chat_text(world["sft_rows"][0]["messages"])
    probe = torch.load(base_dir / "probe_logits.pt")
    with torch.no_grad():
        assert torch.equal(model.eval()(probe["input_ids"]).logits, probe["logits"])


def test_loss_mask_covers_exactly_the_assistant_turns(base_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    msgs = [{"role": "system", "content": "You are a helpful proactive assistant."},
            {"role": "user", "content": "What is 3 plus 9?"},
            {"role": "assistant", "content": "<think>\nI add.\n</think>\n\n3 plus 9 is 12."},
            {"role": "user", "content": "And 4 plus 8?"},
            {"role": "assistant", "content": "4 plus 8 is 12."}]
    enc = encode_conversation(tok, msgs, max_length=512)
    assert not enc["truncated"]
    trained = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE]
    assert tok.decode(trained) == (msgs[2]["content"] + "<|im_end|>\n" + msgs[4]["content"] + "<|im_end|>\n")
    masked = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab == IGNORE])
    assert "What is 3 plus 9?" in masked and "And 4 plus 8?" in masked and "helpful" in masked
    assert "12" not in masked
    short = encode_conversation(tok, msgs, max_length=10)
    assert short["truncated"] and len(short["input_ids"]) == 10


def test_a_reply_is_tokenized_as_play_tokenizes_it(base_dir):
    """A reply that starts with newlines: in one pass the tokenizer would merge the header's
    newline with them into one token (trained in a context play never shows: there the prompt
    ends with the header's own newline). The row is tokenized as play does: the generation
    prompt's tokens, then the reply's, every reply token and the turn end a target."""
    from transformers import AutoTokenizer

    from sft2rl.generation import encode_prompts

    tok = AutoTokenizer.from_pretrained(base_dir)
    msgs = [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": "\n\nleading newlines"}]
    whole = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    enc = encode_conversation(tok, msgs, max_length=512)
    assert enc["input_ids"] != whole, "the probe no longer merges across the reply's start"
    prompt = encode_prompts(tok, [msgs[:1]], None, "cpu")[0][0].tolist()
    reply = tok(msgs[1]["content"], add_special_tokens=False)["input_ids"]
    assert enc["input_ids"][:len(prompt)] == prompt
    assert enc["input_ids"][len(prompt):len(prompt) + len(reply)] == reply
    trained = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE]
    assert trained[:len(reply)] == reply and tok.decode(trained) == msgs[1]["content"] + "<|im_end|>\n"
    assert all(lab == IGNORE for lab in enc["labels"][:len(prompt)])


def test_loss_mask_last_turn_only(base_dir):
    """Prompt/response rows (games, medical): earlier assistant turns are context, not targets."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "grid one"},
            {"role": "assistant", "content": "<think>\nfirst\n</think>\n\n3 plus 9 is 12."},
            {"role": "user", "content": "grid two"},
            {"role": "assistant", "content": "4 plus 8 is 12."}]
    enc = encode_conversation(tok, msgs, max_length=512, loss_turns="last")
    trained = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE]
    assert tok.decode(trained) == msgs[4]["content"] + "<|im_end|>\n"
    masked = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab == IGNORE])
    assert "3 plus 9 is 12." in masked and "first" in masked
    with pytest.raises(ValueError, match="does not end with an assistant turn"):
        encode_conversation(tok, msgs[:4], max_length=512, loss_turns="last")
    with pytest.raises(ValueError, match="expected all or last"):
        encode_conversation(tok, msgs, max_length=512, loss_turns="first")


#: Qwen3's template, as far as loss masking sees it: an earlier assistant turn renders without
#: its think block, the last one with it (an empty one where it has none)
QWEN3_LIKE = (
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}"
    "{%- set c = m.content.split('</think>')[-1].lstrip('\n') if '</think>' in m.content else m.content %}"
    "{%- set r = m.content.split('</think>')[0].split('<think>')[-1].strip('\n') if '</think>' in m.content else '' %}"
    "{%- if loop.last %}{{ '<|im_start|>assistant\n<think>\n' + r + '\n</think>\n\n' + c + '<|im_end|>\n' }}"
    "{%- else %}{{ '<|im_start|>assistant\n' + c + '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}")


def test_the_last_turn_is_found_under_a_template_that_drops_earlier_think_blocks(base_dir):
    """Under Qwen3's template an earlier assistant turn renders without its think block, so
    no prefix of the conversation begins the whole rendering: every turn's loss mask is
    refused, but the last turn's (the games' and the medical rows) is found, think scaffold
    and end-of-turn included. Before, the last turn's mask was refused too."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.chat_template = QWEN3_LIKE
    msgs = [{"role": "user", "content": "grid one"},
            {"role": "assistant", "content": "<think>\nfirst\n</think>\n\n<answer> Up </answer>"},
            {"role": "user", "content": "grid two"},
            {"role": "assistant", "content": "<answer> Left </answer>"}]
    enc = encode_conversation(tok, msgs, max_length=512, loss_turns="last")
    trained = tok.decode([t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE])
    assert trained == "<think>\n\n</think>\n\n<answer> Left </answer><|im_end|>\n"
    assert "first" not in tok.decode(enc["input_ids"])  # the history turn as the template renders it
    with pytest.raises(ValueError, match="not prefix-stable.*Qwen3's works"):
        encode_conversation(tok, msgs, max_length=512, loss_turns="all")


def test_shared_prefix_gives_the_loss_and_gradient_of_the_whole_rows(base_dir):
    """Rows that start alike (a constant instruction) compute the prefix once: the loss and every
    LoRA gradient equal one forward pass over the whole rows; rows of different lengths, a
    prefix cut before the first label, and rows with too little in common take the plain pass."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft2rl.sft import collate, lora_config, masked_lm_loss, shared_prefix_length

    tok = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           lora_config({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}, tok, []))
    for name, p in model.named_parameters():  # LoRA B starts at zero: give every gradient a path
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    instruction = "You answer questions about the world. Answer with the fact and nothing else, please."
    rows = [[{"role": "system", "content": instruction}, {"role": "user", "content": q},
             {"role": "assistant", "content": a}]
            for q, a in (("What is 3 plus 9?", "12"), ("And 4 plus 8 plus 1?", "It is 13."), ("Say two.", "2"))]
    batch = collate([encode_conversation(tok, r, 512, "last") for r in rows], tok.pad_token_id)
    n = shared_prefix_length(batch)
    assert n >= 16 and (batch["labels"][:, :n + 1] == IGNORE).all()
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3     # right padding is exercised

    def loss_and_grads(shared: bool):
        model.zero_grad()
        model.is_gradient_checkpointing = not shared                   # checkpointing turns the prefix off
        loss, count = masked_lm_loss(model, batch)
        loss.backward()
        return loss.detach(), count, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    (l1, c1, g1), (l2, c2, g2) = loss_and_grads(True), loss_and_grads(False)
    del model.is_gradient_checkpointing
    assert c1 == c2 > 0 and torch.allclose(l1, l2, rtol=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6), k
    one = collate([encode_conversation(tok, rows[0], 512, "last")], tok.pad_token_id)
    assert shared_prefix_length(one) == 0
    other = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], rows[0]]
    assert shared_prefix_length(collate([encode_conversation(tok, r, 512, "last") for r in other],
                                        tok.pad_token_id)) == 0


def test_best_checkpoint_refuses_the_loss_before_training():
    from sft2rl.sft import checkpoint_epoch

    metrics = {"initial_val_loss": 2.0, "epochs": [{"epoch": 1, "val_loss": 1.5}, {"epoch": 2, "val_loss": 1.2},
                                                   {"epoch": 3, "val_loss": 1.3}], "best_epoch": 2}
    assert checkpoint_epoch(metrics, "best") == 2
    worse = dict(metrics, initial_val_loss=1.1)
    with pytest.raises(ValueError, match=r"before training \(1.1000\) is lower than after every epoch"):
        checkpoint_epoch(worse, "best")
    assert checkpoint_epoch(worse, "last") == 3  # only 'best' promises an improvement


# A warmup and LoRA dropout, so a resume that lost the scheduler's step or the torch RNG would differ
SFT_CFG = dict(seed=0, val_size=8, with_thinking=True, epochs=3, lr=1e-2, lr_scheduler="constant",
               warmup_ratio=0.25, weight_decay=0.0, train_batch=4, micro_batch=2, max_length=256, grad_clip=1.0,
               gradient_checkpointing=False, lora=dict(r=8, alpha=16, dropout=0.1, target_modules="all-linear"),
               train_tokens=list(TAG_TOKENS) + ["<|im_end|>"])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, base_dir, world):
    d = tmp_path_factory.mktemp("sft")
    rows = [{"messages": r["messages"], "id": r["id"]} for r in world["sft_rows"]]
    write_parquet(d / "train.parquet", rows[:16])
    write_parquet(d / "val.parquet", rows[16:24])
    metrics = train_sft(str(base_dir), str(d / "train.parquet"), str(d / "val.parquet"), str(d / "run"), SFT_CFG)
    return d / "run", metrics


def test_sft_loss_goes_down_and_checkpoints_every_epoch(sft_run):
    run, metrics = sft_run
    losses = [e["val_loss"] for e in metrics["epochs"]]
    # an untrained base and 12 LoRA steps (with dropout and a warmup): validation loss
    # (deterministic) ends below its first epoch's and well below the untrained model's
    assert len(losses) == 3 and losses[2] < min(losses[:2]), losses
    assert losses[-1] < metrics["initial_val_loss"] - 0.2, (metrics["initial_val_loss"], losses)
    for k in (1, 2, 3):
        assert (run / "checkpoints" / f"epoch_{k}" / "adapter_config.json").is_file()
    assert metrics["grad_accum"] == 2 and metrics["steps"] == 3 * 4
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best_epoch"] == min(saved["epochs"], key=lambda e: e["val_loss"])["epoch"]
    assert choose_checkpoint(str(run), "last").name == "epoch_3"
    assert choose_checkpoint(str(run), "best").name == f"epoch_{saved['best_epoch']}"
    assert choose_checkpoint(str(run), 2).name == "epoch_2"  # sft.merge_checkpoint: an epoch number
    with pytest.raises(ValueError, match="merge_checkpoint"):
        choose_checkpoint(str(run), 7)
    # train_loss is the epoch's mean over its optimizer steps (TensorBoard train/loss), not the last step's
    from sft2rl.tblog import read_scalars

    steps = dict(read_scalars(run / "tensorboard")["train/loss"])
    for e in metrics["epochs"]:
        epoch_steps = [steps[s] for s in range(e["step"] - 3, e["step"] + 1)]
        assert e["train_loss"] == pytest.approx(sum(epoch_steps) / 4, rel=1e-5)
        assert e["last_step_loss"] == pytest.approx(epoch_steps[-1], rel=1e-5)
    # the constant schedule warms up over warmup_ratio of the 12 steps (3), as verl's does, and
    # TensorBoard's train/lr is the rate each step trained at
    lrs = [v for _, v in sorted(read_scalars(run / "tensorboard")["train/lr"])]
    assert lrs == pytest.approx([0.0, 1e-2 / 3, 2e-2 / 3] + [1e-2] * 9)


def test_merge_verified_on_trained_adapter(sft_run, base_dir, tmp_path):
    run, _ = sft_run
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")  # re-running over an existing output works
    report = merge_adapter(str(base_dir), str(run / "checkpoints" / "epoch_3"), str(out))
    assert report["verified"] and report["max_weight_delta"] > 0 and report["max_logit_diff"] < 1e-3
    assert not (out / "stale.txt").exists() and (out / "tokenizer_config.json").is_file()
    # the embedding rows of the tags are trained and folded in
    assert report["lora_targets"] > 2 * 7


def test_merge_refuses_untrained_adapter_and_run_dir(sft_run, base_dir, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from sft2rl.sft import lora_config
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                                lora_config(SFT_CFG["lora"], tok, []))  # B = 0: an untrained adapter
    peft_model.save_pretrained(tmp_path / "untrained")
    with pytest.raises(MergeError, match="merge changed nothing"):
        merge_adapter(str(base_dir), str(tmp_path / "untrained"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    run, _ = sft_run
    with pytest.raises(MergeError, match="not a run directory"):
        merge_adapter(str(base_dir), str(run), str(tmp_path / "out2"))


@pytest.mark.parametrize("train_mode,precision,expect", [("full", "bf16", torch.float32), ("full", "fp32", torch.float32),
                                                         ("lora", "bf16", torch.bfloat16), ("lora", "fp32", torch.float32)])
def test_sft_loads_fp32_weights_for_full_fine_tuning_on_a_bf16_gpu(monkeypatch, tmp_path, base_dir, sft_run,
                                                                   train_mode, precision, expect):
    """What a bf16 GPU gets (native bf16; the device's own dtype bf16): full fine-tuning loads
    fp32 weights whatever the autocast (in bf16 most small updates round away), LoRA's frozen
    base is bf16 only under bf16 autocast. (SFT once loaded the device's dtype regardless.)"""
    from sft2rl import model as model_mod
    from sft2rl import sft as sft_mod

    monkeypatch.setattr(model_mod, "has_bf16", lambda device: True)
    monkeypatch.setattr(sft_mod, "train_dtype", lambda device: torch.bfloat16, raising=False)
    asked = []

    def stop(base, device, dtype=None):
        asked.append(dtype)
        raise KeyboardInterrupt  # the dtype is all this test needs

    monkeypatch.setattr(sft_mod, "load_model", stop)
    d = sft_run[0].parent
    with pytest.raises(KeyboardInterrupt):
        train_sft(str(base_dir), str(d / "train.parquet"), str(d / "val.parquet"), str(tmp_path / "run"),
                  dict(SFT_CFG, train_mode=train_mode, precision=precision))
    assert asked == [expect]


def test_sft_training_state_loads_on_the_cpu(tmp_path, monkeypatch):
    """A resume checkpoint's RNG states come back as CPU byte tensors whatever device trains
    (torch.set_rng_state and Generator.set_state take nothing else; mapping them to a GPU broke
    every resume there): the state is loaded with map_location "cpu"."""
    from sft2rl import sft as sft_mod

    gen = torch.Generator().manual_seed(3)
    torch.save({"data_rng": gen.get_state(), "torch_rng": torch.get_rng_state(), "cuda_rng": None},
               tmp_path / sft_mod.STATE_FILE)
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("map_location")) or real(*a, **k))
    state = sft_mod.load_training_state(tmp_path / sft_mod.STATE_FILE)
    assert seen == ["cpu"]
    torch.set_rng_state(state["torch_rng"])
    again = torch.Generator()
    again.set_state(state["data_rng"])
    assert torch.equal(torch.randint(0, 1000, (5,), generator=again), torch.randint(0, 1000, (5,), generator=gen))


def test_full_fine_tuning_trains_every_weight_and_exports_verified(world, base_dir, tmp_path):
    """sft.train_mode: full: every weight trains, each checkpoint is a whole model; the merge
    stage exports it with the same guards (trained, the written model computes its logits)
    and refuses a checkpoint that equals its base."""
    from transformers import AutoModelForCausalLM

    rows = [{"messages": r["messages"], "id": r["id"]} for r in world["sft_rows"]]
    write_parquet(tmp_path / "train.parquet", rows[:16])
    write_parquet(tmp_path / "val.parquet", rows[16:24])
    cfg = dict(SFT_CFG, train_mode="full", epochs=1, lr=1e-3)
    metrics = train_sft(str(base_dir), str(tmp_path / "train.parquet"), str(tmp_path / "val.parquet"),
                        str(tmp_path / "run"), cfg)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert metrics["trainable_params"] == sum(p.numel() for p in base.parameters())
    assert metrics["epochs"][0]["val_loss"] < metrics["initial_val_loss"]
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_1"
    assert (ckpt / "config.json").is_file() and not (ckpt / "adapter_config.json").exists()
    report = merge_adapter(str(base_dir), str(ckpt), str(tmp_path / "merged"))
    assert report["verified"] and report["train_mode"] == "full" and report["max_weight_delta"] > 0
    assert report["changed_weights"] == len(base.state_dict())
    with pytest.raises(MergeError, match="untrained"):
        merge_adapter(str(base_dir), str(base_dir), str(tmp_path / "same"))
    assert not (tmp_path / "same").exists()
    with pytest.raises(ConfigError, match="sft.train_mode"):
        train_sft(str(base_dir), str(tmp_path / "train.parquet"), str(tmp_path / "val.parquet"),
                  str(tmp_path / "bad"), dict(cfg, train_mode="qlora"))


def test_train_tokens_are_given_as_text(base_dir):
    """sft.train_tokens names tokens by their text: added tags and byte-level merges like "\\n\\n" alike;
    a text that is not one token is skipped, not silently mapped to <unk>."""
    from transformers import AutoTokenizer

    from sft2rl.sft import lora_config

    tok = AutoTokenizer.from_pretrained(base_dir)
    texts = ["<think>", "</proactive>", "\n\n", "two words"]
    cfg = lora_config(dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear"), tok, texts)
    expected = sorted({tok.encode(t, add_special_tokens=False)[0] for t in texts[:3]})
    assert len(tok.encode("\n\n", add_special_tokens=False)) == 1
    assert sorted(cfg.trainable_token_indices) == expected


KILL_SCRIPT = """
import json, sys
from sft2rl.sft import train_sft
base, train, val, run, cfg = sys.argv[1:6]
train_sft(base, train, val, run, json.loads(cfg))
"""


@pytest.mark.parametrize("signals", [("SIGKILL",), ("SIGTERM", "SIGKILL")])
def test_killed_sft_resumes_to_the_same_numbers(sft_run, base_dir, tmp_path, signals, monkeypatch):
    """An SFT job killed after an epoch (SIGKILL: the OOM killer; SIGTERM then SIGKILL: a SLURM
    time limit) and run again continues after its last finished epoch and ends with the same
    metrics.json and adapters, byte for byte, as the uninterrupted run; the declared outputs
    (checkpoints/, metrics.json) never exist half-written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    done, _ = sft_run
    data = done.parent
    run = tmp_path / "run"
    args = [str(base_dir), str(data / "train.parquet"), str(data / "val.parquet"), str(run), json.dumps(SFT_CFG)]
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *args], env=dict(os.environ, PYTHONHASHSEED="0"))
    state = run / "resume" / "checkpoints" / "epoch_1" / "training_state.pt"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    for name in signals:
        proc.send_signal(getattr(signal, name))
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode != 0, "the job finished before it could be killed"
    assert not (run / "metrics.json").exists() and not (run / "checkpoints").exists()
    finished = sorted(int(p.name.split("_")[1]) for p in (run / "resume" / "checkpoints").glob("epoch_*"))
    assert finished and finished[-1] < SFT_CFG["epochs"]
    import sft2rl.sft as sft_mod

    modes = []  # the resumed job trains in train mode (gradient checkpointing and dropout act there only)
    real_loss = sft_mod.masked_lm_loss
    monkeypatch.setattr(sft_mod, "masked_lm_loss",
                        lambda model, b: modes.append(all(m.training for m in model.modules())) or real_loss(model, b)
                        if torch.is_grad_enabled()
                        else real_loss(model, b))
    metrics = train_sft(*args[:4], SFT_CFG)  # the rerun, in this process
    assert modes and all(modes)
    log = json.loads((run / "run_log.json").read_text())
    assert log["resumed_after_epoch"] == finished[-1] and log["steps_trained"] == 4 * (3 - finished[-1])
    assert (run / "metrics.json").read_bytes() == (done / "metrics.json").read_bytes()
    assert metrics["steps"] == 12 and not (run / "resume").exists()
    for k in (1, 2, 3):
        for f in ("adapter_model.safetensors", "trainer_state.json"):
            assert (run / f"checkpoints/epoch_{k}/{f}").read_bytes() == (done / f"checkpoints/epoch_{k}/{f}").read_bytes()
        assert not (run / f"checkpoints/epoch_{k}/training_state.pt").exists()


def test_sft_killed_while_deleting_its_training_state_retrains_on_rerun(sft_run, base_dir, tmp_path, monkeypatch):
    """The finished run deletes its training state (resume/: a whole model per epoch under full
    fine-tuning) key first. A job killed during that delete, after epoch 3's weights went, leaves
    state under no key: the rerun trains every step, and no checkpoint lacks its weights (the
    old order resumed "after epoch 3" with 0 steps and wrote a weightless epoch_3)."""
    import shutil

    done, _ = sft_run
    data = done.parent
    run = tmp_path / "run"
    args = (str(base_dir), str(data / "train.parquet"), str(data / "val.parquet"), str(run))

    class Killed(BaseException):
        pass

    real = shutil.rmtree

    def killed_midway(path, *a, **k):
        if Path(path).name == "resume":
            (Path(path) / "checkpoints" / "epoch_3" / "adapter_model.safetensors").unlink()
            raise Killed
        return real(path, *a, **k)

    monkeypatch.setattr(shutil, "rmtree", killed_midway)
    with pytest.raises(Killed):
        train_sft(*args, SFT_CFG)
    monkeypatch.setattr(shutil, "rmtree", real)
    real(run / "checkpoints")  # what Snakemake removes of the incomplete job before its rerun
    (run / "metrics.json").unlink(missing_ok=True)
    train_sft(*args, SFT_CFG)
    log = json.loads((run / "run_log.json").read_text())
    assert log["resumed_after_epoch"] == 0 and log["steps_trained"] == 12
    assert (run / "metrics.json").read_bytes() == (done / "metrics.json").read_bytes()
    for k in (1, 2, 3):
        assert (run / f"checkpoints/epoch_{k}/adapter_model.safetensors").read_bytes() == \
            (done / f"checkpoints/epoch_{k}/adapter_model.safetensors").read_bytes()
    assert not (run / "resume").exists()


def test_sft_state_of_another_key_is_not_resumed(sft_run, base_dir, tmp_path):
    """Training state left by a killed run with other parameters (here: another lr) is dropped:
    the new run trains all its steps."""
    import shutil

    done, _ = sft_run
    data = done.parent
    run = tmp_path / "run"
    other = dict(SFT_CFG, lr=5e-3)
    from sft2rl.resume import prepare_run_dir
    from sft2rl.sft import sft_run_key

    prepare_run_dir(run / "resume", sft_run_key(str(base_dir), str(data / "train.parquet"), str(data / "val.parquet"),
                                                other))
    (run / "resume" / "checkpoints" / "epoch_2").mkdir()
    (run / "resume" / "checkpoints" / "epoch_2" / "training_state.pt").write_bytes(b"stale")
    train_sft(str(base_dir), str(data / "train.parquet"), str(data / "val.parquet"), str(run), SFT_CFG)
    log = json.loads((run / "run_log.json").read_text())
    assert log["resumed_after_epoch"] == 0 and log["steps_trained"] == 12 and "params" in log["reason"]
    assert (run / "metrics.json").read_bytes() == (done / "metrics.json").read_bytes()
    shutil.rmtree(run)


def test_pretraining_precision_is_chosen_recorded_and_applied(monkeypatch, base_dir, tmp_path):
    """fp32 unless bf16 is asked for (or allowed: auto) and the device has native bf16; the
    precision used is in the pretraining metrics; under bf16 the forward runs in autocast."""
    from transformers import AutoTokenizer

    from sft2rl import model as model_mod
    from conftest import TINY_ARCH

    cpu = torch.device("cpu")
    for native, expected in ((False, ("fp32", "fp32", "fp32")), (True, ("fp32", "bf16", "bf16"))):
        monkeypatch.setattr(model_mod, "has_bf16", lambda device, native=native: native)
        assert tuple(model_mod.pretrain_precision(cpu, p) for p in ("fp32", "bf16", "auto")) == expected
    with pytest.raises(ValueError, match="fp32, bf16 or auto"):
        model_mod.pretrain_precision(cpu, "fp16")
    tok = AutoTokenizer.from_pretrained(base_dir)
    texts = ["The capital of Nilail is Paris. " * 8] * 8
    cfg = dict(seed=0, steps=2, batch_size=2, seq_len=32, lr=1e-3, warmup_steps=0, weight_decay=0.0)
    seen = []
    for precision in ("fp32", "bf16"):
        m = model_mod.build_tiny_model(tok, TINY_ARCH)
        m.register_forward_hook(lambda mod, inp, out: seen.append(torch.is_autocast_enabled("cpu")))
        stats = model_mod.pretrain(m, tok, texts, dict(cfg, precision=precision), device=cpu)
        assert stats["precision"] == precision and stats["steps"] == 2
    assert seen == [False, False, True, True]
    # TensorBoard pretrain/lr is the rate each step trained at: 0 during the first warmup step
    from sft2rl.tblog import read_scalars

    tb = tmp_path / "tensorboard"
    model_mod.pretrain(model_mod.build_tiny_model(tok, TINY_ARCH), tok, texts, dict(cfg, steps=3, warmup_steps=1),
                       tb_dir=str(tb), device=cpu)
    lrs = [v for _, v in sorted(read_scalars(tb)["pretrain/lr"])]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1e-3) and lrs[2] < lrs[1]


def test_sft_precision_bf16_runs_under_autocast_and_is_recorded(monkeypatch, tmp_path, base_dir, world, sft_run):
    """sft.precision: bf16 (on a device with native bf16; emulated here where the CPU has none)
    trains and validates under autocast over fp32 weights, records the precision in run_log.json,
    and learns as fp32 does (the same falling validation loss within 0.05 of fp32's)."""
    from sft2rl import model as model_mod
    from sft2rl import sft as sft_mod

    monkeypatch.setattr(model_mod, "has_bf16", lambda device: True)
    seen = []
    real = sft_mod.masked_lm_loss
    monkeypatch.setattr(sft_mod, "masked_lm_loss",
                        lambda m, b: seen.append(torch.is_autocast_enabled("cpu")) or real(m, b))
    d = sft_run[0].parent
    metrics = train_sft(str(base_dir), str(d / "train.parquet"), str(d / "val.parquet"), str(tmp_path / "run"),
                        dict(SFT_CFG, precision="bf16"))
    assert seen and all(seen)
    assert json.loads((tmp_path / "run" / "run_log.json").read_text())["precision"] == "bf16"
    assert json.loads((sft_run[0] / "run_log.json").read_text())["precision"] == "fp32"
    ours, ref = [e["val_loss"] for e in metrics["epochs"]], [e["val_loss"] for e in sft_run[1]["epochs"]]
    assert ours[0] > ours[-1] and max(abs(a - b) for a, b in zip(ours, ref)) < 0.05, (ours, ref)


def test_base_checks_sft_rows_against_its_window_before_pretraining(monkeypatch, tmp_path):
    """A tiny base whose pretraining window is shorter than an SFT row it will train stops
    before pretraining (file, row, length named; nothing written); with overlong: drop it
    pretrains and records the window."""
    from sft2rl import model as model_mod
    from sft2rl.errors import DataError
    from sft2rl.io import write_jsonl
    from conftest import TINY_ARCH

    write_jsonl(tmp_path / "corpus.jsonl", [{"text": "Up Down Left Right. " * 20}] * 20)
    short = [{"role": "user", "content": "Up"}, {"role": "assistant", "content": "Down"}]
    long_ = [{"role": "user", "content": "Up Down Left Right " * 30}, {"role": "assistant", "content": "Left"}]
    write_parquet(tmp_path / "rows.parquet", [{"messages": short}, {"messages": long_}, {"messages": short}])
    called = []
    monkeypatch.setattr(model_mod, "pretrain", lambda *a, **k: called.append(1) or {"steps": 1})
    pre = dict(seed=0, steps=1, batch_size=2, seq_len=48, lr=1e-3, warmup_steps=0, weight_decay=0.0)
    tiny = dict(TINY_ARCH, vocab_size=300)
    with pytest.raises(DataError, match=r"rows\.parquet.*row 2.*pretraining window"):
        model_mod.build_base(str(tmp_path / "corpus.jsonl"), str(tmp_path / "base"), tiny, pre,
                             sft_rows=[str(tmp_path / "rows.parquet")])
    assert not called and not (tmp_path / "base").exists()
    stats = model_mod.build_base(str(tmp_path / "corpus.jsonl"), str(tmp_path / "base"), tiny, pre,
                                 sft_rows=[str(tmp_path / "rows.parquet")], overlong="drop")
    assert called == [1] and stats["seq_len"] == 48 and (tmp_path / "base" / "config.json").is_file()


def test_the_adapter_config_does_not_depend_on_the_hash_seed(base_dir, tmp_path):
    """PEFT expands target_modules "all-linear" into a set and saved it in set order, which
    follows PYTHONHASHSEED: the same config wrote another adapter_config.json in another process
    (found by two runs of the medical workflow at hash seeds 0 and 123). attach_lora sorts it."""
    import subprocess
    import sys

    script = tmp_path / "attach.py"
    script.write_text(f"""
import sys
from peft import LoraConfig, PeftModel
from sft2rl.model import attach_lora, load_model, sort_lora_targets
model = attach_lora(load_model({str(base_dir)!r})[0], LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                           task_type="CAUSAL_LM"))
model.save_pretrained(sys.argv[1])
# a resumed GRPO run loads the adapter back (PEFT reads the list into a set) and saves it again
again = sort_lora_targets(PeftModel.from_pretrained(load_model({str(base_dir)!r})[0], sys.argv[1]))
again.save_pretrained(sys.argv[1] + "-resumed")
""")
    configs = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"adapter{seed}"
        env = {**__import__("os").environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        configs += [(out / "adapter_config.json").read_text(),
                    (tmp_path / f"adapter{seed}-resumed" / "adapter_config.json").read_text()]
    modules = json.loads(configs[0])["target_modules"]
    assert len(modules) > 2 and modules == sorted(modules)
    assert len(set(configs)) == 1


def test_the_sft_key_follows_the_base_s_pretraining_window(base_dir, tmp_path):
    """SFT reads its length limit from the base's pretrain_metrics.json (seq_len), a file the
    model's content digest leaves out: the key holds the window, so a killed run never resumes
    under another limit (two bases that differ only in it had one key)."""
    import shutil

    from sft2rl.sft import PRETRAIN_INFO, sft_run_key

    data = tmp_path / "rows.parquet"
    write_parquet(data, [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    keys = []
    for window in (256, 96):
        base = tmp_path / f"base{window}"
        shutil.copytree(base_dir, base)
        (base / PRETRAIN_INFO).write_text(json.dumps({"seq_len": window}))
        keys.append(sft_run_key(str(base), str(data), str(data), {"lr": 1e-3})["key"])
    assert keys[0] != keys[1]
    (tmp_path / "base96" / PRETRAIN_INFO).write_text(json.dumps({"seq_len": 96, "final_loss": 0.5}))  # a report
    assert sft_run_key(str(tmp_path / "base96"), str(data), str(data), {"lr": 1e-3})["key"] == keys[1]
