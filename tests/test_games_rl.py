"""The RL task interface and the games as a multi-turn task: rows and masks, rewards, the
variance filter, trajectory advantages, and a short run of the shared trainer on FrozenLake."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sft2rl.rl_task import chain_turns, group_filter, pack_rows, step_advantages
from sft2rl.tasks.games import data, play, prompts
from test_games import CFG

GAMES = dict(copy.deepcopy(CFG), counts={"train": 6, "val": 3, "test": 3},
             eval={"max_steps": 4, "max_new_tokens": 6, "temperature": 1.0, "batch_size": 64, "seed": 0, "k_samples": 0},
             rl={"format_penalty": -0.1})
RL = dict(seed=1, train_mode="full", lora=dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear"),
          n=3, train_batch=2, ppo_mini_batch=2, ppo_epochs=1, epochs=1, total_steps=2, lr=1e-3, grad_clip=1.0,
          clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, keep_group_fraction=1.0, val_every=1,
          kl_coef=0.001, kl_type="low_var_kl", use_kl_loss=False, entropy_coef=0.0, norm_adv_by_std=True,
          temperature=1.0, top_p=1.0, max_prompt_length=384, max_response_length=6, save_freq=2)


def test_pack_rows_pads_prompts_left_and_responses_right():
    t = pack_rows([[5, 6], [7]], [[1, 2, 3], [4]], [[1, 0, 1], [1]], [[-0.5, 0.0, -1.0], [-2.0]], pad_id=0)
    assert t["prompt_ids"].tolist() == [[5, 6], [0, 7]] and t["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert t["response_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert t["response_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert t["loss_mask"].tolist() == [[1, 0, 1], [1, 0, 0]]
    assert t["logprobs"].tolist() == [[-0.5, 0.0, -1.0], [-2.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="loss mask"):
        pack_rows([[1]], [[1, 2]], [[1]], None, pad_id=0)


def test_chain_turns_extends_a_row_only_where_the_prompt_continues_it():
    """Episode 0 grows a history (turn 2's prompt = turn 1's prompt + reply + observation);
    episode 1's second prompt re-tokenises the reply (no extension) and its third continues
    that new row; episode 2 is Markov (same-length prompts): one row per turn."""
    turns = [(0, [1, 2], [5, 6], [-.1, -.2]), (1, [1, 3], [7], [-.3]), (2, [1, 4], [8], [-.4]),
             (0, [1, 2, 5, 6, 9], [5], [-.5]), (1, [1, 3, 70, 9], [7], [-.6]), (2, [1, 4], [8], [-.7]),
             (0, [1, 2, 5, 6, 9, 5, 9, 9], [6], [-.8]), (1, [1, 3, 70, 9, 7, 9], [2], [-.9])]
    owner, prompts_, tails, loss, logps, turn_of = chain_turns(turns)
    assert owner == [0, 1, 2, 1, 2]
    assert prompts_ == [[1, 2], [1, 3], [1, 4], [1, 3, 70, 9], [1, 4]]
    assert tails == [[5, 6, 9, 5, 9, 9, 6], [7], [8], [7, 9, 2], [8]]
    assert loss == [[1, 1, 0, 1, 0, 0, 1], [1], [1], [1, 0, 1], [1]]
    assert logps[0] == [-.1, -.2, 0.0, -.5, 0.0, 0.0, -.8] and logps[3] == [-.6, 0.0, -.9]
    # each sampled token's turn of its episode (-1 on the observations between them)
    assert turn_of == [[0, 0, -1, 1, -1, -1, 2], [0], [0], [1, -1, 2], [1]]
    # every sampled token keeps its place: the loss-1 tokens of an episode's rows are its replies in order
    for ep in range(3):
        sampled = [t for o, tl, m in zip(owner, tails, loss) if o == ep for t, b in zip(tl, m) if b]
        assert sampled == [t for i, _, r, _ in turns if i == ep for t in r]
    # without log-probs (an engine that gives none) the rows have none
    assert chain_turns([(0, [1], [2], None), (0, [1, 2, 3], [4], None)])[4] == [None]


def test_group_filter_keeps_the_groups_with_the_largest_reward_spread():
    scores = np.array([0, 0, 0, 1, 0, 1, 5, -5, 0, 1, 1, 1.0])
    groups = np.repeat(np.arange(4), 3)
    assert group_filter(scores, groups, 1.0).tolist() == [True] * 4
    assert group_filter(scores, groups, 0.25).tolist() == [False, False, True, False]
    assert group_filter(scores, groups, 0.5).tolist() == [False, True, True, False]
    assert group_filter(scores, groups, 0.01).sum() == 1  # at least one group
    # a fraction of the groups rounds up: 0.25 of 6 groups keeps 2 (the two widest spreads)
    six = np.array([[0.0, float(g)] for g in range(6)]).ravel()
    assert group_filter(six, np.repeat(np.arange(6), 2), 0.25).tolist() == [False] * 4 + [True] * 2


def test_trajectory_advantage_is_the_group_normalised_score():
    from sft2rl.grpo import trajectory_advantages

    adv = trajectory_advantages(torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0]), np.array([0, 0, 0, 1, 1]), True)
    m, s = 1 / 3, float(np.std([1, 0, 0], ddof=1))
    assert adv.tolist() == pytest.approx([(1 - m) / (s + 1e-6), -m / (s + 1e-6), -m / (s + 1e-6), 0.0, 0.0], abs=1e-5)


def test_step_advantage_normalises_returns_among_the_turns_from_one_state():
    """GiGPO's step level: a state reached by several turns of a group compares their
    discounted returns; a state reached once, or in another group, gives 0."""
    turns = [[("s", 0.0), ("a", 1.0)],   # group 0: s -> a -> goal
             [("s", 0.0), ("b", 0.0)],   # group 0: s -> b -> hole
             [("s", 0.0), ("a", 0.0)],   # group 0: s -> a -> hole
             [("s", 5.0)]]               # group 1: another level's s
    got = step_advantages(turns, np.array([0, 0, 0, 1]), gamma=0.5, norm_by_std=False)
    r_s = np.array([0.5, 0.0, 0.0])      # returns from s: 0 + 0.5 * 1, 0, 0
    assert got[:3, 0].tolist() == pytest.approx((r_s - r_s.mean()).tolist())
    assert got[0, 1] == pytest.approx(0.5) and got[2, 1] == pytest.approx(-0.5)  # a: 1 against 0
    assert got[1, 1] == 0.0 and got[3].tolist() == [0.0, 0.0]  # b once; group 1's s alone
    normed = step_advantages(turns, np.array([0, 0, 0, 1]), gamma=0.5, norm_by_std=True)
    assert normed[0, 0] == pytest.approx((0.5 - 1 / 6) / (np.std(r_s, ddof=1) + 1e-6))
    assert step_advantages([[("s", 1.0)], [("s", 1.0)]], np.array([0, 0]), 0.9, True).tolist() == [[0.0], [0.0]]


def test_every_episode_of_a_run_has_its_own_environment_seed():
    """Slippery ice draws its slips from the episode's seed: no two episodes of a run (50
    steps, consecutive rollout seeds, 8 levels x 8 episodes) share one. The old spacing by
    7 gave 3,200 episodes 407 seeds."""
    from sft2rl.tasks.games.rl import episode_seeds

    seeds = [s for step in range(50) for s in episode_seeds(1_000_003 + step, 8, 8)]
    assert len(seeds) == len(set(seeds)) == 3200


@pytest.mark.parametrize("env", ["frozenlake", "sokoban"])
def test_episode_reward_is_ragen_reward(env):
    """The BFS plan played through the environment: FrozenLake +1 on the goal; Sokoban -0.1 per
    action, +1 for the box onto its target, +10 on solving; a reply without an action does not
    move and costs the format penalty."""
    from sft2rl.rl_task import Rollout
    from sft2rl.tasks.games.rl import GamesTask

    lv = data.generate_levels(env, CFG)[0]
    g = dict(GAMES, eval=dict(GAMES["eval"], max_steps=len(lv["solution"]) + 1))
    ep = play.Episode(env, lv, 0, g, len(lv["solution"]) + 1, 0)
    ep.act("I do not know")
    for a in lv["solution"]:
        ep.act(f"<answer> {a} </answer>")
    assert ep.won and ep.steps == len(lv["solution"]) + 1 and ep.valid == len(lv["solution"])
    expected_env = 1.0 if env == "frozenlake" else -0.1 * len(lv["solution"]) + 1 + 10
    assert ep.env_reward == pytest.approx(expected_env)
    task = GamesTask(env, "unused", g)
    ro = Rollout(*(torch.zeros(1, 1),) * 5, torch.zeros(1, dtype=torch.long), np.zeros(1, dtype=int), info=[ep])
    scores, metrics = task.rewards([lv], ro)
    assert scores.tolist() == pytest.approx([expected_env - 0.1])
    assert metrics["success"] == 1.0 and metrics["invalid_rate"] == pytest.approx(1 / ep.steps)
    # GiGPO's anchor of each turn: the state the turn's prompt shows, before its move
    turns = task.turn_rewards([lv], ro)[0]
    assert [a for a, _ in turns] == ["\n".join(g) for g in ep.grids[:-1]]
    assert turns[0][1] == pytest.approx(-0.1)  # the reply without an action: the format penalty


def write_frozenlake_and_tiny_model(out, games: dict):
    """FrozenLake levels of ``games`` under ``out/frozenlake`` and an untrained tiny model with
    the games tokenizer under ``out/model``; returns the tokenizer."""
    from sft2rl.model import build_tiny_model, build_tokenizer
    from sft2rl.tasks.games.prompts import base_added_tokens

    from conftest import TINY_ARCH

    data.write_game_data("frozenlake", games, out / "frozenlake")
    levels = data.read_levels(out / "frozenlake" / "levels.jsonl")
    docs = data.corpus_texts(levels, games, levels_per_document=2, marker="Move:")
    tok = build_tokenizer(docs, 400, tuple(base_added_tokens(dict(games, tiny={"cell_tokens": True}))))
    torch.manual_seed(0)
    model = build_tiny_model(tok, TINY_ARCH)
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return tok


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """FrozenLake levels on disk and an untrained tiny model with the games tokenizer."""
    out = tmp_path_factory.mktemp("games_rl")
    write_frozenlake_and_tiny_model(out, GAMES)
    return out


def test_multi_turn_rollout_rows_masks_and_rewards(frozen):
    """Every turn of every episode is one row: its prompt is the one play builds, its response
    the policy's reply (loss mask on every sampled token, nothing else), its trajectory the
    episode; the scores are the episodes' rewards."""
    from sft2rl.model import load_model
    from sft2rl.tasks.games.rl import GamesTask

    model, tok = load_model(str(frozen / "model"))
    task = GamesTask("frozenlake", str(frozen / "frozenlake" / "levels.jsonl"), GAMES)
    items = task.load(tok, RL)
    assert len(items) == GAMES["counts"]["train"] and len(task.val_levels) == GAMES["counts"]["val"]
    ro = task.rollout(model, tok, items[:2], 3, RL, seed=7)
    eps = ro.info
    assert ro.traj_group.tolist() == [0, 0, 0, 1, 1, 1] and len(eps) == 6
    assert [int((ro.row_traj == i).sum()) for i in range(6)] == [e.steps for e in eps]
    # one shared prompt (the common start of every turn's prompt); the loss only on sampled tokens
    assert ro.prompt_index.tolist() == [0] * len(ro.row_traj) and ro.prompt_mask.all()
    assert (ro.prompt_ids == ro.prompt_ids[:1]).all() and ro.prompt_ids.shape[1] > 50
    assert ((ro.loss_mask == 1) <= (ro.response_mask == 1)).all()
    assert ro.logprobs is not None and float(ro.logprobs[ro.loss_mask == 0].abs().sum()) == 0.0
    turn = {i: 0 for i in range(6)}
    for row in range(len(ro.row_traj)):
        i = int(ro.row_traj[row])
        e = eps[i]
        resp, loss = ro.response_ids[row][ro.response_mask[row].bool()], ro.loss_mask[row][ro.response_mask[row].bool()]
        first_sampled = int(loss.argmax())
        assert loss[first_sampled:].all() and not loss[:first_sampled].any()  # context, then the reply
        assert tok.decode(resp[first_sampled:], skip_special_tokens=True) == e.replies[turn[i]]
        grids = e.grids[:turn[i] + 1]
        msgs = prompts.messages("frozenlake", grids, e.replies[:turn[i]], style=GAMES["render"], history=False,
                                with_thinking=False)
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        whole = ro.prompt_ids[row].tolist() + resp[:first_sampled].tolist()
        assert whole == tok.encode(text, add_special_tokens=False)  # the prompt play builds, whole
        turn[i] += 1
    # the trainer's log-probs with the shared prompt computed once = the plain forward pass over
    # each whole row = the engine's own log-probs of the sampled tokens
    import dataclasses

    from sft2rl.grpo import _chunked_logprobs

    with torch.no_grad():
        shared = _chunked_logprobs(model, ro, ro.response_mask, 1.0)
        plain = _chunked_logprobs(model, dataclasses.replace(ro, prompt_index=None), ro.response_mask, 1.0)
    on = ro.loss_mask.bool()
    assert torch.allclose(shared[on], plain[on], atol=1e-5)
    assert torch.allclose(shared[on], ro.logprobs[on], atol=1e-4)
    scores, metrics = task.rewards(items[:2], ro)
    assert scores.tolist() == pytest.approx([e.env_reward - 0.1 * (e.steps - e.valid) for e in eps])
    # the same seed gives the same episodes
    again = task.rollout(model, tok, items[:2], 3, RL, seed=7)
    assert [e.replies for e in again.info] == [e.replies for e in eps]


def sampled_turns(ro):
    """Every reply of a rollout in row order: (trajectory, the row's tokens before the reply,
    the reply's tokens), a reply being a run of loss-mask-1 tokens; asserts no row is without one."""
    out = []
    for row in range(len(ro.row_traj)):
        real = ro.response_mask[row].bool()
        resp, loss = ro.response_ids[row][real].tolist(), ro.loss_mask[row][real].tolist()
        starts = [k for k in range(len(loss)) if loss[k] and (k == 0 or not loss[k - 1])]
        assert starts, "a row without a sampled token"
        for k in starts:
            end = next((j for j in range(k, len(loss)) if not loss[j]), len(loss))
            out.append((int(ro.row_traj[row]), ro.prompt_ids[row].tolist() + resp[:k], resp[k:end]))
    return out


def test_the_reply_limit_counts_the_reply_sft_trains_through_its_stop_id(frozen):
    """reply_length: the tokens SFT trains as the reply (encode_conversation's labels) through
    the first stop id, also under a template that adds a think scaffold to the reply (Qwen3's):
    the solver's text alone fell short by the stop id (and by the scaffold)."""
    from transformers import AutoTokenizer

    from sft2rl.generation import stop_token_ids
    from sft2rl.sft import IGNORE, encode_conversation
    from sft2rl.tasks.games.play import reply_length

    from test_model_sft import QWEN3_LIKE

    tok = AutoTokenizer.from_pretrained(frozen / "model")
    text = "<answer> Up </answer>"
    stops = set(stop_token_ids(None, tok))
    for template in (None, QWEN3_LIKE):
        if template:
            tok.chat_template = template
        enc = encode_conversation(tok, [{"role": "user", "content": "grid"}, {"role": "assistant", "content": text}],
                                  512, "last")
        trained = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != IGNORE]
        through_stop = next(i for i, t in enumerate(trained) if t in stops) + 1
        assert reply_length(tok, text) == through_stop > len(tok.encode(text, add_special_tokens=False))
    assert reply_length(tok, text) >= len(tok.encode(text, add_special_tokens=False)) + 5  # "<think>\n\n</think>\n\n"


def test_max_prompt_length_bounds_the_first_turn_as_at_load_not_the_grown_history(frozen):
    """rl.max_prompt_length bounds the first turn's prompts (checked when the task loads, as
    verl's data.max_prompt_length does); a history that grows past it in later turns is played
    on, as in play and in verl's agent loops. It stopped the rollout before."""
    from sft2rl.generation import prompt_lengths
    from sft2rl.model import load_model
    from sft2rl.tasks.games.play import Episode
    from sft2rl.tasks.games.rl import GamesTask

    games = dict(GAMES, history=True)
    model, tok = load_model(str(frozen / "model"))
    task = GamesTask("frozenlake", str(frozen / "frozenlake" / "levels.jsonl"), games)
    items = task.load(tok, RL)
    first = max(prompt_lengths(tok, [Episode("frozenlake", lv, 0, games, 4, 0).prompt() for lv in items[:2]]))
    cfg = dict(RL, max_prompt_length=first)  # the first prompts fit exactly
    ro = task.rollout(model, tok, items[:2], 3, cfg, seed=7)
    assert max(e.steps for e in ro.info) > 1
    assert int(ro.prompt_mask.sum(1).max() + ro.response_mask.sum(1).max()) > first  # the history grew past it
    with pytest.raises(ValueError, match="first-turn prompt has"):
        task.load(tok, dict(RL, max_prompt_length=first - 1))


@pytest.mark.parametrize("qwen3", [False, True])
def test_the_verl_episode_budget_holds_every_observation_the_token_builder_appends(frozen, qwen3):
    """rollout.response_length's observation tokens hold what the agent loop's token builder
    appends for each observation (TokenChat, as verl's loops grow their sequences), also under
    a template that gives the last assistant turn a think scaffold it drops from earlier ones
    (Qwen3's): measured with the template alone the budget fell short by the scaffold."""
    from transformers import AutoTokenizer

    from sft2rl.chat_tokens import TokenChat, token_builder
    from sft2rl.generation import turn_end_token_id
    from sft2rl.tasks.games.data import read_levels
    from sft2rl.tasks.games.play import Episode
    from sft2rl.tasks.games.prompts import OBSERVATION, render
    from sft2rl.tasks.games.rl import _path_grids, episode_token_budget

    from test_model_sft import QWEN3_LIKE

    tok = AutoTokenizer.from_pretrained(frozen / "model")
    model_type = "qwen3" if qwen3 else "qwen2"
    if qwen3:
        tok.chat_template = QWEN3_LIKE
    games = dict(GAMES, history=True)
    levels = read_levels(frozen / "frozenlake" / "levels.jsonl", "train")
    budget = episode_token_budget(tok, "frozenlake", levels, games, model_type)
    reply = "<answer> Up </answer>"
    appended = 0
    for lv in levels:
        first = Episode("frozenlake", lv, 0, games, 4, 0).prompt()
        for grid in _path_grids("frozenlake", lv, games):
            chat = TokenChat(tok, token_builder(tok, model_type))
            chat.prompt(first)
            chat.reply(tok.encode(reply, add_special_tokens=False) + [turn_end_token_id(tok)], reply)
            before = len(chat.ids)
            chat.prompt(first + [{"role": "assistant", "content": reply},
                                 {"role": "user", "content": OBSERVATION.format(grid=render(grid, games["render"]))}])
            assert chat.continued == 1
            appended = max(appended, len(chat.ids) - before)
    assert appended <= budget["observation_tokens"] <= appended + 3
    # the template's own difference (the budget before): short of it by the scaffold under Qwen3's
    head = Episode("frozenlake", levels[0], 0, games, 4, 0).prompt() + [{"role": "assistant", "content": "x"}]
    user = [{"role": "user", "content": OBSERVATION.format(grid=render(_path_grids("frozenlake", levels[0], games)[0],
                                                                       games["render"]))}]
    def length(msgs, gen):
        return len(tok.encode(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen),
                              add_special_tokens=False))

    rendered = length(head + user, True) - length(head, False)
    assert (rendered + 2 < appended) == qwen3


def test_history_rollout_is_one_row_per_episode_with_the_turns_log_probs(frozen):
    """With the history prompt every turn continues its episode's tokens (token in, token
    out), so an episode is one row even where a sampled reply does not re-tokenise as sampled:
    each reply's context in its row is exactly the prompt that turn had (the tokens play
    builds: the chat rendered where every earlier reply re-tokenises as sampled), and the
    trainer's log-prob of every sampled token is the engine's."""
    from sft2rl.chat_tokens import TokenChat, token_builder
    from sft2rl.grpo import _chunked_logprobs
    from sft2rl.model import load_model
    from sft2rl.tasks.games.rl import GamesTask

    games = dict(GAMES, history=True)
    model, tok = load_model(str(frozen / "model"))
    task = GamesTask("frozenlake", str(frozen / "frozenlake" / "levels.jsonl"), games)
    items = task.load(tok, RL)
    ro = task.rollout(model, tok, items[:2], 3, dict(RL, max_prompt_length=2048), seed=7)
    eps = ro.info
    assert ro.row_traj.tolist() == list(range(6)) and sum(e.steps > 1 for e in eps) > 0  # one row per episode
    turn = {i: 0 for i in range(6)}
    chats = [TokenChat(tok, token_builder(tok, model.config.model_type)) for _ in eps]
    canonical = {i: True for i in range(6)}
    rendered = 0
    for i, before, reply in sampled_turns(ro):  # each reply: the tokens before it are that turn's whole prompt
        e = eps[i]
        text = tok.decode(reply, skip_special_tokens=True)
        assert text == e.replies[turn[i]]
        msgs = prompts.messages("frozenlake", e.grids[:turn[i] + 1], e.replies[:turn[i]], style="reference",
                                history=True, with_thinking=False)
        assert before == chats[i].prompt(msgs)
        if canonical[i]:  # every earlier reply re-tokenised as sampled: the rendered chat
            chat_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            assert before == tok.encode(chat_text, add_special_tokens=False)
            rendered += 1
        chats[i].reply(reply, text)
        canonical[i] &= tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")] \
            == reply
        turn[i] += 1
    assert turn == {i: e.steps for i, e in enumerate(eps)} and rendered >= 6
    with torch.no_grad():
        logp = _chunked_logprobs(model, ro, ro.response_mask, 1.0)
    on = ro.loss_mask.bool()
    assert torch.allclose(logp[on], ro.logprobs[on], atol=1e-4)


def test_token_chat_continues_the_sampled_tokens_and_renders_what_does_not_extend(frozen):
    """A conversation's tokens: replies that re-tokenise as sampled give exactly the rendered
    chat; a reply sampled as other tokens than its text's (a space and a newline apart) stays
    as sampled and the next observation follows it; a prompt that does not extend the chat (a
    Markov prompt, a one-turn window past its first turn) is the chat rendered whole."""
    from sft2rl.chat_tokens import TokenChat, chat_ids, token_builder
    from sft2rl.model import load_model

    model, tok = load_model(str(frozen / "model"))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    lv = data.read_levels(frozen / "frozenlake" / "levels.jsonl", "train")[0]
    grids = [play.Episode("frozenlake", lv, 0, GAMES, 4, 0).grid()] * 3

    def msgs(n, history=True, answers=("<answer> Up </answer>", "<answer> Left </answer>")):
        return prompts.messages("frozenlake", grids[:n + 1], list(answers[:n]), style="reference", history=history,
                                with_thinking=False)

    chat = TokenChat(tok, token_builder(tok, model.config.model_type))
    assert chat.prompt(msgs(0)) == chat_ids(tok, msgs(0))
    for n, answer in enumerate(["<answer> Up </answer>", "<answer> Left </answer>"]):
        chat.reply(tok.encode(answer, add_special_tokens=False) + [end], answer)
        assert chat.prompt(msgs(n + 1)) == chat_ids(tok, msgs(n + 1))  # canonical replies: the rendered chat
    assert chat.continued == 2

    odd = "<answer> Up \n"
    canon = tok.encode(odd, add_special_tokens=False)
    split = tok.encode("<answer> Up", add_special_tokens=False) + tok.encode(" ", add_special_tokens=False) \
        + tok.encode("\n", add_special_tokens=False)
    assert split != canon and tok.decode(split) == odd  # two ways to write the same text
    chat = TokenChat(tok, token_builder(tok, model.config.model_type))
    first = chat.prompt(msgs(0))
    chat.reply(split + [end], odd)
    grown = chat.prompt(msgs(1, answers=(odd,)))
    assert grown[:len(first) + len(split) + 1] == first + split + [end]  # the reply as sampled
    rendered = chat_ids(tok, msgs(1, answers=(odd,)))
    assert grown != rendered and tok.decode(grown) == tok.decode(rendered)  # same text, other tokens
    assert grown[len(first) + len(split) + 1:] == rendered[len(first) + len(canon) + 1:]  # the observation's own

    for history in (False, 1):  # prompts that drop earlier turns are rendered whole
        chat = TokenChat(tok, token_builder(tok, model.config.model_type))
        chat.prompt(msgs(0, history))
        for n, answer in enumerate(["<answer> Up </answer>", "<answer> Left </answer>"]):
            chat.reply(tok.encode(answer, add_special_tokens=False) + [end], answer)
            assert chat.prompt(msgs(n + 1, history)) == chat_ids(tok, msgs(n + 1, history))
        assert chat.continued == (0 if history is False else 1)


def test_games_rl_runs_on_the_shared_trainer_with_validation(frozen, tmp_path):
    """Two steps of the shared trainer on FrozenLake: step 0 and each step validated on the val
    levels, the task's metrics in the history, the policy moved (an untrained model's episodes
    often earn one reward, so an entropy bonus gives the update a gradient; the run is checked
    for its bookkeeping, not for learning)."""
    from sft2rl.grpo import train_rl
    from sft2rl.tasks.games.rl import GamesTask

    task = GamesTask("frozenlake", str(frozen / "frozenlake" / "levels.jsonl"), GAMES)
    moving = dict(RL, entropy_coef=0.01)
    summary = train_rl(str(frozen / "model"), task, str(tmp_path / "run"), moving)
    hist = summary["history"]
    assert [h["step"] for h in hist] == [0, 1, 2] and summary["steps"] == 2
    assert all("val_success" in h for h in hist)
    for h in hist[1:]:
        assert {"success", "invalid_rate", "turns", "reward_std", "entropy"} <= set(h)
        assert 1 <= h["turns"] <= GAMES["eval"]["max_steps"]
        assert 0 <= h["replies_cut"] <= 1  # replies at the reply limit without a stop id, per step
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.json").read_text())
    assert state["step"] == 2
    assert all("kl" in h for h in hist[1:])  # validated steps log the KL to the reference
    # without a KL term the reference runs only on validation steps and the last: its KL is a diagnostic
    quiet = train_rl(str(frozen / "model"), task, str(tmp_path / "quiet"), dict(moving, val_every=0))["history"]
    assert [h["step"] for h in quiet] == [1, 2] and "kl" not in quiet[0] and quiet[1]["kl"] > 0  # it moved
    assert quiet[0]["pg_loss"] == pytest.approx(hist[1]["pg_loss"], abs=1e-6)  # the same first update
    with pytest.raises(ValueError, match="max_new_tokens"):
        train_rl(str(frozen / "model"), task, str(tmp_path / "bad"), dict(RL, max_response_length=7))


def test_token_advantage_is_the_trajectory_s_plus_the_weighted_step_advantage_of_its_turn():
    from sft2rl.grpo import _with_step_advantages
    from sft2rl.rl_task import Rollout

    # two episodes of one level; episode 0 is one row of two turns (an observation between them),
    # episode 1 two rows of one turn each
    loss = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 0, 0]])
    turn_of = torch.tensor([[0, 0, -1, 1], [0, -1, -1, -1], [1, 1, -1, -1]])
    ro = Rollout(*(torch.zeros(3, 4),) * 4, loss, torch.tensor([0, 1, 1]), np.array([0, 0]), turn_of=turn_of)
    turns = [[("s", 0.0), ("a", 1.0)], [("s", 0.0), ("b", 0.0)]]
    base = torch.full((3, 4), 0.5) * loss
    adv, m = _with_step_advantages(base, turns, np.array([1.0, 0.0]), ro, 2.0,
                                   {"step_adv_gamma": 1.0, "norm_adv_by_std": False})
    # from s: returns 1 and 0 -> +0.5 / -0.5; a and b reached once -> 0
    assert adv.tolist() == [[1.5, 1.5, 0.0, 0.5], [-0.5, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]
    assert m["step_adv_nonzero"] == pytest.approx(0.5)
    from sft2rl.errors import RunError

    with pytest.raises(RunError, match="do not sum"):
        _with_step_advantages(base, turns, np.array([2.0, 0.0]), ro, 2.0,
                              {"step_adv_gamma": 1.0, "norm_adv_by_std": False})


def test_step_advantages_reach_each_sampled_token_of_its_turn(frozen, tmp_path):
    """With ``step_adv_weight`` the games' turn rewards sum to the episode scores, every
    sampled token is marked with its turn, and a short run logs how many turns shared a state;
    a task without turn rewards (QA's one-turn answers) is refused before training."""
    from sft2rl.grpo import train_rl
    from sft2rl.model import load_model
    from sft2rl.tasks.games.rl import GamesTask

    model, tok = load_model(str(frozen / "model"))
    task = GamesTask("frozenlake", str(frozen / "frozenlake" / "levels.jsonl"), GAMES)
    items = task.load(tok, RL)
    ro = task.rollout(model, tok, items[:2], 3, RL, seed=7)
    turns = task.turn_rewards(items[:2], ro)
    scores, _ = task.rewards(items[:2], ro)
    assert [sum(r for _, r in t) for t in turns] == pytest.approx(scores.tolist())
    assert [len(t) for t in turns] == [e.steps for e in ro.info]
    assert [t[0][0] for t in turns[:3]] == ["\n".join(ro.info[0].grids[0])] * 3  # one start state per level
    assert ((ro.turn_of >= 0) == (ro.loss_mask == 1)).all()
    for row in range(len(ro.row_traj)):  # Markov prompt: one row per turn, in order
        marks = ro.turn_of[row][ro.loss_mask[row] == 1].unique().tolist()
        assert len(marks) == 1
    for i in range(len(ro.info)):
        rows = (ro.row_traj == i).nonzero().flatten().tolist()
        assert [int(ro.turn_of[r].max()) for r in rows] == list(range(len(rows)))
    hist = train_rl(str(frozen / "model"), task, str(tmp_path / "gigpo"),
                    dict(RL, val_every=0, step_adv_weight=1.0, step_adv_gamma=0.95))["history"]
    assert len(hist) == 2 and all(0 <= h["step_adv_nonzero"] <= 1 for h in hist)

    class OneTurn:
        def key(self):
            return {}

        def load(self, tokenizer, cfg):
            return [0, 1]

    with pytest.raises(ValueError, match="step_adv_weight = 1.0.*OneTurn"):
        train_rl(str(frozen / "model"), OneTurn(), str(tmp_path / "one"), dict(RL, step_adv_weight=1.0))
    assert not (tmp_path / "one").exists(), "refused before the run directory is made"


def test_restart_key_covers_the_task_modules_and_no_other_task():
    """A run's key holds the trainer's and its own task's modules: editing the games' play code
    restarts games RL, editing QA's reward does not (and the reverse)."""
    from sft2rl.fingerprint import module_closure

    games = module_closure(["grpo", "tasks.games.rl"])
    qa = module_closure(["grpo", "tasks.qa.rl"])
    assert {"tasks.games.play", "tasks.games.rl", "rl_task", "generation"} <= set(games)
    assert not any(m.startswith("tasks.qa") for m in games)
    assert {"tasks.qa.reward", "tasks.qa.rl"} <= set(qa) and not any(m.startswith("tasks.games") for m in qa)


def test_sampled_episodes_draw_from_the_eval_nucleus(frozen, tmp_path):
    """``games.eval.top_p`` reaches the sampled episodes: a nucleus that holds only the top
    token plays every sampled episode as the greedy one; the full distribution does not."""
    stats = dict(ci_level=0.95, bootstrap_samples=200, bootstrap_seed=0)
    replies = {}
    for top_p in (1e-6, 1.0):
        ev = dict(GAMES["eval"], k_samples=2, top_p=top_p, max_new_tokens=16)
        out = tmp_path / f"p{top_p}"
        play.evaluate_policy("frozenlake", "base", str(frozen / "frozenlake" / "levels.jsonl"), str(frozen / "model"),
                             GAMES, ev, stats, str(out / "episodes.jsonl"), str(out / "summary.json"))
        eps = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
        greedy = {e["level"]: e["replies"] for e in eps if e["mode"] == "greedy"}
        sampled = [e for e in eps if e["mode"] == "sampled"]
        assert len(sampled) == 2 * len(greedy)
        replies[top_p] = sum(e["replies"] == greedy[e["level"]] for e in sampled)
    assert replies[1e-6] == 2 * 3  # every sampled episode is the greedy one
    assert replies[1.0] < 2 * 3


def test_own_rows_showing_a_held_out_state_are_refused_dropped_or_kept(frozen, tmp_path):
    """games.sft_files: a row whose prompt shows a state a test level can reach (in the train
    rows also a val level's; any grid of the prompt, the history's included) is refused naming
    file and line, dropped, or kept; overlap.json counts them."""
    from sft2rl.errors import DataError
    from sft2rl.io import write_jsonl

    levels_path = frozen / "frozenlake" / "levels.jsonl"
    levels = data.read_levels(levels_path)
    first = {s: next(lv["grid"] for lv in levels if lv["split"] == s) for s in ("train", "val", "test")}
    start = {s: data.rules("frozenlake", g).grid(data.rules("frozenlake", g).start) for s, g in first.items()}

    def row(grids):
        answers = ["<answer> Up </answer>"] * (len(grids) - 1)
        return {"prompt": prompts.messages("frozenlake", grids, answers, style=GAMES["render"], history=True,
                                           with_thinking=False), "response": "<answer> Down </answer>"}

    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_jsonl(train, [row([start["train"]]), row([start["train"], start["test"]]), row([start["val"]])])
    write_jsonl(val, [row([start["val"]]), row([start["train"]])])
    kw = dict(levels=levels_path, max_steps=GAMES["eval"]["max_steps"], style=GAMES["render"])
    out = tmp_path / "user"
    with pytest.raises(DataError, match=rf"^{train}:2: field 'prompt': 2 of 3 rows show a state that a held-out "
                                        r"frozenlake level can reach within 4 moves \(test or val levels\)"):
        data.write_user_rows(str(train), str(val), out, overlap_out=tmp_path / "o.json", **kw)
    assert not out.exists() and not (tmp_path / "o.json").exists()
    counts = data.write_user_rows(str(train), str(val), out, policy="drop", overlap_out=tmp_path / "o.json", **kw)
    assert counts == {"train": 1, "val": 2}  # the val rows may show val levels: only test states are held from them
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["train"]["lines"] == [2, 3] and report["val"]["showing_held_out"] == 0
    assert data.write_user_rows(str(train), str(val), out, policy="allow", **kw) == {"train": 3, "val": 2}
    # the grids are read back exactly as play renders them
    assert data.grids_in_text(prompts.render(start["test"], GAMES["render"]) + "\nnext", GAMES["render"]) == \
        [start["test"]]


def test_random_baselines_play_the_val_levels_and_the_train_levels_rl_plays(monkeypatch):
    """The RL curves' random policy plays the val levels and the first games.rl.levels train
    levels, episodes each, within games.eval.max_steps, and reports the share won."""
    levels = [{"env": "sokoban", "split": s, "index": i} for i, s in enumerate(["train"] * 5 + ["val"] * 3 + ["test"] * 2)]
    calls = []

    def fake_play(env, lvs, policy, cfg, *, episodes, max_steps, seed, progress=True):
        calls.append(([lv["index"] for lv in lvs], episodes, max_steps, seed))
        return [{"won": lv["index"] % 2 == 0} for lv in lvs for _ in range(episodes)]

    monkeypatch.setattr(play, "play", fake_play)
    monkeypatch.setattr(data, "read_levels", lambda path, split=None: [lv for lv in levels if split in (None, lv["split"])])
    games = {"eval": {"seed": 7, "max_steps": 9}, "rl": {"levels": 2}}
    got = play.random_baselines("levels.jsonl", games, episodes=4)
    assert calls == [([5, 6, 7], 4, 9, 7), ([0, 1], 4, 9, 7)]
    assert got == {"val": pytest.approx(1 / 3), "train": pytest.approx(1 / 2)}  # levels 6; 0 won
