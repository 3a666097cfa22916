"""GRPO loss pieces against hand-computed values, and resume after a killed job."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sft2rl.data import rl_record
from sft2rl.grpo import ActorLossConfig, grpo_advantages, train_grpo
from sft2rl.io import write_parquet


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
                   "sub_category": "simpleQA"}, i, "train", "You are a helpful proactive assistant.", "t")
        for i, r in enumerate(tiny_world["rl_rows"][:12])
    ]
    path = tmp_path / "train.parquet"
    write_parquet(path, rows)
    return path


RL = dict(seed=1, init="sft", train_mode="lora", lora=dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear"),
          n=3, train_batch=2, ppo_mini_batch=1, ppo_epochs=1, epochs=1, total_steps=4, lr=1e-2, grad_clip=1.0,
          clip_ratio=0.2, kl_coef=0.001, kl_type="low_var_kl", use_kl_loss=True, entropy_coef=0.0,
          norm_adv_by_std=True, temperature=1.0, top_p=1.0, max_prompt_length=64, max_response_length=8, save_freq=2)
REWARD = dict(beta=0.5, format_bonus=0.05, min_proactive_length=0, match="substring", acc_over="all")


def test_resume_after_kill_reaches_same_final_step(tmp_path, tiny_base, rl_train_file):
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
    # same batches and the same sampled rollouts after the restart: identical rewards
    assert [h["reward_mean"] for h in hist_res] == pytest.approx([h["reward_mean"] for h in hist_full], abs=1e-6)
    # a run with another config never resumes from these checkpoints
    other = train_grpo(str(tiny_base), str(rl_train_file), str(tmp_path / "killed"), dict(RL, lr=2e-2), REWARD,
                       stop_after=1)
    assert other["first"]["step"] == 1 and other["steps"] == 1
