"""GRPO loss pieces against hand-computed values, and resume after a killed job."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from sft2rl.grpo import ActorLossConfig, grpo_advantages
from sft2rl.io import write_parquet
from sft2rl.tasks.qa.data import rl_record
from sft2rl.tasks.qa.rl import train_grpo


def test_group_advantages_hand_computed():
    # two groups of 3: scores (1, 0, 0.5) and (2, 2, 2)
    scores = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 2.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    adv = grpo_advantages(scores, mask, np.array([0, 0, 0, 1, 1, 1]), norm_by_std=True)
    std = math.sqrt(((0.5) ** 2 + 0.5 ** 2 + 0) / 2)  # unbiased std of (1, 0, 0.5) = 0.5
    expected = [0.5 / std, -0.5 / std, 0.0]
    for i, e in enumerate(expected):
        assert adv[i][mask[i].bool()].tolist() == pytest.approx([e] * int(mask[i].sum()), abs=1e-5)
        assert adv[i][~mask[i].bool()].abs().sum() == 0  # nothing outside the response
    assert adv[3:].abs().max() < 1e-6  # a group with equal scores has no signal
    no_std = grpo_advantages(scores, mask, np.array([0, 0, 0, 1, 1, 1]), norm_by_std=False)
    assert no_std[0, 0].item() == pytest.approx(0.5) and no_std[1, 0].item() == pytest.approx(-0.5)


def test_clipped_policy_loss_hand_computed():
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    loss, metrics = compute_policy_loss_vanilla(old, new, adv, mask, "token-mean", ActorLossConfig(clip_ratio=0.2))
    # token 1: A>0, ratio 1.5 clipped to 1.2 -> max(-1.5, -1.2) = -1.2
    # token 2: A>0, ratio 0.5 -> max(-0.5, -0.8) = -0.5
    # token 3: A<0, ratio 1.1 -> max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3, abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(1 / 3)


def test_low_var_kl_hand_computed():
    from verl.trainer.ppo.core_algos import kl_penalty

    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    kl = kl_penalty(logp, ref, "low_var_kl")
    d = -0.5  # ref - logp
    assert kl.tolist() == pytest.approx([math.exp(d) - d - 1, 0.0], abs=1e-6)


@pytest.fixture()
def rl_train_file(tmp_path, tiny_world):
    rows = [
        rl_record({"question": r["messages"][0]["content"], "ground_truth": r["messages"][1]["content"],
                   "knowable": r["answer"]["knowable"], "kind": r["answer"]["kind"], "id": r["id"],
                   "sub_category": "simpleQA", "entity": None}, i, "train", "You are a helpful proactive assistant.",
                  "t")
        for i, r in enumerate(tiny_world["rl_rows"][:12])
    ]
    path = tmp_path / "train.parquet"
    write_parquet(path, rows)
    return path


RL = dict(seed=1, train_mode="lora", lora=dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear"),
          n=3, train_batch=2, ppo_mini_batch=1, ppo_epochs=1, epochs=1, total_steps=4, lr=1e-2, grad_clip=1.0,
          clip_ratio=0.2, kl_coef=0.001, kl_type="low_var_kl", use_kl_loss=True, entropy_coef=0.0,
          norm_adv_by_std=True, temperature=1.0, top_p=1.0, max_prompt_length=64, max_response_length=8, save_freq=2)
REWARD = dict(beta=0.5, format_bonus=0.05, min_proactive_length=0, match="substring", acc_over="all")


@pytest.fixture()
def length_reward(monkeypatch):
    """The untrained base earns no reward (every advantage 0, no policy gradient): score a reply
    by its length instead, so the runs below update on a real signal."""
    from types import SimpleNamespace

    import sft2rl.tasks.qa.rl as qa_rl

    monkeypatch.setattr(qa_rl, "group_aware_details", lambda texts, gt, **kw: [
        SimpleNamespace(reward=len(t) / 50, correct=False, has_proactive=False, group_accuracy=0.0) for t in texts])


def _same_history(a: list[dict], b: list[dict]) -> None:
    """Two runs' step histories agree on the rollouts and on the update (not only on rewards)."""
    assert max(h["reward_std"] for h in a) > 0, "the runs had no reward signal: the check would be vacuous"
    for key in ("reward_mean", "reward_std", "response_length", "replies_cut", "pg_loss", "kl", "grad_norm"):
        assert [h[key] for h in b] == pytest.approx([h[key] for h in a], rel=1e-4, abs=1e-6), key


def test_qa_rollout_counts_the_replies_cut_at_the_limit(tiny_base, rl_train_file):
    """rl/replies_cut: the share of the step's answers that reached max_response_length without
    a stop id (trained and scored as they stand, so counted), recomputed from the tokens."""
    from sft2rl.generation import stop_token_ids
    from sft2rl.model import load_model
    from sft2rl.tasks.qa.rl import QATask

    model, tok = load_model(str(tiny_base), torch.device("cpu"))
    task = QATask(str(rl_train_file), REWARD)
    items = task.load(tok, RL)[:4]
    stops = torch.tensor(stop_token_ids(model, tok))
    for limit in (2, 8, 40):
        ro = task.rollout(model, tok, items, 3, dict(RL, max_response_length=limit), seed=7)
        lengths = ro.response_mask.sum(dim=1)
        stopped = torch.isin(ro.response_ids, stops).logical_and(ro.response_mask.bool()).any(dim=1)
        expected = float((~stopped).float().mean())
        assert ro.metrics["replies_cut"] == pytest.approx(expected)
        assert bool(((lengths == limit) | stopped).all())
        if limit == 2:
            assert expected > 0


def test_resume_after_kill_reaches_same_final_step(tmp_path, tiny_base, rl_train_file, length_reward):
    full = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "full"), RL, REWARD)
    assert full["steps"] == 4 and full["last_checkpoint"].endswith("step_4")
    # "killed" after 3 steps: the last checkpoint on disk is step 2
    part = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "killed"), RL, REWARD, stop_after=3)
    assert part["steps"] == 3 and part["last_checkpoint"].endswith("step_2")
    resumed = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "killed"), RL, REWARD)
    assert resumed["steps"] == 4 and resumed["first"]["step"] == 1
    hist_full = json.loads((tmp_path / "full/checkpoints/step_4/trainer_state.json").read_text())["history"]
    hist_res = json.loads((tmp_path / "killed/checkpoints/step_4/trainer_state.json").read_text())["history"]
    assert [h["step"] for h in hist_res] == [1, 2, 3, 4]
    # same batches, the same sampled rollouts and the same updates after the restart
    _same_history(hist_full, hist_res)
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full/checkpoints/step_4/policy/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed/checkpoints/step_4/policy/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(k for k in a if "lora_B" in k and a[k].abs().max() > 0), "the adapter was trained"
    # a run with another config never resumes from these checkpoints
    other = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "killed"), dict(RL, lr=2e-2), REWARD,
                       stop_after=1)
    assert other["first"]["step"] == 1 and other["steps"] == 1


def test_resume_full_finetuning_after_kill(tmp_path, tiny_base, rl_train_file, length_reward):
    """The default train_mode (full): a killed run with unchanged inputs resumes, same rewards as uninterrupted."""
    cfg = dict(RL, train_mode="full", lr=1e-3)
    full = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "full"), cfg, REWARD)
    assert full["steps_trained"] == 4 and full["resumed_from_step"] is None
    part = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "killed"), cfg, REWARD, stop_after=3)
    assert part["steps_trained"] == 3 and part["last_checkpoint"].endswith("step_2")
    resumed = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "killed"), cfg, REWARD)
    assert resumed["resumed_from_step"] == 2 and resumed["steps_trained"] == 2 and resumed["steps"] == 4
    hist = lambda d: json.loads((tmp_path / d / "checkpoints/step_4/trainer_state.json").read_text())["history"]  # noqa
    _same_history(hist("full"), hist("killed"))
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full/checkpoints/step_4/policy/model.safetensors"))
    b = load_file(str(tmp_path / "killed/checkpoints/step_4/policy/model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    init = load_file(str(tiny_base / "model.safetensors"))
    assert any(not torch.allclose(a[k], init[k], atol=1e-6) for k in a if k in init), "the policy moved"


def _edit_weights(model_dir, delta=1e-2):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(model_dir / "model.safetensors"))
    weights = {k: v + delta for k, v in weights.items()}
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def test_restart_guard_keys_on_content_not_paths(tmp_path, tiny_base, rl_train_file):
    """The reproduction of the stale-checkpoint bug: new weights at the same init path must retrain."""
    import shutil

    init = tmp_path / "init"
    shutil.copytree(tiny_base, init)
    run = tmp_path / "run"
    first = train_grpo(str(init), str(rl_train_file), str(run), RL, REWARD, stop_after=3)  # killed at step 3
    assert first["steps_trained"] == 3
    # SFT retrained: other weights at the same path -> the unfinished checkpoints are not resumed
    _edit_weights(init)
    again = train_grpo(str(init), str(rl_train_file), str(run), RL, REWARD)
    assert again["resumed_from_step"] is None and again["steps_trained"] == 4
    assert "init" in again["start"]  # the log says what changed
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_2", "step_4"]
    # the same bytes at another path (a moved checkout) are the same run: a killed job resumes
    moved = tmp_path / "moved_init"
    shutil.copytree(init, moved)
    run2 = tmp_path / "run2"
    train_grpo(str(init), str(rl_train_file), str(run2), RL, REWARD, stop_after=3)
    resumed = train_grpo(str(moved), str(rl_train_file), str(run2), RL, REWARD)
    assert resumed["resumed_from_step"] == 2 and resumed["steps_trained"] == 2
    # the train data's bytes change: from step 0
    run3 = tmp_path / "run3"
    train_grpo(str(init), str(rl_train_file), str(run3), RL, REWARD, stop_after=3)
    from sft2rl.io import read_parquet_rows

    rows = read_parquet_rows(rl_train_file)
    rows[0]["reward_model"]["ground_truth"] = "something else"
    other_data = tmp_path / "train2.parquet"
    write_parquet(other_data, rows)
    shutil.copy(other_data, rl_train_file)
    fresh = train_grpo(str(init), str(rl_train_file), str(run3), RL, REWARD)
    assert fresh["resumed_from_step"] is None and fresh["steps_trained"] == 4 and "data:train" in fresh["start"]


def test_a_run_begun_in_another_precision_restarts(tmp_path, tiny_base, rl_train_file):
    """The precision a run trains in follows the device (bf16 autocast on a bf16 GPU, fp32 on a
    CPU): a run killed in one does not resume in the other (here bf16 asked, then auto on CPU)."""
    run = tmp_path / "run"
    train_grpo(str(tiny_base), str(rl_train_file), str(run), RL, REWARD, stop_after=3, precision_mode="bf16")
    again = train_grpo(str(tiny_base), str(rl_train_file), str(run), RL, REWARD)
    assert again["resumed_from_step"] is None and again["steps_trained"] == 4
    assert "changed: params" in again["start"], again["start"]


def test_code_edit_and_finished_run_restart_from_step_zero(tmp_path, tiny_base, rl_train_file, monkeypatch):
    from sft2rl import grpo
    from sft2rl.resume import mark_complete

    run = tmp_path / "run"
    train_grpo(str(tiny_base), str(rl_train_file), str(run), RL, REWARD, stop_after=3)
    # an edited package module the stage runs (reward.py): its digest is part of the key
    real = grpo.run_key

    def edited_code(**kw):
        key = real(**kw)
        key["parts"]["code"] = "edited"
        key["key"] = "edited-" + key["key"]
        return key

    monkeypatch.setattr(grpo, "run_key", edited_code)
    fresh = train_grpo(str(tiny_base), str(rl_train_file), str(run), RL, REWARD)
    assert fresh["resumed_from_step"] is None and fresh["steps_trained"] == 4 and "code" in fresh["start"]
    # the job finished; Snakemake reruns it (a forced rerun, a touched input): from step 0, not "0 steps"
    mark_complete(run)
    again = train_grpo(str(tiny_base), str(rl_train_file), str(run), RL, REWARD)
    assert again["resumed_from_step"] is None and again["steps_trained"] == 4
    # the TensorBoard events of the earlier run are gone: one event file, steps 1..4 once
    from sft2rl.tblog import read_scalars

    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [s for s, _ in read_scalars(run / "tensorboard")["rl/reward_mean"]] == [1, 2, 3, 4]


def test_code_closure_covers_what_grpo_imports():
    """A QA GRPO run's key: the trainer's modules and the QA task's (its reward among them)."""
    from sft2rl.fingerprint import module_closure

    mods = module_closure(["grpo", "tasks.qa.rl"])
    for m in ("grpo", "tasks.qa.reward", "generation", "rollout", "shared_prefix", "model", "io", "merge", "resume",
              "fingerprint", "errors"):
        assert m in mods, m
    assert "plots" not in mods and "tasks.qa.tables" not in mods


def test_full_finetuning_keeps_fp32_master_weights(tmp_path, tiny_base, rl_train_file):
    """bf16 autocast (what a bf16 GPU gets) with fp32 parameters: every weight receives its small updates."""
    from safetensors.torch import load_file

    from sft2rl.grpo import precision

    assert precision(torch.device("cpu"), "full", "bf16") == (torch.float32, torch.bfloat16)
    assert precision(torch.device("cpu"), "full", "auto") == (torch.float32, None)
    # entropy_coef > 0 gives every parameter a gradient, whatever the rewards
    cfg = dict(RL, train_mode="full", lr=5e-5, entropy_coef=0.01, total_steps=2, save_freq=2)
    summary = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "run"), cfg, REWARD, precision_mode="bf16")
    assert summary["precision"] == {"params": "torch.float32", "autocast": "torch.bfloat16"}
    before = load_file(str(tiny_base / "model.safetensors"))
    after = load_file(str(tmp_path / "run/checkpoints/step_2/policy/model.safetensors"))
    assert all(t.dtype == torch.float32 for t in after.values())
    changed = sum(int((after[k] != before[k]).sum()) for k in before) / sum(t.numel() for t in before.values())
    assert changed > 0.95, changed
    # the failure this guards against: the same update applied to bf16 weights is mostly rounded away
    w = before["model.layers.0.mlp.up_proj.weight"]
    assert float(((w.bfloat16() + 5e-5 * torch.sign(w).bfloat16()) == w.bfloat16()).float().mean()) > 0.3  # ~44%


def test_the_reference_under_bf16_autocast_is_the_policy_s_function(tiny_base):
    """Under bf16 autocast the KL reference keeps the policy's dtypes (fp32 weights, and the
    rotary position frequencies, whose rounding is an angle error growing with the position)
    and runs under the same autocast: before any update it scores every token as the policy
    does, bit for bit, so the KL starts at 0. A reference with bf16 weights (as before) is
    another function: its embeddings, norms and residual stream are rounded."""
    from sft2rl.grpo import reference_copy
    from sft2rl.model import load_model

    model, _ = load_model(str(tiny_base), torch.device("cpu"), torch.float32)
    ref = reference_copy(model)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the policy is untouched
    buffers = dict(model.named_buffers())
    assert any("inv_freq" in n for n in buffers)
    for name, b in ref.named_buffers():
        assert b.dtype == buffers[name].dtype and torch.equal(b, buffers[name]), name
    ids = torch.arange(1000, dtype=torch.long)[None] % 300 + 10  # up to position 1000 (window 1024)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lp = torch.log_softmax(model(ids).logits.float()[0], -1)
        lr = torch.log_softmax(ref(ids).logits.float()[0], -1)
        rounded = copy.deepcopy(ref)
        for p in rounded.parameters():
            p.data = p.data.bfloat16()
        lb = torch.log_softmax(rounded(ids).logits.float()[0], -1)
    assert torch.equal(lp, lr)
    assert float((lp.exp() * (lp - lb)).sum(-1).mean()) > 1e-7  # bf16 weights: KL > 0 at step 0


def test_overlong_prompts_are_filtered_never_cut(tmp_path, tiny_base, rl_train_file):
    from transformers import AutoTokenizer

    from sft2rl.generation import encode_prompts, filter_overlong_prompts, prompt_lengths
    from sft2rl.io import read_parquet_rows

    tok = AutoTokenizer.from_pretrained(tiny_base)
    rows = read_parquet_rows(rl_train_file)
    lengths = prompt_lengths(tok, [r["prompt"] for r in rows])
    limit = sorted(lengths)[len(lengths) // 2]
    kept, dropped = filter_overlong_prompts(rows, tok, limit)
    assert len(kept) + len(dropped) == len(rows) and dropped
    assert all(lengths[i] > limit for i in dropped) and all(n <= limit for n in prompt_lengths(tok, [r["prompt"] for r in kept]))
    # a kept prompt is encoded whole: it ends with the assistant header
    ids, mask = encode_prompts(tok, [kept[0]["prompt"]], limit, "cpu")
    assert tok.decode(ids[0][mask[0].bool()]).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="longer than max_prompt_length"):
        encode_prompts(tok, [rows[dropped[0]]["prompt"]], limit, "cpu")
    # GRPO trains on the kept rows and says how many it left out
    cfg = dict(RL, max_prompt_length=limit, total_steps=None, epochs=1, train_batch=2)
    summary = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "run"), cfg, REWARD)
    assert summary["filtered_prompts"] == len(dropped) and summary["train_rows"] == len(kept)
    assert summary["steps"] == summary["total_steps"] == len(kept) // 2


def test_on_policy_step_skips_the_old_logprob_forward_and_changes_nothing(tmp_path, tiny_base, rl_train_file,
                                                                         monkeypatch, length_reward):
    """One PPO epoch over one mini-batch: the old log-probs are the training pass's, detached.
    The same run with the extra forward (the pre-engine path) ends on the same weights, and the
    rollout engine's log-probs equal the training pass's in every step."""
    from safetensors.torch import load_file

    import sft2rl.grpo as grpo

    cfg = dict(RL, train_mode="full", lr=1e-3, ppo_mini_batch=2)
    assert grpo.on_policy(cfg) and not grpo.on_policy(RL)
    calls = []
    real = grpo._chunked_logprobs  # the no-gradient passes over the batch
    monkeypatch.setattr(grpo, "_chunked_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "fast"), cfg, REWARD)
    assert len(calls) == 4, "per step: the reference only (and the training pass)"
    monkeypatch.setattr(grpo, "on_policy", lambda c: False)
    calls.clear()
    slow = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "slow"), cfg, REWARD)
    assert len(calls) == 2 * 4, "per step: the old log-probs and the reference"
    hist = lambda d: json.loads((tmp_path / d / "checkpoints/step_4/trainer_state.json").read_text())["history"]  # noqa
    for a, b in zip(hist("fast"), hist("slow")):
        assert a["reward_mean"] == b["reward_mean"] and a["pg_loss"] == pytest.approx(b["pg_loss"], abs=1e-6)
        assert a["rollout_logprob_diff_max"] < 1e-5
    # a real policy gradient (the length reward; at step 1 the KL term has none and entropy_coef is 0)
    assert hist("fast")[0]["grad_norm"] > 0 and hist("fast")[0]["reward_std"] > 0
    wa = load_file(str(tmp_path / "fast/checkpoints/step_4/policy/model.safetensors"))
    wb = load_file(str(tmp_path / "slow/checkpoints/step_4/policy/model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    init = load_file(str(tiny_base / "model.safetensors"))
    assert any(not torch.allclose(wa[k], init[k], atol=1e-6) for k in wa if k in init), "the policy moved"
    assert fast["steps"] == slow["steps"] == 4


def test_the_engine_check_compares_with_the_rollout_policy_off_policy_and_under_dropout(tmp_path, tiny_base,
                                                                                     rl_train_file):
    """``rollout_logprob_diff_max`` is the engine's log-probs against the rollout policy's own
    training-side pass (the old log-probs), the largest over the step's updates: fp32 rounding
    apart also when later mini-batches and epochs run on updated weights, and with LoRA
    dropout, which the old log-probs leave out (they are the policy's function, as sampled).
    Measured against each update's own pass, as before, it read the policy's drift (0.6)."""
    for dropout in (0.0, 0.3):
        cfg = dict(RL, lora=dict(RL["lora"], dropout=dropout), ppo_epochs=2, entropy_coef=0.5)  # moves the policy
        run = tmp_path / f"dropout{dropout}"
        train_grpo(str(tiny_base), str(rl_train_file), str(run), cfg, REWARD)
        hist = json.loads((run / "checkpoints/step_4/trainer_state.json").read_text())["history"]
        # the later updates did run on moved weights (5x the bound below; an update's own pass
        # would read that drift, tenths, as in the docstring)
        assert max(h["ppo_kl"] for h in hist) > 5e-4
        assert max(h["rollout_logprob_diff_max"] for h in hist) < 1e-4, dropout


def test_length_sorted_micro_batches_give_the_full_batch_update(tmp_path, tiny_base, rl_train_file, monkeypatch):
    """The update in chunks of 2 rows (sorted by length, each cut to its own longest prompt and
    response, weighted by its share of tokens) ends on the weights of one pass over the whole batch."""
    from safetensors.torch import load_file

    import sft2rl.grpo as grpo

    cfg = dict(RL, train_mode="full", lr=1e-3, ppo_mini_batch=2, n=4, total_steps=1, max_response_length=12)
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    chunks = list(grpo.length_chunks(prompt_mask, response_mask, torch.arange(4), size=2))
    assert [(c[0].tolist(), c[1], c[2]) for c in chunks] == [([2, 0], 1, 2), ([3, 1], 0, 4)]
    from types import SimpleNamespace

    # the untrained base earns no reward: score by length instead, so advantages are not all zero
    import sft2rl.tasks.qa.rl as qa_rl

    monkeypatch.setattr(qa_rl, "group_aware_details", lambda texts, gt, **kw: [
        SimpleNamespace(reward=len(t) / 50, correct=False, has_proactive=False, group_accuracy=0.0) for t in texts])
    out = {}
    for size in (2, 1000):
        monkeypatch.setattr(grpo, "MICRO_ROWS", size)
        s = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / f"m{size}"), cfg, REWARD)
        out[size] = (s["first"], load_file(str(tmp_path / f"m{size}/checkpoints/step_1/policy/model.safetensors")))
    (h2, w2), (h1, w1) = out[2], out[1000]
    assert h2["reward_mean"] == h1["reward_mean"] and h2["response_length"] == h1["response_length"]
    for k in ("pg_loss", "kl", "entropy", "grad_norm"):
        assert h2[k] == pytest.approx(h1[k], rel=1e-4, abs=1e-7), k
    init = load_file(str(tiny_base / "model.safetensors"))
    assert any(not torch.equal(w1[k], init[k]) for k in w1), "the update moved the weights"
    # Adam's first step moves every weight by about lr (1e-3) whatever its gradient's size, so a
    # near-zero gradient component carries the summation-order noise of the chunks into the
    # weights: 1e-5 is 1% of one step (seen: 1.7e-6 on one weight of 1.1M)
    assert all(torch.allclose(w2[k], w1[k], atol=1e-5) for k in w1)


def test_the_no_signal_control_trains_on_the_same_advantages_in_a_seeded_random_order(tmp_path, tiny_base,
                                                                                      rl_train_file, monkeypatch):
    """``rl.shuffle_advantages``: each step's trajectory advantages, permuted by a draw from the
    seed and the step; the rollout is the real run's, the update is not; with step advantages
    (which would still carry each turn's reward) it is refused before the run directory is made."""
    from types import SimpleNamespace

    import sft2rl.grpo as grpo
    import sft2rl.tasks.qa.rl as qa_rl

    a = torch.arange(8, dtype=torch.float32)
    s = grpo.shuffled_advantages(a, 1, 3)
    assert sorted(s.tolist()) == a.tolist() and not torch.equal(s, a)
    assert torch.equal(s, grpo.shuffled_advantages(a, 1, 3)) and not torch.equal(s, grpo.shuffled_advantages(a, 1, 4))
    kept = torch.tensor([True, False, True, True, False, True, True, True])  # the variance filter's trajectories
    k = grpo.shuffled_advantages(a, 1, 3, kept)
    assert k[~kept].tolist() == [1.0, 4.0] and sorted(k[kept].tolist()) == a[kept].tolist()
    assert not torch.equal(k, a) and torch.equal(grpo.shuffled_advantages(a, 1, 3, torch.ones(8, dtype=torch.bool)), s)
    # the untrained base earns no reward: score by length, so the advantages are not all zero
    monkeypatch.setattr(qa_rl, "group_aware_details", lambda texts, gt, **kw: [
        SimpleNamespace(reward=len(t) / 50, correct=False, has_proactive=False, group_accuracy=0.0) for t in texts])
    seen = []
    real = grpo.shuffled_advantages
    monkeypatch.setattr(grpo, "shuffled_advantages", lambda adv, seed, step, kept: seen.append((adv.clone(), step)) or
                        real(adv, seed, step, kept))
    cfg = dict(RL, train_mode="full", lr=1e-3, ppo_mini_batch=2, n=4, total_steps=1, max_response_length=12)
    plain = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "plain"), cfg, REWARD)["first"]
    assert not seen
    control = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "control"),
                         dict(cfg, shuffle_advantages=True), REWARD)["first"]
    (adv, step), = seen
    assert step == 1 and len(adv) == 2 * 4 and adv.abs().sum() > 0
    assert control["reward_mean"] == plain["reward_mean"] and control["response_length"] == plain["response_length"]
    assert control["grad_norm"] != pytest.approx(plain["grad_norm"], rel=1e-3)  # another update
    from sft2rl.tasks.games.rl import GamesTask  # a multi-turn task: the refusal comes before any rollout

    class Turns(GamesTask):
        def __init__(self):
            pass

        def key(self):
            return {}

        def load(self, tokenizer, cfg):
            return [0, 1]

    with pytest.raises(ValueError, match="shuffle_advantages.*step_adv_weight"):
        grpo.train_rl(str(tiny_base), Turns(), str(tmp_path / "turns"),
                      dict(cfg, shuffle_advantages=True, step_adv_weight=1.0, step_adv_gamma=0.95))
    assert not (tmp_path / "turns").exists(), "refused before the run directory is made"


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prefix_equals_the_full_forward(tiny_base, lora):
    """Each group's prompt computed once (SharedPrefix): the same response log-probs as the full
    forward pass over every prompt + response, and the same gradient for every parameter."""
    import copy

    from sft2rl.generation import encode_prompts
    from sft2rl.grpo import _token_logprobs, response_logprobs
    from sft2rl.model import load_model
    from sft2rl.shared_prefix import SharedPrefix

    model, tok = load_model(str(tiny_base), torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a model with varied outputs (the untrained one is nearly uniform)
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=g)
    model.train()
    prompts = [[{"role": "user", "content": q}] for q in ("What is 3 plus 9?", "hi", "Who founded Norland?")]
    n = 3
    ids, pmask = encode_prompts(tok, prompts, None, "cpu")
    ids, pmask = ids.repeat_interleave(n, 0), pmask.repeat_interleave(n, 0)
    resp = torch.randint(5, 300, (len(ids), 7), generator=g)
    rmask = torch.ones_like(resp)
    for i, length in enumerate([7, 3, 1, 5, 7, 2, 4, 6, 1]):  # right-padded responses of other lengths
        rmask[i, length:] = 0
        resp[i, length:] = tok.pad_token_id
    weights = torch.randn(resp.shape, generator=g)
    params = [p for p in model.parameters() if p.requires_grad]

    logp_full, _ = response_logprobs(model, ids, pmask, resp, rmask, 0.8)
    ((logp_full * weights * rmask).sum()).backward()
    grads_full = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)

    sp = SharedPrefix(model, ids[::n], pmask[::n], grad=True)
    logp_shared = torch.zeros_like(logp_full)
    for rows in (torch.tensor([2, 5, 8, 0]), torch.tensor([1, 3, 4, 6, 7])):  # chunks mixing groups
        r = int(rmask[rows].sum(1).max())
        lp, _ = _token_logprobs(sp.logits(rows // n, resp[rows, :r]) / 0.8, resp[rows, :r], False, True)
        ((lp * weights[rows, :r] * rmask[rows, :r]).sum()).backward()
        logp_shared[rows, :r] = lp.detach()
    sp.backward()
    m = rmask.bool()
    assert torch.allclose(logp_shared[m], logp_full.detach()[m], atol=1e-5)
    for p, gf in zip(params, grads_full):  # fp32 sums in another order: within 4e-6 of the gradient's scale
        assert p.grad is not None
        assert float((p.grad - gf).abs().max()) <= 4e-6 * max(1.0, float(gf.abs().max())), (
            float((p.grad - gf).abs().max()), float(gf.abs().max()))


def test_the_sft_term_trains_on_its_rows_in_a_seeded_order_and_resumes_on_them(tmp_path, tiny_base, rl_train_file,
                                                                                tiny_world):
    """``rl.sft_coef`` (PPO-ptx): each update adds sft_coef x the token-mean NLL of ``sft_batch``
    SFT rows, drawn in a seeded order that covers the file once per pass. With rewards that never
    differ (the untrained base earns none: every advantage is 0) only that term moves the policy,
    so its NLL falls; a killed run resumes on the same rows; a run without rows, or on verl, is
    refused; the rows' content is part of the run key."""
    from safetensors.torch import load_file

    import sft2rl.grpo as grpo
    from sft2rl.model import load_model
    from sft2rl.tasks.qa.rl import QATask
    from sft2rl.verl_launch import VerlConfigError, _refuse_local_only

    sft = tmp_path / "sft.parquet"
    write_parquet(sft, [{"messages": r["messages"]} for r in tiny_world["rl_rows"][:5]])
    model, tok = load_model(str(tiny_base), torch.device("cpu"), torch.float32)
    anchor = grpo.SFTAnchor(str(sft), tok, model, batch=2, seed=3)
    ids = lambda u: [tuple(r["input_ids"]) for r in anchor.rows_for(u)]  # noqa: E731
    first_pass = ids(0) + ids(1) + ids(2)[:1]  # 5 rows in batches of 2: update 2 straddles two passes
    assert sorted(first_pass) == sorted(tuple(r["input_ids"]) for r in anchor.rows)
    assert ids(1) == [tuple(r["input_ids"]) for r in grpo.SFTAnchor(str(sft), tok, model, 2, 3).rows_for(1)]
    assert [ids(u) for u in range(5)] != [[tuple(r["input_ids"]) for r in grpo.SFTAnchor(str(sft), tok, model, 2, 4)
                                          .rows_for(u)] for u in range(5)], "the order follows the seed"

    cfg = dict(RL, train_mode="full", lr=1e-3, total_steps=4, sft_coef=1.0, sft_batch=2, use_kl_loss=False)
    run = lambda d, c=cfg, **kw: grpo.train_rl(str(tiny_base), QATask(str(rl_train_file), REWARD),  # noqa: E731
                                               str(tmp_path / d), c, sft_file=str(sft), **kw)
    full = run("ptx")
    nll = [h["sft_nll"] for h in full["history"]]
    assert all(h["reward_std"] == 0 for h in full["history"]), "no reward signal: only the SFT term trains"
    assert len(nll) == 4 and nll[-1] < nll[0] - 0.05, nll
    off = run("off", dict(cfg, sft_coef=0.0))
    w_off = load_file(str(tmp_path / "off/checkpoints/step_4/policy/model.safetensors"))
    w_ptx = load_file(str(tmp_path / "ptx/checkpoints/step_4/policy/model.safetensors"))
    init = load_file(str(tiny_base / "model.safetensors"))
    assert all(torch.equal(w_off[k], init[k]) for k in init), "without the term nothing moves"
    assert any(not torch.equal(w_ptx[k], init[k]) for k in init)
    assert "sft_nll" not in off["history"][0]
    run("killed", stop_after=3)
    resumed = run("killed")
    assert resumed["resumed_from_step"] == 2
    assert [h["sft_nll"] for h in resumed["history"]] == pytest.approx(nll, abs=1e-5)
    # the rows' content keys the run: other rows, same path, start from step 0
    write_parquet(sft, [{"messages": r["messages"]} for r in tiny_world["rl_rows"][5:10]])
    assert run("killed", stop_after=1)["resumed_from_step"] is None
    with pytest.raises(ValueError, match="sft_coef.*none"):
        grpo.train_rl(str(tiny_base), QATask(str(rl_train_file), REWARD), str(tmp_path / "no_rows"), cfg)
    assert not (tmp_path / "no_rows").exists()
    with pytest.raises(VerlConfigError, match="sft_coef"):
        _refuse_local_only(cfg, "med.rl")


def test_the_loss_takes_each_setting_from_config_with_verl_s_signs(tmp_path, tiny_base, rl_train_file,
                                                                    length_reward, monkeypatch):
    """What the update hands verl's functions comes from the config (the clip bounds, the KL
    estimator, token-mean aggregation, std normalisation), and the loss is pg - entropy_coef x
    entropy + kl_coef x KL: d(loss)/d(term), summed over a step's micro-batches (each weighted by
    its share of its mini-batch's tokens), is -entropy_coef and +kl_coef per mini-batch."""
    import verl.trainer.ppo.core_algos as core

    import sft2rl.grpo as grpo

    seen = {"policy": [], "kl_type": [], "terms": [], "norm": []}
    real_pl, real_kl, real_agg, real_adv = (core.compute_policy_loss_vanilla, core.kl_penalty, core.agg_loss,
                                            grpo.trajectory_advantages)

    def policy_loss(old, logp, adv, mask, mode, cfg):
        seen["policy"].append((mode, cfg.clip_ratio_low, cfg.clip_ratio_high))
        return real_pl(old, logp, adv, mask, mode, cfg)

    def kl(logp, ref, kl_type):
        seen["kl_type"].append(kl_type)
        return real_kl(logp, ref, kl_type)

    def agg(*args, **kw):
        if kw:  # verl's own call inside the policy loss
            return real_agg(*args, **kw)
        values, mask, mode = args  # the trainer's: the entropy's, then the KL's
        assert mode == "token-mean"
        proxy = real_agg(values, mask, mode).detach().clone().requires_grad_(True)  # its grad: d(loss)/d(term)
        seen["terms"].append(proxy)
        return proxy

    def adv(scores, groups, norm_by_std):
        seen["norm"].append(norm_by_std)
        return real_adv(scores, groups, norm_by_std)

    monkeypatch.setattr(core, "compute_policy_loss_vanilla", policy_loss)
    monkeypatch.setattr(core, "kl_penalty", kl)
    monkeypatch.setattr(core, "agg_loss", agg)
    monkeypatch.setattr(grpo, "trajectory_advantages", adv)
    cfg = dict(RL, total_steps=1, train_batch=2, ppo_mini_batch=1, clip_ratio_low=0.15, clip_ratio_high=0.3,
               kl_type="abs", kl_coef=0.1, use_kl_loss=True, entropy_coef=0.01, norm_adv_by_std=False)
    train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "run"), cfg, REWARD)
    assert seen["norm"] == [False]
    assert set(seen["policy"]) == {("token-mean", 0.15, 0.3)} and set(seen["kl_type"]) == {"abs"}
    entropy, kls = seen["terms"][0::2], seen["terms"][1::2]  # each micro-batch: entropy, then KL
    assert len(entropy) == len(kls) == len(seen["policy"])
    mini_batches = cfg["train_batch"] // cfg["ppo_mini_batch"]
    assert sum(float(t.grad) for t in entropy) == pytest.approx(-cfg["entropy_coef"] * mini_batches, rel=1e-5)
    assert sum(float(t.grad) for t in kls) == pytest.approx(cfg["kl_coef"] * mini_batches, rel=1e-5)


def test_a_mini_batch_takes_the_kept_groups_rows_only():
    """keep_group_fraction: the rows (turns) of a trajectory whose group group_filter dropped
    never enter a mini-batch, nor do rows of groups outside the mini-batch's range; the rest
    keep their order. 3 groups of 2 trajectories, trajectories of 1, 2 or 3 rows (turns)."""
    from types import SimpleNamespace

    from sft2rl.grpo import _minibatch_rows
    from sft2rl.rl_task import group_filter

    traj_group = np.array([0, 0, 1, 1, 2, 2])
    row_traj = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 5])
    ro = SimpleNamespace(traj_group=traj_group, row_traj=row_traj)
    scores = np.array([1.0, 1.0, 0.0, 2.0, 0.0, 0.5])  # spreads 0, 2, 0.5: keep 2 of 3 -> groups 1, 2
    kept = group_filter(scores, traj_group, 0.5)
    assert kept.tolist() == [False, True, True]
    kept_traj = torch.as_tensor(kept[traj_group])
    assert _minibatch_rows(ro, kept_traj, 0, 3).tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert _minibatch_rows(ro, kept_traj, 0, 2).tolist() == [3, 4, 5, 6]  # group 2 is the next mini-batch's
    assert _minibatch_rows(ro, kept_traj, 2, 3).tolist() == [7, 8, 9]
    assert _minibatch_rows(ro, torch.ones(6, dtype=torch.bool), 0, 1).tolist() == [0, 1, 2]


def test_the_update_trains_the_policy_s_tokens_only(tmp_path, tiny_base):
    """Multi-turn rows hold the environment's observations between the policy's turns
    (``response_mask`` 1, ``loss_mask`` 0): the loss, its token mean and the logged response
    length count only the sampled tokens. One on-policy update (ratio 1), so the policy loss is
    exactly minus the loss-mask token mean of the advantages; the entropy term (and the KL term,
    aggregated alike) is the mean over the sampled tokens of a plain forward's entropies. A loss
    over every response token gives other numbers in each (the advantages alone could not show a
    micro-batch mean over every token: they are 0 on observations, and the micro-batch weight
    cancels the count)."""
    from sft2rl.grpo import train_rl, trajectory_advantages
    from sft2rl.rl_task import Rollout, pack_rows

    a, e = 11, 12  # a sampled token, an observation token (any ids of the tiny vocabulary)
    loss = [[1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], [1, 0, 1], [1, 1, 0, 0, 0, 1, 1]]  # 3, 1, 2, 4 sampled
    responses = [[a if m else e for m in lm] for lm in loss]
    scores = np.array([1.0, 0.0, 0.0, 1.0])  # two groups (items) of two episodes, one row each

    class Fixed:
        def key(self):
            return {"fixed": 1}

        def load(self, tokenizer, cfg):
            return ["x", "y"]

        def rollout(self, model, tokenizer, items, n, cfg, seed):
            rows = pack_rows([[5, 6, 7]] * 4, responses, loss, None, tokenizer.pad_token_id)
            return Rollout(**rows, row_traj=torch.arange(4), traj_group=np.array([0, 0, 1, 1]))

        def rewards(self, items, ro):
            return scores, {}

        def validate(self, model, tokenizer):
            return {}

    # the untrained base is near uniform: sharpen it (its final norm x 20) so that the entropies of
    # sampled and observation positions differ
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base).eval()
    with torch.no_grad():
        model.model.norm.weight.mul_(20.0)
    init = tmp_path / "init"
    model.save_pretrained(init)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(init)
    cfg = dict(RL, n=2, train_batch=2, ppo_mini_batch=2, total_steps=1, use_kl_loss=False, kl_coef=0.0,
               entropy_coef=0.0, save_freq=1)
    step = train_rl(str(init), Fixed(), str(tmp_path / "run"), cfg)["history"][-1]
    adv = trajectory_advantages(torch.tensor(scores), np.array([0, 0, 1, 1]), True).numpy()
    sampled = np.array([sum(m) for m in loss])
    assert step["response_length"] == pytest.approx(sampled.mean())  # 2.5, not the rows' 5.5 tokens
    assert step["pg_loss"] == pytest.approx(-(adv * sampled).sum() / sampled.sum(), rel=1e-5)
    every = np.array([len(m) for m in loss])
    assert abs(-(adv * every).sum() / every.sum() - step["pg_loss"]) > 0.1  # the test can tell the masks apart
    # the entropy (the bonus's term, logged) of the sampled tokens only, by a plain forward of the
    # init policy (a fresh adapter changes nothing); over every response token it is another number
    ent_sampled, ent_every = [], []
    with torch.no_grad():
        for lm, resp in zip(loss, responses):
            ids = torch.tensor([[5, 6, 7] + resp])
            logp = torch.log_softmax(model(ids).logits[0, 2:-1].float(), dim=-1)  # predicting each response token
            ent = -(logp.exp() * logp).sum(-1)
            ent_sampled += ent[torch.tensor(lm, dtype=torch.bool)].tolist()
            ent_every += ent.tolist()
    assert step["entropy"] == pytest.approx(np.mean(ent_sampled), rel=1e-4)
    assert abs(np.mean(ent_every) - np.mean(ent_sampled)) > 0.05
