"""The games on verl, on CPU: the run's files (verl rows, agent-loop file, token budget), the
``main_ppo`` overrides composed against verl 0.9.1's Hydra configs, and the agent loop built
by Hydra from that file as verl's worker builds it, playing one episode against a stub rollout
server that returns scripted tokens (masks, turns, log-probs, reward and the episode log
checked against the local backend's own episode). What needs a GPU (vLLM, the trainer) does
not run here."""
from __future__ import annotations

import copy
import json
import sys

import pytest
import yaml

pytest.importorskip("verl")

from sft2rl import verl_export as vx  # noqa: E402
from sft2rl import verl_launch as vl  # noqa: E402
from sft2rl.tasks.games import data, play  # noqa: E402
from test_games import CFG  # noqa: E402
from test_games_rl import write_frozenlake_and_tiny_model  # noqa: E402
from test_verl import CONFIG, REPO, _snakemake, compose  # noqa: E402

GAMES = dict(copy.deepcopy(CFG), history=True, counts={"train": 6, "val": 3, "test": 3},
             eval={"max_steps": 6, "max_new_tokens": 16, "temperature": 1.0, "batch_size": 64, "seed": 0,
                   "k_samples": 0},
             rl={"format_penalty": -0.1})
RL = dict(CONFIG["rl"], seed=3, train_batch=2, n=4, total_steps=3, train_mode="full", max_prompt_length=384,
          max_response_length=16)


@pytest.fixture(scope="module")
def game_run(tmp_path_factory):
    """FrozenLake levels, a tiny model with the games tokenizer, and a prepared verl games run."""
    out = tmp_path_factory.mktemp("verl_games")
    tok = write_frozenlake_and_tiny_model(out, GAMES)
    levels = data.read_levels(out / "frozenlake" / "levels.jsonl")
    run = out / "run"
    overrides = overrides_for(out, run, "$SFT2RL_RESPONSE_LENGTH")
    plan = vx.prepare_game_rl(run, init=str(out / "model"), levels=str(out / "frozenlake" / "levels.jsonl"),
                              env="frozenlake", games=GAMES, seed=RL["seed"], config_hash=vl.config_hash(overrides),
                              train_batch=RL["train_batch"], epochs=1, total_steps=RL["total_steps"])
    return {"dir": out, "run": run, "plan": plan, "tok": tok,
            "levels": [lv for lv in levels if lv["split"] == "train"]}


def overrides_for(out, run, response_length, rl=RL, agent_name="sft2rl_game", run_name="rl-frozenlake-seed3"):
    """main_ppo's overrides of an agent-loop run prepared in ``run`` with the model in ``out``
    (the games' by default; the medical test passes its own)."""
    return vl.agent_ppo_overrides(
        init=str(out / "model"), train=str(run / vx.GAME_TRAIN), run_dir=str(run), run_name=run_name,
        rl=rl, agent_loops=str(run / vx.AGENT_LOOPS), agent_name=agent_name, response_length=response_length,
        verl=vl.verl_settings(CONFIG), nnodes=1, gpus_per_node=1, code_root=str(REPO))


def test_prepared_run_rows_budget_and_composed_config(game_run):
    """One verl row per train level (first-turn chat, the agent loop's name, the level), loaded by
    verl's dataset; the episode budget covers every reply and observation; the overrides compose
    into verl's config with the loop file, async rollout, raw chat and verl's own grpo."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    run, plan, tok = game_run["run"], game_run["plan"], game_run["tok"]
    cfg = compose("ppo_trainer", overrides_for(game_run["dir"], run, plan["response_length"]))
    ds = RLHFDataset(data_files=[str(run / vx.GAME_TRAIN)], tokenizer=tok, config=cfg.data, processor=None)
    assert len(ds) == len(game_run["levels"]) == plan["train_rows"]
    item = ds[0]
    assert item["agent_name"] == "sft2rl_game"
    level = json.loads(item["extra_info"]["level"])
    assert level == game_run["levels"][0]
    ep = play.Episode("frozenlake", level, 0, GAMES, GAMES["eval"]["max_steps"], 0)
    assert [dict(m) for m in item["raw_prompt"]] == ep.prompt()
    steps, reply = GAMES["eval"]["max_steps"], GAMES["eval"]["max_new_tokens"]
    assert plan["response_length"] == steps * reply + (steps - 1) * plan["observation_tokens"]
    assert plan["planned_steps"] == RL["total_steps"]
    check_agent_config(cfg, run, plan, "sft2rl_game")
    loops = yaml.safe_load((run / vx.AGENT_LOOPS).read_text())
    assert [(x["name"], x["_target_"], x["env"]) for x in loops] == [
        ("sft2rl_game", "sft2rl.tasks.games.verl_agent.GameAgentLoop", "frozenlake")]
    assert loops[0]["games"] == GAMES and loops[0]["episode_log"] == str(run.resolve() / vx.EPISODE_LOG)
    assert loops[0]["attempt"] == 1  # a fresh run's first start


def test_a_resumed_run_keeps_the_later_start_of_a_replayed_step(tmp_path):
    """verl resumes after its last checkpoint and plays the steps after it again: the episode log
    then holds a replayed step twice (the killed start's episodes, then the new one's). Each
    start tags its episodes, and the history keeps the latest start's (it had averaged both)."""
    log = tmp_path / vx.EPISODE_LOG
    assert vx.next_attempt(log) == 1
    first = [{"step": s, "attempt": 1, "won": False, "score": 0.0, "steps": 4, "valid": 4} for s in (0, 0, 1, 1, 2)]
    log.write_text("".join(json.dumps(r) + "\n" for r in first))  # killed during step 2 (weights version 2)
    assert vx.next_attempt(log) == 2  # the next start, resumed from the checkpoint of step 2
    again = [{"step": s, "attempt": 2, "won": True, "score": 1.0, "steps": 2, "valid": 2} for s in (2, 2, 3, 3)]
    log.write_text(log.read_text() + "".join(json.dumps(r) + "\n" for r in again))
    hist = vx.game_rl_history(log)
    assert [(h["step"], h["n"], h["success"]) for h in hist] == [(1, 2, 0.0), (2, 2, 0.0), (3, 2, 1.0), (4, 2, 1.0)]
    assert vx.next_attempt(log) == 3


def check_agent_config(cfg, run, plan, agent_name):
    """The composed config validates into verl's rollout dataclass: async rollout, the run's loop
    file and agent loop, its response length, the raw chat, verl's own grpo, no reward function."""
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.utils.config import omega_conf_to_dataclass

    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.mode == "async" and rollout.response_length == plan["response_length"]
    assert rollout.agent.agent_loop_config_path == str(run / vx.AGENT_LOOPS)
    assert rollout.agent.default_agent_loop == agent_name and cfg.data.return_raw_chat is True
    assert cfg.algorithm.adv_estimator == "grpo" and get_adv_estimator_fn("grpo") is not None
    assert cfg.reward.custom_reward_function.path is None  # the loop returns the reward itself
    assert "VERL_USE_EXTERNAL_MODULES" not in cfg.ray_kwargs.ray_init.runtime_env.env_vars


class StubServer:
    """verl's server manager as the agent loop sees it: scripted replies, one per call, cut at
    ``max_tokens`` like a real server; the server's weights version in ``extra_fields``."""

    def __init__(self, tok, replies: list[str], version: int):
        self.tok, self.replies, self.version, self.calls = tok, list(replies), version, []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        ids = self.tok.encode(self.replies.pop(0), add_special_tokens=False)[:sampling_params["max_tokens"]]
        logps = [-0.01 * (i + 1) for i in range(len(ids))]
        return TokenOutput(token_ids=ids, log_probs=logps, extra_fields={"global_steps": self.version})


def test_agent_loop_plays_an_episode_as_the_local_backend_does(game_run):
    """Hydra builds the loop from the run's file as verl's worker does; one episode against the
    stub: a malformed reply (no move, penalty), then the solver's moves, the last one cut at the
    reply limit before its end-of-turn token. The sequence is the chat of the whole history,
    every model token has mask 1 and the server's log-prob, every observation token mask 0; the
    reward is the local backend's score of the same episode; the episode is logged."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from sft2rl.tasks.games.rl import episode_score

    run, plan, tok = game_run["run"], game_run["plan"], game_run["tok"]
    cfg = compose("ppo_trainer", overrides_for(game_run["dir"], run, plan["response_length"]))
    level = next(lv for lv in game_run["levels"] if 2 <= len(lv["solution"]) <= GAMES["eval"]["max_steps"] - 1)
    end = tok.eos_token
    replies = ["I go right" + end] + [f"<answer> {a} </answer>" + end for a in level["solution"]]
    replies[-1] = replies[-1][:-len(end)] + " " * 40  # no end-of-turn: cut at max_tokens
    server = StubServer(tok, replies, version=4)
    spec = OmegaConf.load(run / vx.AGENT_LOOPS)[0]
    loop = hydra.utils.instantiate(config=spec, trainer_config=DictConfigWrap(config=cfg), server_manager=server,
                                   tokenizer=tok, processor=None, hf_model_type="qwen2", dataset_cls=RLHFDataset,
                                   data_config=DictConfigWrap(cfg.data), tools=ToolListWrap([]))
    row = {"level": json.dumps(level), "index": level["index"], "seed": 5}
    out = loop.loop.run_until_complete(loop.run({"temperature": 1.0, "top_p": 1.0}, raw_prompt=[], extra_info=row))

    # the same replies through the local backend's episode
    ep = play.Episode("frozenlake", level, 0, GAMES, GAMES["eval"]["max_steps"], 5)
    texts = [tok.decode(tok.encode(r, add_special_tokens=False)[:16], skip_special_tokens=True) for r in replies]
    for t in texts:
        ep.act(t)
    assert ep.won and ep.steps == len(level["solution"]) + 1 and ep.valid == len(level["solution"])
    assert out.reward_score == pytest.approx(episode_score(ep, -0.1)) == pytest.approx(1.0 - 0.1)
    assert out.num_turns == 2 * ep.steps and len(server.calls) == ep.steps
    assert all(c["sampling_params"]["max_tokens"] == GAMES["eval"]["max_new_tokens"] for c in server.calls)

    # the prompt is the first turn's chat; every call sees the whole sequence so far
    first = tok.apply_chat_template(ep.prompt()[:2], tokenize=False, add_generation_prompt=True)
    assert out.prompt_ids == tok.encode(first, add_special_tokens=False)
    seq = out.prompt_ids + out.response_ids
    for call in server.calls:
        assert seq[:len(call["prompt_ids"])] == call["prompt_ids"]
    # masks: the generated tokens (1, the server's log-probs), the observations between them (0, 0.0)
    gen = [tok.encode(r, add_special_tokens=False)[:16] for r in replies]
    assert len(out.response_mask) == len(out.response_ids) == len(out.response_logprobs) <= plan["response_length"]
    assert sum(out.response_mask) == sum(len(g) for g in gen)
    pos = 0
    for i, g in enumerate(gen):
        start = len(server.calls[i]["prompt_ids"]) - len(out.prompt_ids)
        assert out.response_ids[start:start + len(g)] == g
        assert out.response_mask[start:start + len(g)] == [1] * len(g)
        assert out.response_logprobs[start:start + len(g)] == pytest.approx([-0.01 * (j + 1) for j in range(len(g))])
        assert not any(out.response_mask[pos:start])
        assert not any(out.response_logprobs[pos:start])
        pos = start + len(g)
    assert pos == len(out.response_ids)
    # the observations are the chat template's: the sequence is the chat of the last turn's
    # prompt (every earlier reply and observation) and the last reply's tokens
    last_prompt = play.messages("frozenlake", ep.grids[:-1], ep.replies[:-1], style=GAMES["render"], history=True,
                                with_thinking=False)
    expected = tok.apply_chat_template(last_prompt, tokenize=False, add_generation_prompt=True) + tok.decode(gen[-1])
    assert tok.decode(seq) == expected
    # the local backend grows the same tokens (sft2rl.chat_tokens, the same builder): each
    # turn's prompt is the prompt the server got
    from sft2rl.chat_tokens import TokenChat, token_builder

    local = play.Episode("frozenlake", level, 0, GAMES, GAMES["eval"]["max_steps"], 5)
    chat = TokenChat(tok, token_builder(tok, "qwen2"))
    for call, g, t in zip(server.calls, gen, texts):
        assert chat.prompt(local.prompt()) == call["prompt_ids"]
        chat.reply(g, t)
        local.act(t)
    assert chat.ids == seq and chat.continued == len(server.calls) - 1
    log = [json.loads(x) for x in (run / vx.EPISODE_LOG).read_text().splitlines()]
    assert log[-1] == {"step": 4, "attempt": 1, "level": level["index"], "won": True, "lost": False, "steps": ep.steps,
                       "valid": ep.valid, "env_reward": 1.0, "score": pytest.approx(0.9)}
    hist = vx.game_rl_history(run / vx.EPISODE_LOG)
    assert hist[-1]["step"] == 5 and hist[-1]["success"] == 1.0  # weights version 4 = the rollout of step 5


def test_game_rl_on_verl_needs_the_history_prompt_and_plans_the_agent_loop(tmp_path):
    """verl trains one sequence per episode: the Markov prompt (history: false) is refused with
    the key to change; with history the plan runs prepare-game-rl, main_ppo with the loop file,
    and the export from the episode log."""
    kw = dict(rl_run="rl-sokoban-seed1", env="sokoban", init="m", levels="l.jsonl", rl=dict(CONFIG["rl"], seed=1),
              verl=vl.verl_settings(CONFIG), nnodes=1, gpus_per_node=1, code_root=str(REPO), run_dir="r",
              final="f", summary="s.json")
    for window in (False, 2):  # a window of turns is not one growing sequence either
        with pytest.raises(vl.VerlConfigError, match="games.history"):
            vl.game_rl_command(games=dict(CONFIG["games"], history=window), **kw)
    with pytest.raises(vl.VerlConfigError, match="keep_group_fraction"):
        vl.game_rl_command(games=dict(CONFIG["games"], history=True), **dict(kw, rl=dict(kw["rl"],
                                                                                          keep_group_fraction=0.25)))
    with pytest.raises(vl.VerlConfigError, match="games.rl.step_adv_weight"):  # GiGPO: local trainer only
        vl.game_rl_command(games=dict(CONFIG["games"], history=True), **dict(kw, rl=dict(kw["rl"], step_adv_weight=1.0)))
    # The games' default trains with GiGPO's step advantages (local only): on verl the plan stops
    # naming the key, and with it set to 0 the plan runs.
    assert CONFIG["games"]["rl"]["step_adv_weight"] > 0

    def plan(games_rl):
        config = dict(CONFIG, backend="verl", games=dict(CONFIG["games"], history=True, rl=games_rl))
        res = _snakemake(tmp_path / "wd", config=config, target="results/games/models/rl-frozenlake-seed1/final",
                         timeout=300)
        return res.returncode, res.stdout + res.stderr

    rc, out = plan(CONFIG["games"]["rl"])
    assert rc != 0 and "set games.rl.step_adv_weight: 0 on verl" in out, out[-3000:]
    rc, out = plan(dict(CONFIG["games"]["rl"], step_adv_weight=0.0))
    assert rc == 0, out[-3000:]
    assert "verl_export.py\" prepare-game-rl --run-dir results/games/rl/rl-frozenlake-seed1" in out
    assert "agent_loop_config_path=$PWD/results/games/rl/rl-frozenlake-seed1/agent_loops.yaml" in out
    assert '"data.max_response_length=$SFT2RL_RESPONSE_LENGTH"' in out
    assert "--episode-log results/games/rl/rl-frozenlake-seed1/episodes.jsonl" in out


def test_prepared_run_takes_the_local_tasks_levels_and_reply_limit(game_run, tmp_path):
    """verl plays the levels the local task does: games.rl.levels keeps the first N train levels,
    and a reply limit too short for the solver's replies stops the run before main_ppo."""
    from sft2rl.errors import ConfigError
    from sft2rl.io import read_parquet_rows

    out = game_run["dir"]
    kw = dict(init=str(out / "model"), levels=str(out / "frozenlake" / "levels.jsonl"), env="frozenlake",
              seed=RL["seed"], config_hash="h", train_batch=RL["train_batch"], epochs=1, total_steps=RL["total_steps"])
    plan = vx.prepare_game_rl(tmp_path / "two", games=dict(GAMES, rl=dict(GAMES["rl"], levels=2)), **kw)
    rows = read_parquet_rows(tmp_path / "two" / vx.GAME_TRAIN)
    assert plan["train_rows"] == len(rows) == 2 < len(game_run["levels"])
    assert [json.loads(r["extra_info"]["level"])["index"] for r in rows] == \
        [lv["index"] for lv in game_run["levels"][:2]]
    with pytest.raises(ConfigError, match="games.eval.max_new_tokens"):
        vx.prepare_game_rl(tmp_path / "think", games=dict(GAMES, with_thinking=True), **kw)
