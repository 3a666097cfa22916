"""The verl backend on CPU: generated overrides against verl 0.9.1's own configs and checks,
our data through verl's datasets, the group-aware hook through verl's reward manager and
advantage dispatch, verl's merger output folded by our verified merge, the Snakemake wiring.

What cannot run here (no GPU, no vLLM): the trainers themselves, and verl's vLLM-only
check of the LoRA rank in ``validate_config`` (it imports vllm); validation therefore runs
with ``rollout.name=sglang`` and the rank is checked against vLLM's list separately.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("verl")

from sft2rl import verl_export as vx  # noqa: E402
from sft2rl import verl_launch as vl  # noqa: E402
from sft2rl.io import write_jsonl  # noqa: E402
from sft2rl.merge import MergeError  # noqa: E402
from sft2rl.tasks.qa.data import process_rl, process_sft  # noqa: E402
from sft2rl.tasks.qa.reward import group_aware_rewards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
SYSTEM = CONFIG["system_prompt"]
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # verl's fallback copy of vLLM's MaxLoRARanks
# Values unlike verl's defaults, so an override that is not applied cannot pass unnoticed.
RL_TEST = dict(CONFIG["rl"], seed=1, clip_ratio=0.28, kl_coef=0.0123, kl_type="mse", entropy_coef=0.01,
               ppo_epochs=2, temperature=0.9, top_p=0.95, lr=3e-5, grad_clip=0.7, norm_adv_by_std=False,
               total_steps=17, save_freq=5, train_mode="lora")  # LoRA keys checked below
SFT_TEST = dict(CONFIG["sft"], grad_clip=0.5, gradient_checkpointing=True)


def verl_config_dir() -> str:
    import verl

    return str(Path(verl.__file__).parent / "trainer" / "config")


def compose(config_name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=verl_config_dir(), version_base=None):
        return hydra_compose(config_name=config_name, overrides=overrides)


def sft_section(sft: dict | None = None) -> dict:
    return {k: v for k, v in (sft or CONFIG["sft"]).items() if k not in ("n_samples", "merge_checkpoint")}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_world):
    d = tmp_path_factory.mktemp("verl_data")
    write_jsonl(d / "sft.jsonl", tiny_world["sft_rows"])
    write_jsonl(d / "rl.jsonl", tiny_world["rl_rows"])
    process_sft(d / "sft.jsonl", d / "sft/train.jsonl", d / "sft/train.parquet", d / "sft/val.parquet",
                n=8, seed=42, val_size=4, with_thinking=True)
    process_rl(d / "rl.jsonl", d / "rl/train.parquet", d / "rl/test.parquet", system_prompt=SYSTEM,
               data_source="proactive_qa", train_fraction=0.8, seed=42)
    return d


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


def ppo_overrides(base, data, run_dir, reward=None, rl=None, gpus=1):
    return vl.ppo_overrides(init=str(base), train=str(data / "rl/train.parquet"),
                            run_dir=str(run_dir), run_name="rl-sft8_seed42-beta0.5-seed1",
                            rl=rl or dict(CONFIG["rl"], seed=1), reward=reward or dict(CONFIG["reward"]),
                            verl=vl.verl_settings(CONFIG), nnodes=1, gpus_per_node=gpus, code_root=str(REPO))


def sft_overrides(base, data, run_dir, sft=None):
    return vl.sft_overrides(base=str(base), train=str(data / "sft/train.parquet"), val=str(data / "sft/val.parquet"),
                            run_dir=str(run_dir), run_name="sft8_seed42", sft=sft_section(sft), seed=42,
                            nnodes=1, gpus_per_node=2)


@pytest.fixture(scope="module")
def ppo_cfg(tiny_base, data, tmp_path_factory):
    return compose("ppo_trainer", ppo_overrides(tiny_base, data, tmp_path_factory.mktemp("rl_run"), rl=RL_TEST))


# ------------------------------------------------------------------ 1. overrides compose and validate
def test_sft_overrides_compose_validate_and_load_our_data(tiny_base, data, tmp_path):
    from transformers import AutoTokenizer
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils.config import omega_conf_to_dataclass

    from sft2rl.io import read_parquet_rows
    from sft2rl.sft import IGNORE, encode_conversation

    sft = sft_section(SFT_TEST)
    cfg = compose("sft_trainer_engine", sft_overrides(tiny_base, data, tmp_path / "run", sft=SFT_TEST))
    assert cfg.model.lora_rank == sft["lora"]["r"] and cfg.model.lora_alpha == sft["lora"]["alpha"]
    assert cfg.model.target_modules == sft["lora"]["target_modules"]
    assert cfg.model.enable_gradient_checkpointing is True and cfg.optim.clip_grad == sft["grad_clip"]
    assert cfg.optim.lr == sft["lr"] and cfg.optim.lr_scheduler_type == sft["lr_scheduler"]
    assert cfg.optim.lr_warmup_steps_ratio == sft["warmup_ratio"] and cfg.optim.weight_decay == sft["weight_decay"]
    assert cfg.data.max_length == sft["max_length"] and cfg.trainer.seed == 42
    assert cfg.data.train_batch_size == sft["train_batch"] and cfg.data.micro_batch_size_per_gpu == sft["micro_batch"]
    assert cfg.trainer.total_epochs == sft["epochs"] and cfg.trainer.save_freq == "after_each_epoch"
    assert list(cfg.trainer.logger) == ["console", "tensorboard"]
    assert cfg.trainer.default_local_dir == str(tmp_path / "run/checkpoints")
    # what SFTTrainer._build_config does, on CPU
    for key in ("engine", "optim", "checkpoint", "profiler"):
        omega_conf_to_dataclass(cfg[key])
    model_cfg = omega_conf_to_dataclass(cfg.model)  # HFModelConfig: loads our tokenizer and config
    assert model_cfg.lora_rank == sft["lora"]["r"]
    # our SFT parquet through verl's own SFT dataset: same tokens, same loss mask as the local backend
    ds = create_sft_dataset(cfg.data.train_files, cfg.data, model_cfg.tokenizer, None)
    rows = read_parquet_rows(data / "sft/train.parquet")
    assert len(ds) == len(rows)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    for i, row in enumerate(rows[:3]):
        item = ds[i]
        enc = encode_conversation(tok, row["messages"], sft["max_length"])
        assert item["input_ids"].tolist() == enc["input_ids"]
        ours = {j for j, lab in enumerate(enc["labels"]) if lab != IGNORE}
        theirs = set(torch.nonzero(item["loss_mask"]).flatten().tolist())
        assert theirs == ours


def test_game_sft_rows_train_the_last_turn_in_verl_like_locally(tiny_base, tmp_path):
    """Game rows with history (earlier assistant turns as context) through verl's SFT trainer config:
    our dataset class (data.custom_cls) gives the same tokens and the same last-turn loss mask as
    the local backend."""
    from transformers import AutoTokenizer
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils.config import omega_conf_to_dataclass

    from sft2rl.io import read_parquet_rows, write_parquet
    from sft2rl.sft import IGNORE, encode_conversation
    from sft2rl.tasks.games import data as games

    cfg_games = {"seeds": {"train": 100000, "val": 102000, "test": 101000}, "counts": {"train": 6, "val": 2, "test": 1},
                 "max_solution_length": 100, "render": "spaced", "history": True, "with_thinking": False,
                 "max_steps": 15, "sokoban": {"size": [6, 6], "boxes": 1, "search_depth": 30, "max_states": 300000}}
    levels = games.generate_levels("sokoban", cfg_games)
    rows = [r for r in games.split_rows(levels, cfg_games, "train") if r["extra_info"]["step"] >= 2][:4]
    assert rows, "need rows with earlier assistant turns"
    write_parquet(tmp_path / "train.parquet", rows)
    write_parquet(tmp_path / "val.parquet", rows[:2])
    sft = dict(sft_section(SFT_TEST), loss_turns="last", max_length=2048)
    ov = vl.sft_overrides(base=str(tiny_base), train=str(tmp_path / "train.parquet"), val=str(tmp_path / "val.parquet"),
                          run_dir=str(tmp_path / "run"), run_name="sft-sokoban-seed42", sft=sft, seed=42, nnodes=1,
                          gpus_per_node=1)
    cfg = compose("sft_trainer_engine", ov)
    assert cfg.data.custom_cls.path == "pkg://sft2rl.verl_sft_data"
    model_cfg = omega_conf_to_dataclass(cfg.model)
    ds = create_sft_dataset(cfg.data.train_files, cfg.data, model_cfg.tokenizer, None)
    assert type(ds).__name__ == "LastTurnSFTDataset"
    tok = AutoTokenizer.from_pretrained(tiny_base)
    for i, row in enumerate(read_parquet_rows(tmp_path / "train.parquet")):
        item = ds[i]
        enc = encode_conversation(tok, row["messages"], sft["max_length"], loss_turns="last")
        assert item["input_ids"].tolist() == enc["input_ids"]
        ours = {j for j, lab in enumerate(enc["labels"]) if lab != IGNORE}
        theirs = set(torch.nonzero(item["loss_mask"]).flatten().tolist())
        assert theirs == ours and tok.decode([enc["input_ids"][j] for j in sorted(ours)]).startswith(row["response"])
    with pytest.raises(vl.VerlConfigError, match="loss_turns"):
        vl.sft_overrides(base="b", train="t", val="v", run_dir="r", run_name="n", sft=dict(sft, loss_turns="first"),
                         seed=0, nnodes=1, gpus_per_node=1)
    # under a template that renders an earlier assistant turn without its think block (Qwen3's),
    # verl's own dataset refused every row (its per-message rendering check); ours gives the
    # local backend's tokens and last-turn mask, think scaffold included
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    from test_model_sft import QWEN3_LIKE

    tok.chat_template = QWEN3_LIKE
    rows = read_parquet_rows(tmp_path / "train.parquet")
    ds = create_sft_dataset(cfg.data.train_files, cfg.data, tok, None)
    for i, row in enumerate(rows):
        enc = encode_conversation(tok, row["messages"], sft["max_length"], loss_turns="last")
        item = ds[i]
        assert item["input_ids"].tolist() == enc["input_ids"]  # data.pad_mode no_padding
        assert item["loss_mask"].tolist() == [int(lab != IGNORE) for lab in enc["labels"]]
        assert tok.decode(item["input_ids"][item["loss_mask"].bool()]).startswith("<think>\n\n</think>\n\n")
    from omegaconf import OmegaConf  # right padding: the same row, padded to data.max_length

    right = create_sft_dataset(cfg.data.train_files, OmegaConf.merge(cfg.data, {"pad_mode": "right"}), tok, None)[0]
    n = len(ds[0]["input_ids"])
    assert right["input_ids"].shape[0] == sft["max_length"] and int(right["attention_mask"].sum()) == n
    assert right["input_ids"][:n].tolist() == ds[0]["input_ids"].tolist()
    assert right["loss_mask"][:n].tolist() == ds[0]["loss_mask"].tolist() and not right["loss_mask"][n:].any()
    theirs = MultiTurnSFTDataset(cfg.data.train_files, tok, cfg.data)
    with pytest.raises(AssertionError):
        theirs[0]


def test_sft_misspelt_key_is_refused(tiny_base, data, tmp_path):
    from hydra.errors import ConfigCompositionException

    ov = [o.replace("optim.lr_scheduler_type", "optim.lr_schedule_type") for o in
          sft_overrides(tiny_base, data, tmp_path)]
    with pytest.raises(ConfigCompositionException):
        compose("sft_trainer_engine", ov)


def test_ppo_overrides_compose_and_pass_verl_validation(ppo_cfg):
    from omegaconf import OmegaConf, open_dict
    from verl.experimental.reward_loop.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    from sft2rl.tasks.qa import verl_hooks

    rl, reward = RL_TEST, CONFIG["reward"]
    cfg = migrate_legacy_reward_impl(ppo_cfg.copy())  # what the reward loop does first
    checked = cfg.copy()
    checked.actor_rollout_ref.rollout.name = "sglang"  # the vLLM-only LoRA rank check imports vllm
    validate_config(checked, use_reference_policy=need_reference_policy(checked), use_critic=need_critic(checked))
    assert need_reference_policy(cfg) is rl["use_kl_loss"] and need_critic(cfg) is False
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert (actor.clip_ratio, actor.clip_ratio_low, actor.clip_ratio_high) == (rl["clip_ratio"],) * 3
    assert (actor.use_kl_loss, actor.kl_loss_type, actor.kl_loss_coef) == (rl["use_kl_loss"], rl["kl_type"],
                                                                           rl["kl_coef"])
    assert actor.optim.lr == rl["lr"] and actor.ppo_mini_batch_size == rl["ppo_mini_batch"]
    assert actor.optim.clip_grad == rl["grad_clip"] and actor.grad_clip == rl["grad_clip"]
    assert actor.optim.weight_decay == 0.0 and actor.ppo_epochs == rl["ppo_epochs"]
    assert actor.entropy_coeff == rl["entropy_coef"] and actor.loss_agg_mode == "token-mean"
    assert cfg.algorithm.norm_adv_by_std_in_grpo is rl["norm_adv_by_std"] and not cfg.algorithm.use_kl_in_reward
    # with total_steps set, verl may run as many epochs as steps: its loop then ends at total_steps
    assert (cfg.trainer.save_freq, cfg.trainer.total_epochs) == (rl["save_freq"], rl["total_steps"])
    # the test split is the evaluation's: verl validates never, on the train file
    assert cfg.trainer.test_freq == -1 and cfg.trainer.val_before_train is False
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (rl["max_prompt_length"],
                                                                          rl["max_response_length"])
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert (rollout.name, rollout.n, rollout.temperature, rollout.top_p) == ("vllm", rl["n"], rl["temperature"],
                                                                             rl["top_p"])
    model = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    assert model.lora_rank == rl["lora"]["r"] and model.lora_rank in VLLM_LORA_RANKS
    assert model.lora_alpha == rl["lora"]["alpha"] and model.target_modules == rl["lora"]["target_modules"]
    assert cfg.data.train_files.endswith("rl/train.parquet") and cfg.data.val_files == cfg.data.train_files
    algo = OmegaConf.create(OmegaConf.to_container(cfg.algorithm))
    with open_dict(algo):
        del algo["group_reward"]  # ours; verl 0.9.1 never converts config.algorithm to AlgoConfig
    omega_conf_to_dataclass(algo)
    assert cfg.data.train_batch_size == rl["train_batch"] and cfg.trainer.total_training_steps == rl["total_steps"]
    assert list(cfg.trainer.logger) == ["console", "tensorboard"]
    # the hook: estimator registered under the configured name, reward options where it reads them
    assert get_adv_estimator_fn(cfg.algorithm.adv_estimator) is verl_hooks.compute_group_aware_grpo_advantage
    opts = verl_hooks.group_reward_options(cfg.algorithm)
    assert {k: opts[k] for k in vl.GROUP_REWARD_KEYS} == {k: reward[k] for k in vl.GROUP_REWARD_KEYS}
    fn = get_custom_reward_fn(cfg)  # verl's loader: pkg:// path plus reward_kwargs
    assert fn(data_source="q", solution_str="<think>a</think>\n\nParis", ground_truth="paris",
              extra_info={})["score"] == verl_hooks.encode(True, True, False, True)  # + a final answer
    # every Ray worker gets the hook module and our package (main_ppo merges this into ray.init)
    env = OmegaConf.to_container(OmegaConf.merge(get_ppo_ray_runtime_env(cfg), cfg.ray_kwargs.ray_init.runtime_env))
    assert env["env_vars"]["VERL_USE_EXTERNAL_MODULES"] == "sft2rl.tasks.qa.verl_hooks"
    assert env["env_vars"]["PYTHONPATH"] == str(REPO / "src")


def test_ppo_misspelt_key_is_refused(tiny_base, data, tmp_path):
    from hydra.errors import ConfigCompositionException

    ov = [o.replace("kl_loss_coef", "kl_loss_coeff") for o in ppo_overrides(tiny_base, data, tmp_path)]
    with pytest.raises(ConfigCompositionException):
        compose("ppo_trainer", ov)


# ------------------------------------------------------------------ 5. no legacy reward keys
def test_clip_higher_reaches_verl_and_the_variance_filter_is_refused(tiny_base, data, tmp_path):
    """rl.clip_ratio_low / clip_ratio_high (StarPO-S's clip-higher) become verl's actor keys;
    rl.keep_group_fraction < 1 (StarPO-S's variance filter, local trainer only) stops the verl
    command line with a clear error instead of being dropped."""
    from verl.utils.config import omega_conf_to_dataclass

    rl = dict(RL_TEST, clip_ratio_low=0.2, clip_ratio_high=0.28)
    cfg = compose("ppo_trainer", ppo_overrides(tiny_base, data, tmp_path / "run", rl=rl))
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert (actor.clip_ratio_low, actor.clip_ratio_high) == (0.2, 0.28)
    with pytest.raises(ValueError, match="keep_group_fraction"):
        vl.grpo_command(rl_run="r", init="org/init", train="t.parquet", rl=dict(rl, keep_group_fraction=0.25),
                        reward=CONFIG["reward"], verl=CONFIG["verl"], nnodes=1, gpus_per_node=1, code_root="$PWD",
                        final="f", summary="s.json")
    with pytest.raises(ValueError, match="rl.shuffle_advantages.*local backend only"):  # the no-signal control
        vl.grpo_command(rl_run="r", init="org/init", train="t.parquet", rl=dict(rl, shuffle_advantages=True),
                        reward=CONFIG["reward"], verl=CONFIG["verl"], nnodes=1, gpus_per_node=1, code_root="$PWD",
                        final="f", summary="s.json")


def test_legacy_reward_keys_are_never_emitted(tiny_base, data, tmp_path, ppo_cfg):
    ppo = ppo_overrides(tiny_base, data, tmp_path)
    sft = sft_overrides(tiny_base, data, tmp_path)
    for ov in (ppo, sft):
        keys = [o.split("=", 1)[0].lstrip("+") for o in ov]
        assert not [k for k in keys if k.startswith("custom_reward_function")]
        assert not [k for k in keys if k.startswith("reward_model")]
        assert vl.has_legacy_keys(ov) == []
    assert vl.has_legacy_keys(["custom_reward_function.path=x", "+reward_model.reward_manager=batch"]) == [
        "custom_reward_function.path=x", "+reward_model.reward_manager=batch"]
    assert ppo_cfg.custom_reward_function.path is None and ppo_cfg.reward_model.reward_manager is None
    assert ppo_cfg.reward.custom_reward_function.path == "pkg://sft2rl.tasks.qa.verl_hooks"


# ------------------------------------------------------------------ 2. RL parquet through RLHFDataset
def test_rl_parquet_loads_through_rlhf_dataset(ppo_cfg, data, tokenizer):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from sft2rl.io import read_parquet_rows

    rows = read_parquet_rows(data / "rl/train.parquet")
    ds = RLHFDataset(data_files=[str(data / "rl/train.parquet")], tokenizer=tokenizer, config=ppo_cfg.data,
                     processor=None)
    assert len(ds) == len(rows)  # nothing filtered as over-long at max_prompt_length
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert [dict(m) for m in item["raw_prompt"]] == rows[i]["prompt"]
        assert item["raw_prompt"][0]["content"] == SYSTEM
        assert item["reward_model"]["ground_truth"] == rows[i]["reward_model"]["ground_truth"]
        assert item["data_source"] == "proactive_qa" and item["index"] == rows[i]["extra_info"]["index"]
        ids = tokenizer.apply_chat_template(rows[i]["prompt"], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert len(ids) <= ppo_cfg.data.max_prompt_length


# ------------------------------------------------------------------ 3. the group-aware hook
GROUPS = [
    ("Paris", [
        "<think>\nThe capital.\n</think>\n\nIt is Paris.",
        "<think>\nHmm.\n</think>\n\n<proactive>\nI am not sure; please check an atlas.\n</proactive>\n\nMaybe Lyon.",
        "It is paris.",
        "<proactive>\nok\n</proactive>\n\nParis",
    ]),
    ("Nilail", [
        "<think>\nI do not know it.\n</think>\n\n<proactive>\nI have never heard of it; please verify.\n</proactive>"
        "\n\nI do not know.",
        "It is Bukin.",
        "<think>\nguess\n</think>\n\nMaybe Tolar.",
        "<proactive>\nNot sure at all, check a reliable source.\n</proactive>\n\nI do not know.",
    ]),
    ("12", [
        "<think>\n3 plus 9.\n</think>\n\n3 plus 9 is 12.",
        "<think>\n3 plus 9.\n</think>\n\n3 plus 9 is 12.0",
        "It is twelve.",
        "<think>\nadd\n</think>\n\n<proactive>\nI am sure.\n</proactive>\n\n12",
    ]),
]
VARIANT = {"beta": 0.7, "format_bonus": 0.05, "min_proactive_length": 10, "match": "fuzzy",
           "acc_over": "non_proactive"}


def _rollout_batch(tokenizer):
    """A DataProto like the one the reward loop and the trainer hold after rollout (right-padded responses)."""
    from verl import DataProto

    pad = tokenizer.pad_token_id
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts, responses, truths, uids = [], [], [], []
    for g, (truth, texts) in enumerate(GROUPS):
        p = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                           {"role": "user", "content": f"Question {g}?"}],
                                          add_generation_prompt=True, tokenize=False)
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        for t in texts:
            prompts.append(p_ids)
            responses.append(tokenizer(t, add_special_tokens=False)["input_ids"] + [eos])
            truths.append(truth)
            uids.append(f"uid-{g}")
    P, R = max(map(len, prompts)), max(map(len, responses))
    prompt_t = torch.full((len(prompts), P), pad)
    resp_t = torch.full((len(prompts), R), pad)
    mask = torch.zeros((len(prompts), P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        prompt_t[i, P - len(p):] = torch.tensor(p)  # left-padded prompt
        mask[i, P - len(p):P] = 1
        resp_t[i, :len(r)] = torch.tensor(r)
        mask[i, P:P + len(r)] = 1
    obj = lambda xs: np.array(xs, dtype=object)  # noqa: E731
    return DataProto.from_dict(
        tensors={"prompts": prompt_t, "responses": resp_t, "input_ids": torch.cat([prompt_t, resp_t], dim=1),
                 "attention_mask": mask},
        non_tensors={"data_source": obj(["proactive_qa"] * len(uids)),
                     "reward_model": obj([{"style": "rule", "ground_truth": t} for t in truths]),
                     "extra_info": obj([{"index": i} for i in range(len(uids))]),
                     "uid": obj(uids)},
    )


@pytest.mark.parametrize("variant", [False, True], ids=["default", "variant"])
def test_group_hook_matches_local_backend(variant, tiny_base, data, tmp_path, tokenizer):
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    from sft2rl.tasks.qa import verl_hooks
    from sft2rl.grpo import grpo_advantages

    reward = dict(CONFIG["reward"], **(VARIANT if variant else {}))
    rl = dict(CONFIG["rl"], seed=1, norm_adv_by_std=not variant)  # the variant: Dr.GRPO (no std scaling)
    cfg = compose("ppo_trainer", ppo_overrides(tiny_base, data, tmp_path / "run", reward=reward, rl=rl))
    batch = _rollout_batch(tokenizer)
    n = len(GROUPS[0][1])
    # per rollout, as verl's reward loop does it: decode one response, call our function, place the score
    manager = NaiveRewardManager(cfg, tokenizer, get_custom_reward_fn(cfg))
    outs = [manager.loop.run_until_complete(manager.run_single(batch[i:i + 1])) for i in range(len(batch))]
    rm_scores = NaiveRewardManager.assemble_rm_scores(batch, [o["reward_score"] for o in outs])
    # the trainer's advantage step (V1 trainer: rm_scores -> token_level_rewards -> estimator by name)
    P = batch.batch["prompts"].shape[1]
    batch.batch["response_mask"] = batch.batch["attention_mask"][:, P:]
    batch.batch["token_level_scores"] = rm_scores
    batch.batch["token_level_rewards"] = rm_scores
    keys = [f"{u}_0_{i}" for i, u in enumerate(batch.non_tensor_batch["uid"])]
    out = compute_advantage_for_multi_trajectories(
        batch, batch_keys=keys, adv_estimator=cfg.algorithm.adv_estimator, num_repeat=n,
        norm_adv_by_std_in_grpo=cfg.algorithm.norm_adv_by_std_in_grpo, config=cfg.algorithm)
    # the local backend on the same groups: its reward, then its (verl's) GRPO advantage
    kw = {k: reward[k] for k in ("min_proactive_length", "match", "acc_over", "format_bonus")}
    expected_rewards = []
    for g, (truth, texts) in enumerate(GROUPS):
        decoded = [tokenizer.decode(batch.batch["responses"][g * n + j][:batch.batch["response_mask"][g * n + j]
                                                                        .sum()], skip_special_tokens=True)
                   for j in range(n)]
        assert decoded == texts  # tags survive verl's decode (added tokens, not special)
        expected_rewards += group_aware_rewards(texts, truth, reward["beta"], **kw)
    codes = [int(o["reward_score"]) for o in outs]
    got = verl_hooks.group_rewards_from_codes(codes, list(batch.non_tensor_batch["uid"]), beta=reward["beta"],
                                              format_bonus=reward["format_bonus"], acc_over=reward["acc_over"])
    assert got == expected_rewards  # exactly, float for float
    expected_adv = grpo_advantages(torch.tensor(expected_rewards), batch.batch["response_mask"],
                                   batch.non_tensor_batch["uid"], rl["norm_adv_by_std"])
    assert torch.equal(out.batch["advantages"], expected_adv)
    assert out.batch["advantages"].abs().sum() > 0
    log = [json.loads(line) for line in Path(cfg.algorithm.group_reward.log_path).read_text().splitlines()]
    assert log[-1]["reward_mean"] == pytest.approx(float(np.mean(expected_rewards)))
    assert log[-1]["n"] == len(expected_rewards)


def test_group_rewards_from_codes_equal_library_on_random_groups():
    from sft2rl.tasks.qa import verl_hooks

    rng = np.random.default_rng(0)
    parts = ["<think>x</think>", "<proactive>short</proactive>", "<proactive>a long enough remark</proactive>",
             "Paris", "paris!", "Lyon", "P a r i s", "<think>unclosed", " 12 ", "Pariss"]
    for _ in range(200):
        truth = str(rng.choice(["Paris", "12"]))
        texts = [" ".join(rng.choice(parts, size=rng.integers(0, 4))) for _ in range(int(rng.integers(2, 6)))]
        opts = {"beta": float(rng.choice([0.0, 0.3, 0.5, 0.7])), "format_bonus": float(rng.choice([0.0, 0.05])),
                "min_proactive_length": int(rng.choice([0, 10])), "match": str(rng.choice(["substring", "fuzzy"])),
                "acc_over": str(rng.choice(["all", "non_proactive"]))}
        codes = [int(verl_hooks.compute_score("q", t, truth, {}, min_proactive_length=opts["min_proactive_length"],
                                              match=opts["match"])["score"]) for t in texts]
        got = verl_hooks.group_rewards_from_codes(codes, ["g"] * len(texts), beta=opts["beta"],
                                                  format_bonus=opts["format_bonus"], acc_over=opts["acc_over"])
        assert got == group_aware_rewards(texts, truth, opts["beta"], min_proactive_length=opts["min_proactive_length"],
                                          match=opts["match"], acc_over=opts["acc_over"],
                                          format_bonus=opts["format_bonus"])


def test_hook_refuses_scores_that_are_not_codes():
    from sft2rl.tasks.qa import verl_hooks

    cfg = {"group_reward": {"beta": 0.5, "format_bonus": 0.05, "acc_over": "all"}}
    with pytest.raises(ValueError, match="not integer reward codes"):
        verl_hooks.compute_group_aware_grpo_advantage(torch.tensor([[0.0, 0.37], [0.0, 1.0]]), torch.ones(2, 2),
                                                      index=np.array(["a", "a"], dtype=object), config=cfg)
    with pytest.raises(ValueError, match="needs algorithm.group_reward"):
        verl_hooks.compute_group_aware_grpo_advantage(torch.zeros(2, 2), torch.ones(2, 2),
                                                      index=np.array(["a", "a"], dtype=object), config={})


# ------------------------------------------------------------------ 4. verl's merger output, our verified fold-in
def _fake_fsdp_checkpoint(base_dir: Path, ckpt: Path, trained: bool) -> None:
    """A verl FSDP checkpoint of a LoRA model with one rank: the layout FSDPCheckpointManager writes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    if trained:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    ckpt.mkdir(parents=True)
    torch.save(model.state_dict(), ckpt / "model_world_size_1_rank_0.pt")
    (ckpt / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    (ckpt / "lora_train_meta.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "task_type": "CAUSAL_LM"}))
    model.base_model.model.config.save_pretrained(ckpt / "huggingface")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(ckpt / "huggingface")


def _verl_merge(ckpt: Path, target: Path) -> None:
    """What `python -m verl.model_merger merge --backend fsdp --local_dir ckpt --target_dir target` runs."""
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    target.mkdir(parents=True)
    FSDPModelMerger(ModelMergerConfig(operation="merge", backend="fsdp", local_dir=str(ckpt), target_dir=str(target),
                                      hf_model_config_path=str(ckpt / "huggingface"))).merge_and_save()


def test_verl_merger_output_folds_and_verifies(tiny_base, tmp_path):
    from transformers import AutoModelForCausalLM

    ckpt, target, out = tmp_path / "ckpt/global_step_4", tmp_path / "verl_hf", tmp_path / "merged"
    _fake_fsdp_checkpoint(Path(tiny_base), ckpt, trained=True)
    _verl_merge(ckpt, target)
    assert (target / "lora_adapter/adapter_config.json").is_file() and (target / "config.json").is_file()
    report = vx.fold_lora(target, str(tiny_base), out)  # what the merge rule's `fold` step runs
    assert report["verified"] and report["lora_targets"] > 0 and report["max_weight_delta"] > 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])
    assert (out / "tokenizer_config.json").is_file()


def test_untrained_adapter_is_refused(tiny_base, tmp_path):
    ckpt, target = tmp_path / "ckpt/global_step_1", tmp_path / "verl_hf"
    _fake_fsdp_checkpoint(Path(tiny_base), ckpt, trained=False)  # peft's B = 0: LoRA changes nothing
    _verl_merge(ckpt, target)
    with pytest.raises(MergeError, match="changed nothing"):
        vx.fold_lora(target, str(tiny_base), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    with pytest.raises(MergeError, match="no lora_adapter"):
        vx.fold_lora(tmp_path, str(tiny_base), tmp_path / "merged")


def test_full_fine_tuning_exports_the_trained_weights_not_the_mergers_bfloat16(tiny_base, tmp_path):
    """rl.train_mode / sft.train_mode full on verl: the exported model is the checkpoint's own
    (fp32) weights. verl's merger casts every tensor to bfloat16, which rounds an update of 1e-5
    per weight away almost entirely; the export used to copy the merger's output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():  # an RL-sized step: 1e-5 per weight, below bfloat16's spacing at 0.02 (1.2e-4)
        for p in policy.parameters():
            p.add_(1e-5 * torch.randint(0, 2, p.shape).mul(2).sub(1).float())
    ckpt, target, out = tmp_path / "ckpt/global_step_4/actor", tmp_path / "verl_hf", tmp_path / "final"
    ckpt.mkdir(parents=True)
    torch.save(policy.state_dict(), ckpt / "model_world_size_1_rank_0.pt")  # FSDP saves the fp32 weights
    (ckpt / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    policy.config.save_pretrained(ckpt / "huggingface")
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(ckpt / "huggingface")
    _verl_merge(ckpt, target)
    rounded = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).state_dict()
    want = policy.state_dict()
    assert sum(torch.equal(rounded[k], want[k]) for k in want) < len(want) // 2  # what the export copied before
    report = vx.export_full_checkpoint(ckpt, target, str(tiny_base), out)
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert report["verified"] and report["changed_weights"] > 0 and report["verl_merger_max_rounding"] > 1e-5
    assert (out / "tokenizer_config.json").is_file()
    with pytest.raises(MergeError, match="untrained"):  # the checkpoint of the init itself: refused
        base_ckpt = tmp_path / "base_ckpt"
        base_ckpt.mkdir()
        torch.save(AutoModelForCausalLM.from_pretrained(tiny_base).state_dict(),
                   base_ckpt / "model_world_size_1_rank_0.pt")
        (base_ckpt / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
        vx.export_full_checkpoint(base_ckpt, target, str(tiny_base), tmp_path / "final2")
    assert not (tmp_path / "final2").exists()


def test_fsdp_shards_are_merged_in_their_own_dtype(tmp_path):
    """Two ranks' DTensor shards (Shard(0) and replicated) and a plain buffer: concatenated,
    kept and checked as FSDP saved them, in fp32. Run in a subprocess: it needs a process group."""
    script = tmp_path / "shards.py"
    script.write_text(f"""
import json, sys, torch, torch.distributed as dist
from pathlib import Path
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard
sys.path.insert(0, {str(REPO / "src")!r})
from sft2rl import verl_export as vx
from sft2rl.errors import MergeError
dist.init_process_group("gloo", init_method="file://{tmp_path}/pg", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
full = torch.arange(12, dtype=torch.float32).reshape(6, 2) / 7
bias = torch.linspace(0, 1, 5)
out = Path({str(tmp_path)!r}) / "actor"
out.mkdir()
(out / "fsdp_config.json").write_text(json.dumps({{"world_size": 2}}))
def save(rank, buf):
    part = full.chunk(2)[rank].clone()
    torch.save({{"w": DTensor.from_local(part, mesh, [Shard(0)], run_check=False, shape=full.shape, stride=full.stride()),
                "b": DTensor.from_local(bias.clone(), mesh, [Replicate()], run_check=False),
                "buf": torch.tensor(buf)}}, out / f"model_world_size_2_rank_{{rank}}.pt")
save(0, [1.0, 2.0])
save(1, [1.0, 2.0])
state = vx.fsdp_state_dict(out)
assert torch.equal(state["w"], full) and state["w"].dtype == torch.float32, state["w"]
assert torch.equal(state["b"], bias) and torch.equal(state["buf"], torch.tensor([1.0, 2.0]))
save(1, [1.0, 3.0])
try:
    vx.fsdp_state_dict(out)
    raise SystemExit("a buffer that differs between ranks was merged")
except MergeError as err:
    assert "buf is a plain tensor that differs between ranks" in str(err), err
(out / "model_world_size_2_rank_1.pt").unlink()
try:
    vx.fsdp_state_dict(out)
    raise SystemExit("a missing rank was not noticed")
except MergeError as err:
    assert "model_world_size_2_rank_1.pt: missing" in str(err), err
# HSDP: a ("ddp", "fsdp") mesh of 2 replicas of 1 shard: the first FSDP group (rank 0) is a whole copy
mesh2 = init_device_mesh("cpu", (1, 1), mesh_dim_names=("ddp", "fsdp"))
hsdp = Path({str(tmp_path)!r}) / "hsdp"
hsdp.mkdir()
(hsdp / "fsdp_config.json").write_text(json.dumps({{"world_size": 2}}))
torch.save({{"w": DTensor.from_local(full.clone(), mesh2, [Replicate(), Shard(0)], run_check=False)}},
           hsdp / "model_world_size_2_rank_0.pt")
assert torch.equal(vx.fsdp_state_dict(hsdp)["w"], full)
print("ok")
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


# ------------------------------------------------------------------ export steps
def test_sft_metrics_and_checkpoint_choice(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "results/sft/sft8_seed42"
    for step in (3, 6, 9):
        (run / f"checkpoints/global_step_{step}").mkdir(parents=True)
    w = SummaryWriter(str(run / "tensorboard"))
    for step, loss in ((3, 2.0), (6, 1.5), (9, 1.7)):
        w.add_scalar("val/loss", loss, step)
        w.add_scalar("train/loss", loss + 0.1, step)
    w.close()
    metrics = vx.sft_metrics(run)
    assert [e["step"] for e in metrics["epochs"]] == [3, 6, 9] and metrics["best_epoch"] == 2
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert vx.choose_sft_checkpoint(run, "best")[0] == run / "checkpoints/global_step_6"
    assert vx.choose_sft_checkpoint(run, "last")[0] == run / "checkpoints/global_step_9"
    # verl logs val/loss NaN when the validation rows are fewer than a batch (its loader drops a
    # last partial batch): best is refused, naming the steps, never chosen among NaNs
    nan_run = tmp_path / "nan"
    shutil.copytree(run, nan_run)
    shutil.rmtree(nan_run / "tensorboard")
    w = SummaryWriter(str(nan_run / "tensorboard"))
    for step in (3, 6, 9):
        w.add_scalar("val/loss", float("nan") if step != 6 else 1.2, step)
    w.close()
    nan_metrics = vx.sft_metrics(nan_run)
    assert nan_metrics["val_loss_nan_steps"] == [3, 9] and nan_metrics["best_epoch"] == 2
    (nan_run / "metrics.json").write_text(json.dumps(nan_metrics))
    from sft2rl.errors import RunError

    with pytest.raises(RunError, match=r"val/loss NaN at steps \[3, 9\].*partial batch"):
        vx.choose_sft_checkpoint(nan_run, "best")
    assert vx.choose_sft_checkpoint(nan_run, "last")[0] == nan_run / "checkpoints/global_step_9"
    shutil.rmtree(run / "tensorboard")  # no val loss logged: best falls back to last, and says so
    (run / "metrics.json").write_text(json.dumps(vx.sft_metrics(run)))
    path, why = vx.choose_sft_checkpoint(run, "best")
    assert path == run / "checkpoints/global_step_9" and "no val loss" in why


def test_rl_summary_from_hook_log(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from sft2rl.tblog import read_scalars

    run = tmp_path / "results/rl/rl-base-beta0.5-seed1"
    (run / "checkpoints/global_step_4/actor").mkdir(parents=True)
    (run / "checkpoints/latest_checkpointed_iteration.txt").write_text("4")
    # resumed after the checkpoint of step 1: steps 2 and 3 logged again, with other rewards
    lines = [{"step": s, "reward_mean": r, "n": 8} for s, r in ((1, .1), (2, .2), (3, .3), (2, .5), (3, .6), (4, .4))]
    (run / vl.GROUP_REWARD_LOG).write_text("".join(json.dumps(x) + "\n" for x in lines))
    w = SummaryWriter(str(run / "tensorboard"))
    for s in (1, 2, 3, 4):
        w.add_scalar("actor/kl_loss", 0.01 * s, s)
        w.add_scalar("timing_s/step", 1.5 * s, s)
    w.close()
    (run / vx.PLAN_FILE).write_text(json.dumps({"planned_steps": 4, "train_rows": 32, "filtered_prompts": 3}))
    step_dir = vx.latest_rl_checkpoint(run / "checkpoints")
    summary = vx.rl_summary(run, step_dir, "lora", 4, {"verified": True})
    assert summary["steps"] == 4 and summary["logged_steps"] == 4
    # the local summary's keys (the tables read "seconds"; the docs name "filtered_prompts" on both backends)
    assert summary["train_rows"] == 32 and summary["filtered_prompts"] == 3
    assert summary["seconds"] == pytest.approx(1.5 * (1 + 2 + 3 + 4))
    # the later record of a replayed step wins (a first-wins or an averaging reader gives other means)
    assert [h["reward_mean"] for h in summary["history"]] == pytest.approx([.1, .5, .6, .4])
    assert summary["reward_last10"] == pytest.approx(0.4) and summary["last"]["kl"] == pytest.approx(0.04)
    tags = read_scalars(run / "tensorboard")
    assert [s for s, _ in tags["rl/reward_mean"]] == [1, 2, 3, 4] and "rl/kl" in tags


# ------------------------------------------------------------------ 6. Snakemake wiring, multi-node launch
def _snakemake(workdir: Path, *args: str, config: dict | None = None, target: str = "results/ablation_beta.csv",
               timeout: int = 120) -> subprocess.CompletedProcess:
    """A dry run (-n -p) of ``target`` in ``workdir`` with ``config`` (default: the repository's)."""
    workdir.mkdir(exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config or CONFIG, sort_keys=False))
    if not (workdir / "src").exists():
        (workdir / "src").symlink_to(REPO / "src")  # code(...) inputs are workdir-relative
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", target, "--snakefile",
           str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "1", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONHASHSEED": "0"})


def test_verl_sft_batches_must_split_over_the_gpus(tmp_path):
    config = dict(CONFIG, backend="verl", verl=dict(CONFIG["verl"], nnodes=2, gpus_per_node=4))
    res = _snakemake(tmp_path / "wd", config=config)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert "config key 'sft.train_batch' = 8 must be a multiple of 'sft.micro_batch' x GPUs = 4 x 8" in out


def test_snakemake_dry_run_prints_verl_commands(tmp_path):
    res = _snakemake(tmp_path / "wd", "--config", "backend=verl")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "torchrun --standalone --nnodes 1 --nproc_per_node 1 -m verl.trainer.sft_trainer" in out
    assert "python -m verl.trainer.main_ppo" in out
    assert "algorithm.adv_estimator=group_aware_grpo" in out
    assert "reward.custom_reward_function.path=pkg://sft2rl.tasks.qa.verl_hooks" in out
    assert "python -m verl.model_merger merge --backend fsdp" in out
    assert "'trainer.logger=[console,tensorboard]'" in out
    assert '"trainer.default_local_dir=$PWD/results/rl/rl-sft50_seed42-beta0.5-seed1/checkpoints"' in out
    assert "VERL_USE_EXTERNAL_MODULES=sft2rl.tasks.qa.verl_hooks" in out
    assert "actor_rollout_ref.actor.kl_loss_type=low_var_kl" in out
    assert "\n    custom_reward_function." not in out and "reward_model.reward_manager" not in out
    assert out.count("rule grpo:") == 3 * len(CONFIG["ablations"]["seeds"])
    # the SFT job loads our dataset classes: editing them reruns it (as the games' and medical SFT)
    sft_inputs = re.findall(r"^rule sft:\n    input: (.*)$", out, re.M)
    assert sft_inputs and all("src/sft2rl/verl_sft_data.py" in i for i in sft_inputs)
    # the shell commands run workflow/scripts/verl_export.py (fold, rl-export): editing it reruns
    # the jobs (Snakemake tracks the script of a script: rule only); Ray's launcher on one node is not run
    for rule in ("sft", "merge", "grpo"):
        inputs = re.findall(rf"^rule {rule}:\n    input: (.*)$", out, re.M)
        assert inputs and all(any(f.endswith("workflow/scripts/verl_export.py") for f in i.split(", "))
                              for i in inputs), rule
        assert not any("ray_on_slurm.sh" in i for i in inputs), rule


def test_med_rl_table_on_verl_plans_no_control(tmp_path):
    """med.rl.no_signal_control (on by default) needs the local trainer's shuffled advantages:
    on verl rl_eval.csv plans RL with both budgets through verl and no control run or row."""
    res = _snakemake(tmp_path / "wd", "--config", "backend=verl", target="results/med/rl_eval.csv")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert out.count("rule med_rl:") == 2 and "python -m verl.trainer.main_ppo" in out
    assert "med_rl_control" not in out and "control-seed" not in out
    local = _snakemake(tmp_path / "wd", target="results/med/rl_eval.csv")
    assert local.returncode == 0 and local.stdout.count("rule med_rl_control:") == 2
    assert all(f"results/med/models/rl-{m}-control-seed1/final" in local.stdout for m in ("fixed", "dynamic"))


def test_snakemake_dry_run_multi_node(tmp_path):
    # 8 GPUs: each takes train_batch / 8 rows, a multiple of micro_batch
    config = dict(CONFIG, backend="verl", verl=dict(CONFIG["verl"], nnodes=2, gpus_per_node=4),
                  sft=dict(CONFIG["sft"], train_batch=32, micro_batch=4))
    res = _snakemake(tmp_path / "wd", config=config)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "gpu=8, nodes=2" in out and "mpi=srun" in out
    assert "srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=4 torchrun --nnodes 2 --nproc_per_node 4" in out
    # the checkout as the job sees it: "$PWD/<path relative to the working directory>"
    assert 'workflow/scripts/ray_on_slurm.sh" 4 -- python -m verl.trainer.main_ppo' in out
    assert '"$PWD/' in out  # no absolute path to the checkout in commands or inputs: a moved project replans nothing
    assert not re.search(rf"(?<![\w./]){re.escape(str(REPO))}/(src|workflow)", out)
    assert "trainer.nnodes=2" in out and "trainer.n_gpus_per_node=4" in out
    # on several nodes the RL job starts Ray through ray_on_slurm.sh: editing it reruns the job
    grpo_inputs = re.findall(r"^rule grpo:\n    input: (.*)$", out, re.M)
    assert grpo_inputs and all(any(f.endswith("workflow/scripts/ray_on_slurm.sh") for f in i.split(", "))
                               for i in grpo_inputs)


def test_ray_on_slurm_builds_one_array_element_per_node(tmp_path):
    """The node list becomes a proper array: one `ray start` per node, head first (SLURM tools stubbed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    stubs = {
        "scontrol": 'printf "gpu-a\\ngpu-b\\ngpu-c\\n"',
        "srun": f'echo "srun $*" >> {calls}; case "$*" in *hostname*) echo 10.0.0.1;; esac',
        "python": "exit 0",  # the wait-for-GPUs probe
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-c]",
           "RAY_HEAD_WAIT_S": "0"}
    script = REPO / "workflow/scripts/ray_on_slurm.sh"
    res = subprocess.run(["bash", str(script), "4", "--", "echo", "DRIVER", "$RAY_ADDRESS"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "DRIVER" in res.stdout
    log = calls.read_text()
    starts = [line for line in log.splitlines() if "ray start" in line]
    assert len(starts) == 3
    head = [line for line in starts if "--head" in line]
    assert len(head) == 1 and "-w gpu-a" in head[0] and "--num-gpus=4" in head[0]
    workers = sorted(line.split(" -w ")[1].split()[0] for line in starts if "--head" not in line)
    assert workers == ["gpu-b", "gpu-c"]  # verl's nodes_array=("$nodes") bug would give one start
    assert all("--address=10.0.0.1:6379" in line for line in starts if "--head" not in line)
    assert sum("ray stop" in line for line in log.splitlines()) == 3


def test_lint_is_clean_for_the_verl_rules(tmp_path):
    """`snakemake --lint` has nothing to say about verl.smk or its rules (conda env, no helper functions)."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.yaml").write_text(yaml.safe_dump(dict(CONFIG, backend="verl"), sort_keys=False))
    (wd / "src").symlink_to(REPO / "src")
    res = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(wd)], capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "Error" not in out.split("Lints for")[0], out[-2000:]
    assert "verl.smk" not in out, out
    assert (REPO / "envs/verl.yaml").is_file() and (REPO / "envs/local.yaml").is_file()
    env = yaml.safe_load((REPO / "envs/verl.yaml").read_text())
    assert "verl[vllm]==0.9.1" in env["dependencies"][-1]["pip"]


def _export_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("verl_export", REPO / "workflow/scripts/verl_export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _prepare(main, run, base, data, config_hash="aaaa", total_steps=4):
    return main(["prepare-rl", "--run-dir", str(run), "--init", str(base), "--train", str(data / "rl/train.parquet"),
                 "--config-hash", config_hash, "--max-prompt-length", "128", "--train-batch", "4", "--epochs", "1",
                 "--total-steps", str(total_steps)])


def test_export_cli_and_rl_restart_guard(tmp_path, capsys, tiny_base, data):
    from sft2rl.resume import mark_complete

    main = _export_cli()
    run = tmp_path / "results/rl/rl-base-beta0.5-seed1"
    assert _prepare(main, run, tiny_base, data) == 0  # fresh run: the plan says 4 steps
    assert json.loads((run / vx.PLAN_FILE).read_text())["planned_steps"] == 4
    (run / "checkpoints/global_step_2/actor").mkdir(parents=True)
    (run / vl.GROUP_REWARD_LOG).write_text('{"step": 1}\n')
    assert _prepare(main, run, tiny_base, data) == 0
    assert (run / "checkpoints/global_step_2").is_dir()  # same inputs, unfinished: verl resumes from it
    assert main(["latest-step", "--checkpoints", str(run / "checkpoints")]) == 0
    assert capsys.readouterr().out.strip() == str(run / "checkpoints/global_step_2")
    # the export refuses a run that stopped before the planned step (verl's epoch end, a crash)
    assert main(["rl-export", "--run-dir", str(run), "--merger-dir", str(tmp_path / "none"), "--init", str(tiny_base),
                 "--step-dir", str(run / "checkpoints/global_step_2"), "--train-mode", "full",
                 "--final", str(run / "final"), "--summary", str(run / "summary.json")]) == 1
    assert "stopped at step 2 but 4 steps were planned" in capsys.readouterr().err
    assert not (run / "final").exists() and not (run / "summary.json").exists()
    assert _prepare(main, run, tiny_base, data, config_hash="bbbb") == 0  # other overrides: never resume
    assert not (run / "checkpoints/global_step_2").exists() and not (run / vl.GROUP_REWARD_LOG).exists()
    assert main(["latest-step", "--checkpoints", str(run / "checkpoints")]) == 1  # one-line error, status 1
    # same overrides, but the init model's weights changed at the same path: never resume
    (run / "checkpoints/global_step_2/actor").mkdir(parents=True)
    moved = tmp_path / "base_copy"
    shutil.copytree(tiny_base, moved)
    assert _prepare(main, run, moved, data, config_hash="bbbb") == 0  # same bytes elsewhere: resumes
    assert (run / "checkpoints/global_step_2").is_dir()
    from safetensors.torch import load_file, save_file

    weights = load_file(str(moved / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(moved / "model.safetensors"), metadata={"format": "pt"})
    assert _prepare(main, run, moved, data, config_hash="bbbb") == 0
    assert not (run / "checkpoints/global_step_2").exists()
    # a finished run (the job completed) that Snakemake reruns: from step 0
    (run / "checkpoints/global_step_2/actor").mkdir(parents=True)
    mark_complete(run)
    assert _prepare(main, run, moved, data, config_hash="bbbb") == 0
    assert not (run / "checkpoints/global_step_2").exists()
    sft_run = tmp_path / "results/sft/sft8_seed42"
    (sft_run / "checkpoints/global_step_5").mkdir(parents=True)
    assert main(["sft-metrics", "--run-dir", str(sft_run)]) == 0
    assert main(["choose-step", "--run-dir", str(sft_run), "--which", "best"]) == 0
    assert capsys.readouterr().out.strip() == str(sft_run / "checkpoints/global_step_5")
    assert "no val loss" in json.loads((sft_run / "merge_choice.json").read_text())["reason"]
    assert main(["choose-step", "--run-dir", str(sft_run), "--which", "1"]) == 0  # an epoch number
    assert capsys.readouterr().out.strip() == str(sft_run / "checkpoints/global_step_5")
    assert main(["choose-step", "--run-dir", str(sft_run), "--which", "3"]) == 1


@pytest.mark.parametrize("n_rows, train_batch, epochs, total_steps", [
    (188, 8, 1, 40),    # the default: one epoch holds 23 steps, verl used to stop there
    (188, 8, 2, 40),
    (188, 8, 1, 23),
    (188, 8, 1, 5),
    (188, 8, 3, None),  # epochs x full batches
    (47, 4, 1, 100),
    (8, 8, 1, 3),
])
def test_verl_runs_the_planned_steps(n_rows, train_batch, epochs, total_steps, tiny_base, data, tmp_path):
    """Under verl 0.9.1's own loop semantics, the overrides give exactly the steps the local backend runs."""
    from sft2rl.resume import planned_steps

    rl = dict(CONFIG["rl"], seed=1, train_batch=train_batch, ppo_mini_batch=train_batch, epochs=epochs,
              total_steps=total_steps)
    overrides = ppo_overrides(tiny_base, data, tmp_path, rl=rl)
    want = planned_steps(n_rows, train_batch, epochs, total_steps)
    assert vl.verl_loop_steps(n_rows, overrides) == want
    cfg = compose("ppo_trainer", overrides)  # and verl's composed config carries those numbers
    per_epoch = n_rows // cfg.data.train_batch_size
    total = cfg.trainer.total_training_steps or per_epoch * cfg.trainer.total_epochs
    assert min(total, per_epoch * cfg.trainer.total_epochs) == want


def test_verl_loop_emulation_matches_verl_source(tiny_base, data, tmp_path):
    """verl_loop_steps encodes these lines of verl 0.9.1's V1 trainer (``trainer.use_v1``, on by
    default and never overridden: main_ppo runs it, not the deprecated RayPPOTrainer); fail
    loudly if they change."""
    import inspect

    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    src = inspect.getsource(PPOTrainer)
    assert "drop_last=True" in src
    assert "self.steps_per_epoch = len(self.train_dataset) // self.config.data.train_batch_size" in src
    assert "total_training_steps = self.steps_per_epoch * self.config.trainer.total_epochs" in src
    assert "total_training_steps = self.config.trainer.total_training_steps" in src
    assert ("while current_epoch < self.config.trainer.total_epochs and self.global_steps <= "
            "self.total_training_steps:") in src
    assert "is_last_step = self.global_steps >= self.total_training_steps" in src
    overrides = ppo_overrides(tiny_base, data, tmp_path)
    assert not any("use_v1" in o for o in overrides) and compose("ppo_trainer", overrides).trainer.use_v1 is True


def test_conda_envs_pin_what_constraints_pin():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {k.lower(): v for k, v in pins.items()}
    # verl[vllm]==0.9.1 pins these itself (and vLLM caps numpy); everything else must match constraints.txt
    verl_own = {"torch": "2.11.0", "transformers": "5.9.0", "vllm": "0.24.0", "numpy": "2.3.5"}
    for name, allowed_diff in (("local", {}), ("verl", verl_own)):
        env = yaml.safe_load((REPO / f"envs/{name}.yaml").read_text())
        for req in env["dependencies"][-1]["pip"]:
            pkg, version = req.split("==")
            pkg = pkg.split("[")[0].lower()
            assert version == allowed_diff.get(pkg, pins.get(pkg)), (name, req)


def test_hook_format_rate_is_well_formed_like_the_local_backend():
    """verl's training-batch format_rate counts what the local backend's does (sft2rl.tasks.qa.reward.well_formed)."""
    from sft2rl.tasks.qa import verl_hooks
    from sft2rl.tasks.qa.reward import well_formed

    texts = ["<think>a</think>\n\nParis", "<think>a</think><proactive>b</proactive>", "Paris",
             "<think>a</think>\n\n<proactive>not sure</proactive>\n\nI do not know."]
    codes = [int(verl_hooks.compute_score("q", t, "paris")["score"]) for t in texts]
    assert [verl_hooks.decode(c) for c in codes][0] == (True, True, False)  # the reward's facts are unchanged
    stats = verl_hooks.batch_stats(codes, [0.0] * 4, [0, 0, 1, 1], "all")
    assert stats["format_rate"] == sum(map(well_formed, texts)) / 4 == 0.5
    assert stats["proactive_block_rate"] == 0.5


# ------------------------------------------------------------------ 8. the medical task on verl
@pytest.mark.parametrize("sft_rows", ["consultation", "turn"])
def test_med_rows_train_the_doctor_turn_in_verl_like_locally(tiny_base, tmp_path, sft_rows):
    """Processed MTMedDialog rows (earlier doctor turns as context, without thinking) through verl's
    SFT trainer config: the same tokens and the same loss mask as the local backend (every doctor
    turn of a consultation row: verl's own multi-turn dataset; the last of a per-turn row)."""
    from transformers import AutoTokenizer
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils.config import omega_conf_to_dataclass

    from sft2rl.io import read_parquet_rows
    from sft2rl.sft import IGNORE, encode_conversation
    from sft2rl.tasks.med import data as med

    world = dict(CONFIG["med"]["world"], cases={"train": 6, "val": 2, "test": 2})
    med.write_clinic_data(world, tmp_path / "raw", tmp_path / "corpus.jsonl", CONFIG["med"]["eval"]["max_turns"])
    med.write_sft_data(str(tmp_path / "raw/train.jsonl"), str(tmp_path / "raw/val.jsonl"), False, tmp_path / "sft",
                       rows=sft_rows)
    loss_turns = "all" if sft_rows == "consultation" else "last"
    sft = dict(sft_section(SFT_TEST), loss_turns=loss_turns, max_length=1024)
    ov = vl.sft_overrides(base=str(tiny_base), train=str(tmp_path / "sft/train.parquet"),
                          val=str(tmp_path / "sft/val.parquet"), run_dir=str(tmp_path / "run"),
                          run_name="med-doctor-nothink-seed1", sft=sft, seed=1, nnodes=1, gpus_per_node=1)
    cfg = compose("sft_trainer_engine", ov)
    model_cfg = omega_conf_to_dataclass(cfg.model)
    ds = create_sft_dataset(cfg.data.train_files, cfg.data, model_cfg.tokenizer, None)
    assert type(ds).__name__ == ("LastTurnSFTDataset" if sft_rows == "turn" else "ConversationSFTDataset")
    tok = AutoTokenizer.from_pretrained(tiny_base)
    rows = [r for r in read_parquet_rows(tmp_path / "sft/train.parquet") if len(r["prompt"]) >= 4][:3]
    assert rows, "need rows with earlier doctor turns"
    index = {json.dumps(r["messages"]): i for i, r in enumerate(read_parquet_rows(tmp_path / "sft/train.parquet"))}
    for row in rows:
        item = ds[index[json.dumps(row["messages"])]]
        enc = encode_conversation(tok, row["messages"], sft["max_length"], loss_turns=loss_turns)
        assert item["input_ids"].tolist() == enc["input_ids"]
        ours = {j for j, lab in enumerate(enc["labels"]) if lab != IGNORE}
        assert set(torch.nonzero(item["loss_mask"]).flatten().tolist()) == ours
        assert tok.decode([enc["input_ids"][j] for j in sorted(ours)]).startswith(
            row["response"] if sft_rows == "turn" else row["messages"][2]["content"])
        assert "<think>" not in row["response"]


def test_med_recipe_gives_the_reference_sft_command_line(tmp_path):
    """recipes/med_qwen2.5-7b.yaml on the verl backend (dry run, CPU): the reference recipe in
    verl's SFT command line, the run name from config, the merge into results/models/<run>/merged."""
    wd = tmp_path / "wd"
    (wd / "data/raw/mtmeddialog").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        (wd / f"data/raw/mtmeddialog/{split}.parquet").write_bytes(b"")  # a dry run only checks they exist
    (wd / "src").symlink_to(REPO / "src")
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "results/models/qwen2.5-7b-mtmed-think-seed1/merged",
           "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd), "--cores", "1",
           "--configfile", str(REPO / "config.yaml"), str(REPO / "recipes/med_qwen2.5-7b.yaml")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "0"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "rule med_sft:" in out and "rule med_merge:" in out and "rule med_base_model" not in out
    assert "torchrun --standalone --nnodes 1 --nproc_per_node 8 -m verl.trainer.sft_trainer" in out
    for expected in ("optim.lr=0.0001", "data.max_length=6784", "data.train_batch_size=128",
                     "data.micro_batch_size_per_gpu=8", "model.lora_rank=64", "model.lora_alpha=32",
                     "model.enable_gradient_checkpointing=true", "trainer.total_epochs=3",
                     "model.path=Qwen/Qwen2.5-7B-Instruct", "data.custom_cls.path=pkg://sft2rl.verl_sft_data",
                     '"trainer.default_local_dir=$PWD/results/med/sft/qwen2.5-7b-mtmed-think-seed1/checkpoints"'):
        assert expected in out, expected
    assert "--which last" in out and "--out results/models/qwen2.5-7b-mtmed-think-seed1/merged" in out
    # the 7B doctor's evaluation asks for a GPU (the profile sends it to the GPU partition)
    res = subprocess.run([*cmd[:5], "results/med/eval.csv", *cmd[6:]], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    evals = re.findall(r"^rule med_eval:\n(?:    .*\n)*?    resources: (.*)$", res.stdout, re.M)
    assert evals and all(re.search(r"\bgpu=1\b", r) for r in evals), evals


# ------------------------------------------------------------------ 9. no injection through config values
HOSTILE = ["$(touch {pwned})", "`touch {pwned}`", "x;touch {pwned}", "a'b\"c", "$HOME/${{IFS}}y", "p|touch {pwned}",
           "q\\$(touch {pwned})", "$PWDX/$(touch {pwned})"]


def _run_with_stubs(script: str, tmp_path: Path) -> list[list[str]]:
    """Run generated shell lines with every program a stub that records its argv; return the argvs."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    for prog in ("torchrun", "python", "rm", "bash", "srun", "scontrol"):
        (stubs / prog).write_text(f'#!/bin/sh\nfor a in "$0" "$@"; do printf "%s\\037" "$a"; done >> {calls}\n'
                                  f'printf "\\n" >> {calls}\necho /step\n')
        (stubs / prog).chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n1", "HOME": str(tmp_path)}
    res = subprocess.run(["/bin/bash", "-e", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    return [line.split("\x1f")[:-1] for line in calls.read_text().splitlines()]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_config_values_in_verl_command_lines_stay_text(hostile, tmp_path):
    """Every config value that reaches a verl command line (model paths, run names, data and
    checkpoint paths, LoRA target modules, the merge choice) is passed on as text: running the
    generated lines runs nothing it names, and the value arrives unchanged in argv. Only
    $PWD, $SLURM_*, $SFT2RL_* and PYTHONPATH expand."""
    pwned = tmp_path / "pwned"
    bad = hostile.format(pwned=pwned)
    sft = dict(sft_section(SFT_TEST), lora=dict(SFT_TEST["lora"], target_modules=[f"q_proj{bad}"]))
    scripts = [
        vl.sft_command(sft_run=f"run{bad}", run_dir=f"results/sft/r{bad}", base=f"org/model{bad}", train=f"t{bad}.parquet",
                       val=f"v{bad}.parquet", sft=sft, seed=1, nnodes=1, gpus_per_node=1, code_root=f"$PWD/c{bad}"),
        vl.sft_command(sft_run="run", base=f"/abs/m{bad}", train="t.parquet", val="v.parquet",
                       sft=dict(sft_section(SFT_TEST), train_batch=16), seed=1, nnodes=2, gpus_per_node=2,
                       code_root="$PWD"),
        vl.merge_command(sft_run=f"run{bad}", which="last", base=f"org/model{bad}", out_dir=f"out{bad}",
                         code_root=f"$PWD/c{bad}", run_dir=f"results/sft/r{bad}"),
        vl.grpo_command(rl_run=f"rl{bad}", init=f"org/init{bad}", train=f"tr{bad}.parquet",
                        rl=RL_TEST, reward=CONFIG["reward"], verl=CONFIG["verl"], nnodes=1, gpus_per_node=1,
                        code_root=f"$PWD/c{bad}", final=f"fin{bad}", summary=f"sum{bad}.json"),
    ]
    for script in scripts:
        argvs = _run_with_stubs(script, tmp_path)
        assert not pwned.exists(), script
        args = [a for argv in argvs for a in argv]
        # the hostile text arrives as it was written (in the argument that carries it)
        assert any(bad in a for a in args), (bad, argvs)
        assert not any(a.startswith("/step") and bad in a for a in args)
    # the known variables still expand
    argvs = _run_with_stubs(scripts[0], tmp_path)
    assert any(a == f"model.path=org/model{bad}" for a in argvs[0])
    assert any(a == f"trainer.default_local_dir={tmp_path}/results/sft/r{bad}/checkpoints" for a in argvs[0])
    multi = _run_with_stubs(scripts[1], tmp_path)
    assert "77" in multi[-2] and "/step:29500" in multi[-2]  # $SLURM_JOB_ID, $SFT2RL_HEAD (scontrol stub)


# ------------------------------------------------------------------ stop ids of the rollout
def test_vllm_rollout_gets_every_stop_id(tiny_base, data, tmp_path):
    """verl's rollout passes no stop ids of its own; vLLM stops at its tokenizer's EOS and at
    every eos_token_id of the generation config it loads. The overrides point vLLM's
    --generation-config at the folder prepare-rl writes: the init model's generation config
    with eos_token_id = generation.stop_token_ids, the ids the local backend stops at."""
    import inspect

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.config import omega_conf_to_dataclass

    from sft2rl.generation import stop_token_ids

    run = tmp_path / "run"
    ov = ppo_overrides(tiny_base, data, run)
    key = "+actor_rollout_ref.rollout.engine_kwargs.vllm.generation_config"
    assert f"{key}={run}/{vl.ROLLOUT_GENERATION_CONFIG}" in ov
    rollout = omega_conf_to_dataclass(compose("ppo_trainer", ov).actor_rollout_ref.rollout)
    assert rollout.engine_kwargs["vllm"]["generation_config"] == f"{run}/{vl.ROLLOUT_GENERATION_CONFIG}"
    sglang = vl.ppo_overrides(init=str(tiny_base), train=str(data / "rl/train.parquet"), run_dir=str(run),
                              run_name="r", rl=dict(CONFIG["rl"], seed=1), reward=dict(CONFIG["reward"]),
                              verl=dict(vl.verl_settings(CONFIG), rollout_name="sglang"), nnodes=1, gpus_per_node=1,
                              code_root=str(REPO))
    assert not [o for o in sglang if "engine_kwargs.vllm" in o]
    # verl 0.9.1: the agent loop's sampling params carry no stop ids, and the vLLM server is
    # `vllm serve <model dir>` with engine_kwargs.vllm as CLI flags (fail loudly if that changes)
    loop = inspect.getsource(AgentLoopWorker.generate_sequences)
    assert "stop_token_ids" not in loop and "sampling_params = dict(" in loop
    server = (Path(inspect.getfile(AgentLoopWorker)).parents[2] / "workers/rollout/vllm_rollout/"
              "vllm_async_server.py").read_text()
    assert 'engine_kwargs = self.config.get("engine_kwargs", {}).get(self._get_engine_kwargs_key(), {})' in server
    assert "**engine_kwargs," in server and '"generation_config"' not in server
    assert 'server_args = ["serve", self.model_config.local_path] + build_cli_args_from_config(args)' in server
    # the folder prepare-rl writes: the tiny base's one stop id
    assert _prepare(_export_cli(), run, tiny_base, data) == 0
    gen = json.loads((run / vl.ROLLOUT_GENERATION_CONFIG / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(tiny_base)
    assert gen["eos_token_id"] == [tok.eos_token_id] == json.loads((run / vx.PLAN_FILE).read_text())["stop_token_ids"]
    # a Qwen2.5-base-like init (EOS <|endoftext|>, its own generation config lists only that):
    # the rollout's config adds the chat turn's end, the model directory is left as it is
    qwen_like = tmp_path / "qwen_like"
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tok.eos_token = "<|endoftext|>"
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(qwen_like)
    tok.save_pretrained(qwen_like)
    ids = vx.write_rollout_generation_config(str(qwen_like), tmp_path / "gc")
    doc_end, turn_end = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert ids == [doc_end, turn_end] == stop_token_ids(AutoModelForCausalLM.from_pretrained(qwen_like),
                                                        AutoTokenizer.from_pretrained(qwen_like))
    written = json.loads((tmp_path / "gc/generation_config.json").read_text())
    assert written["eos_token_id"] == ids and written["bos_token_id"] == model.generation_config.bos_token_id
    assert json.loads((qwen_like / "generation_config.json").read_text())["eos_token_id"] == doc_end
