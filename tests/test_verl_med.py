"""The medical consultation on verl, on CPU: the run's files (verl rows with their turn budgets,
agent-loop file, token budget), the ``main_ppo`` overrides composed against verl 0.9.1's Hydra
configs, and the agent loop built by Hydra from that file as verl's worker builds it, playing
consultations against a stub rollout server that returns scripted tokens (sequence, masks,
turns, log-probs, reward and its terms checked against the local backend's consultation of the
same replies). What needs a GPU (vLLM, the trainer) does not run here."""
from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

pytest.importorskip("verl")

from sft2rl import verl_export as vx  # noqa: E402
from sft2rl import verl_launch as vl  # noqa: E402
from sft2rl.tasks.med import consult, dialog  # noqa: E402
from sft2rl.tasks.med.data import read_cases  # noqa: E402
from sft2rl.tasks.med.patient import patient_backend  # noqa: E402
from sft2rl.tasks.med.reward import TERMS, weights  # noqa: E402
from sft2rl.tasks.med.rl import budgets  # noqa: E402
from sft2rl.tasks.med.verl_agent import LOG_FIELDS  # noqa: E402
from test_med import MED  # noqa: E402
from test_med_patient import stub  # noqa: E402,F401  (the loopback patient endpoint)
from test_med_rl import clinic_model  # noqa: E402,F401  (the clinic's cases and a tiny model)
from test_verl import CONFIG, REPO, compose  # noqa: E402
from test_verl_games import StubServer, check_agent_config, overrides_for as agent_overrides  # noqa: E402

MED_V = {"eval": dict(MED["eval"], max_turns=6, max_new_tokens=96), "patient": "rule",
         "rl": {"with_thinking": False, "budget_range": [2, 6], "reward": {"repeated": -3.0}}}
REPLY = MED_V["eval"]["max_new_tokens"]
RL = dict(CONFIG["rl"], seed=3, train_batch=2, n=4, total_steps=3, train_mode="full", max_prompt_length=1024,
          max_response_length=REPLY)
END = "<|im_end|>"


def overrides_for(out, run, response_length):
    return agent_overrides(out, run, response_length, rl=RL, agent_name="sft2rl_med", run_name="rl-dynamic-seed3")


@pytest.fixture(scope="module")
def med_run(clinic_model):  # noqa: F811
    """A prepared verl medical run (dynamic budget) on the clinic's train cases."""
    from transformers import AutoTokenizer

    run = clinic_model / "verl_run"
    plan = vx.prepare_med_rl(run, init=str(clinic_model / "model"), cases=str(clinic_model / "train_cases.jsonl"),
                             mode="dynamic", med=MED_V, seed=RL["seed"],
                             config_hash=vl.config_hash(overrides_for(clinic_model, run, "$SFT2RL_RESPONSE_LENGTH")),
                             max_prompt_length=RL["max_prompt_length"], train_batch=RL["train_batch"], epochs=1,
                             total_steps=RL["total_steps"])
    return {"dir": clinic_model, "run": run, "plan": plan, "cases": read_cases(clinic_model / "train_cases.jsonl"),
            "tok": AutoTokenizer.from_pretrained(clinic_model / "model")}


def test_prepared_run_rows_budgets_and_composed_config(med_run):
    """One verl row per train case (first-turn chat with its budget stated, the agent loop's
    name, the case and its budget drawn per case), loaded by verl's dataset; the consultation's
    token budget; the overrides compose into verl's config with the loop file, async rollout,
    raw chat and verl's own grpo."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    run, plan, tok, cases = med_run["run"], med_run["plan"], med_run["tok"], med_run["cases"]
    cfg = compose("ppo_trainer", overrides_for(med_run["dir"], run, plan["response_length"]))
    ds = RLHFDataset(data_files=[str(run / vx.GAME_TRAIN)], tokenizer=tok, config=cfg.data, processor=None)
    drawn = budgets("dynamic", len(cases), 6, [2, 6], RL["seed"])
    assert len(ds) == len(cases) == plan["train_rows"] == 6 and len(set(drawn)) > 1
    for i in range(len(ds)):
        item = ds[i]
        assert item["agent_name"] == "sft2rl_med"
        assert json.loads(item["extra_info"]["case"]) == cases[i] and item["extra_info"]["max_turns"] == drawn[i]
        first = consult.Consultation(i, cases[i], drawn[i], False).prompt()
        assert [dict(m) for m in item["raw_prompt"]] == first
        assert first[1]["content"].endswith(f"You have at most {drawn[i]} turns.")
    assert plan["max_turns"] == max(drawn) and plan["reply_tokens"] == REPLY
    assert plan["response_length"] == max(drawn) * REPLY + (max(drawn) - 1) * plan["observation_tokens"]
    assert plan["planned_steps"] == RL["total_steps"] and plan["mode"] == "dynamic"
    check_agent_config(cfg, run, plan, "sft2rl_med")
    loops = yaml.safe_load((run / vx.AGENT_LOOPS).read_text())
    assert [(x["name"], x["_target_"]) for x in loops] == [("sft2rl_med", "sft2rl.tasks.med.verl_agent.MedAgentLoop")]
    assert loops[0]["med"] == MED_V and "stop_ids" not in loops[0]
    assert loops[0]["episode_log"] == str(run.resolve() / vx.EPISODE_LOG) and loops[0]["attempt"] == 1


def test_prepare_med_rl_command_line_fixed_budget_and_long_prompts(med_run, tmp_path, capsys):
    """The CLI's prepare-med-rl prints the token budget the job's shell reads; a fixed budget is
    med.eval.max_turns for every case; a first-turn prompt over rl.max_prompt_length stops it."""
    spec = importlib.util.spec_from_file_location("verl_export_cli", REPO / "workflow/scripts/verl_export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    args = ["--init", str(med_run["dir"] / "model"), "--cases", str(med_run["dir"] / "train_cases.jsonl"),
            "--mode", "fixed", "--med-json", json.dumps(MED_V), "--seed", "3", "--config-hash", "h",
            "--train-batch", "2", "--epochs", "1"]
    assert cli.main(["prepare-med-rl", "--run-dir", str(tmp_path / "fixed"), *args, "--max-prompt-length", "1024"]) == 0
    plan = json.loads((tmp_path / "fixed" / "plan.json").read_text())
    assert capsys.readouterr().out.strip() == str(plan["response_length"])
    assert plan["max_turns"] == 6 and plan["planned_steps"] == 3 and plan["mode"] == "fixed"
    rows = vx.read_parquet_rows(tmp_path / "fixed" / vx.GAME_TRAIN)
    assert [r["extra_info"]["max_turns"] for r in rows] == [6] * len(med_run["cases"])
    assert cli.main(["prepare-med-rl", "--run-dir", str(tmp_path / "long"), *args, "--max-prompt-length", "20"]) == 1
    assert not (tmp_path / "long" / vx.GAME_TRAIN).exists()


def build_loop(med_run, server, response_length=None, **med):
    """The agent loop as verl's worker builds it: Hydra, from the run's loop file (``med``:
    sections of the med config replaced)."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg = compose("ppo_trainer", overrides_for(med_run["dir"], med_run["run"],
                                               response_length or med_run["plan"]["response_length"]))
    spec = OmegaConf.load(med_run["run"] / vx.AGENT_LOOPS)[0]
    for key, value in med.items():
        spec.med[key] = value
    return hydra.utils.instantiate(config=spec, trainer_config=DictConfigWrap(config=cfg), server_manager=server,
                                   tokenizer=med_run["tok"], processor=None, hf_model_type="qwen2",
                                   dataset_cls=RLHFDataset, data_config=DictConfigWrap(cfg.data),
                                   tools=ToolListWrap([]))


def play(med_run, case, budget, replies, version=4, **med):
    """One consultation of the loop against the stub; the output and the stub."""
    server = StubServer(med_run["tok"], replies, version=version)
    loop = build_loop(med_run, server, **med)
    row = {"case": json.dumps(case), "max_turns": budget, "index": 0}
    return loop.loop.run_until_complete(loop.run({"temperature": 1.0, "top_p": 1.0}, raw_prompt=[], extra_info=row)), \
        server


def local(tok, case, budget, replies, with_thinking=False, patients=None):
    """The same replies (as the server cut them) through the local backend's consultation."""
    cons = consult.Consultation(0, case, budget, with_thinking)
    for r in replies:
        consult.advance([cons], [tok.decode(tok.encode(r, add_special_tokens=False)[:REPLY], skip_special_tokens=True)],
                        patients or patient_backend("rule", MED["eval"]["patient_threshold"]))
        if cons.ended:
            break
    return cons


def local_tokens(tok, cons, gen):
    """The tokens local play (evaluation, the local RL task) gives the doctor over the
    consultation ``cons`` whose replies were the token ids ``gen``: a TokenChat of each turn's
    prompt (every earlier reply and patient turn, the budget, the forced line at the last turn)
    and the replies' tokens."""
    from sft2rl.chat_tokens import TokenChat, token_builder

    chat = TokenChat(tok, token_builder(tok, "qwen2"))
    for i, g in enumerate(gen):
        chat.prompt(dialog.history_messages(cons.first, cons.replies[:i], cons.patient[:i],
                                            with_thinking=cons.with_thinking, force=i + 1 == cons.max_turns,
                                            budget=cons.max_turns))
        chat.reply(g, cons.replies[i])
    return chat.ids


def check_sequence(out, server, tok, cons, replies):
    """The sequence is local play's tokens of the same consultation (:func:`local_tokens`), its
    first prompt the chat template's; every server call saw the sequence so far; the doctor's
    tokens have mask 1 and the server's log-probs, every other token mask 0 and log-prob 0.
    Returns the length of each patient turn (tokens between replies)."""
    gen = [tok.encode(r, add_special_tokens=False)[:REPLY] for r in replies]
    seq = out.prompt_ids + out.response_ids
    first = dialog.history_messages(cons.first, [], [], force=cons.max_turns == 1, budget=cons.max_turns)
    assert out.prompt_ids == tok.encode(tok.apply_chat_template(first, tokenize=False, add_generation_prompt=True),
                                        add_special_tokens=False)
    assert seq == local_tokens(tok, cons, gen)
    if all(g and g[-1] == tok.convert_tokens_to_ids(END) for g in gen):  # no reply cut: the chat template's text
        last = dialog.history_messages(cons.first, cons.replies[:-1], cons.patient, with_thinking=cons.with_thinking,
                                       force=len(cons.replies) == cons.max_turns, budget=cons.max_turns)
        assert tok.decode(seq) == tok.apply_chat_template(last, tokenize=False, add_generation_prompt=True) + \
            tok.decode(gen[-1])
    assert len(server.calls) == len(replies) == len(cons.replies) and out.num_turns == 2 * len(replies)
    assert all(c["sampling_params"]["max_tokens"] == REPLY for c in server.calls)
    assert len(out.response_mask) == len(out.response_ids) == len(out.response_logprobs)
    assert sum(out.response_mask) == sum(len(g) for g in gen)
    pos, gaps = 0, []
    for i, g in enumerate(gen):
        assert seq[:len(server.calls[i]["prompt_ids"])] == server.calls[i]["prompt_ids"]
        start = len(server.calls[i]["prompt_ids"]) - len(out.prompt_ids)
        assert out.response_ids[start:start + len(g)] == g
        assert out.response_mask[start:start + len(g)] == [1] * len(g)
        assert out.response_logprobs[start:start + len(g)] == pytest.approx([-0.01 * (j + 1) for j in range(len(g))])
        assert not any(out.response_mask[pos:start]) and not any(out.response_logprobs[pos:start])
        gaps.append(start - pos)
        pos = start + len(g)
    assert pos == len(out.response_ids)
    return gaps[1:]


def check_reward(out, cons, med_run, version=4):
    """The loop's reward is the local consultation's; its terms, success and turns are logged."""
    w = weights(MED_V["rl"]["reward"])
    rec = cons.record(w)
    assert out.reward_score == rec["reward"]
    assert out.extra_fields["reward_extra_info"] == {
        "success": float(rec["success"]), "turns": float(rec["turns"]), "max_turns": float(cons.max_turns),
        **{f"reward_{t}": rec[f"reward_{t}"] for t in TERMS}}
    log = [json.loads(x) for x in (med_run["run"] / vx.EPISODE_LOG).read_text().splitlines()]
    assert log[-1] == {"step": version, "attempt": 1, **{k: rec[k] for k in LOG_FIELDS}}
    assert {"reward", "success", "turns", "max_turns", *(f"reward_{t}" for t in TERMS)} <= set(LOG_FIELDS)
    return rec


def test_agent_loop_plays_a_consultation_as_the_local_backend_does(med_run):
    """Hydra builds the loop from the run's file as verl's worker does; one consultation of a
    train case within 6 turns against the stub: a malformed reply cut at the reply limit (the
    patient does not understand; its turn follows directly, as in local play),
    two recorded questions the rule patient answers, one it cannot, a repeated question, then
    the right diagnosis at the last (forced) turn. Sequence, masks, turns, reward and its terms
    as the local backend's consultation of the same replies."""
    tok, case = med_run["tok"], med_run["cases"][0]
    (q1, a1), (q2, a2) = [(e["doctor_question"][0], e["patient_response"][0]) for e in case["patient_information"][:2]]
    truth = case["truth"]
    cut = "Hmm," * 60  # no end-of-turn token: the server cuts it at the reply limit
    replies = [cut, f"<answer>Question: {q1}</answer>{END}", f"<answer>Question: {q2}</answer>{END}",
               f"<answer>Question: Have you travelled abroad recently?</answer>{END}",
               f"<answer>Question: {q1.upper()}</answer>{END}",
               f"<answer>Diagnosis: {truth['diagnosis']}\nRecommendation: {truth['recommendation']}</answer>{END}"]
    assert len(tok.encode(cut, add_special_tokens=False)) > REPLY
    out, server = play(med_run, case, 6, replies)
    cons = local(tok, case, 6, replies)
    assert cons.patient == [dialog.NOT_UNDERSTOOD, a1, a2, dialog.DONT_KNOW, a1] and cons.ended
    observations = check_sequence(out, server, tok, cons, replies)
    assert len(observations) == 5 and max(observations) <= med_run["plan"]["observation_tokens"]
    gen0 = tok.encode(cut, add_special_tokens=False)[:REPLY]
    after = len(server.calls[0]["prompt_ids"]) - len(out.prompt_ids) + len(gen0)
    user = tok.encode("<|im_start|>user", add_special_tokens=False)
    assert out.response_ids[after:after + len(user)] == user and out.response_mask[after] == 0  # not closed
    assert len(out.response_ids) <= med_run["plan"]["response_length"]
    rec = check_reward(out, cons, med_run)
    assert {k: rec[f"reward_{k}"] for k in TERMS} == {"answered": 2.0, "unanswered": -1.0, "repeated": -3.0,
                                                      "invalid": -2.0, "diagnosis": 5.0, "recommendation": 5.0,
                                                      "no_diagnosis": 0.0}
    assert rec["reward"] == 6.0 and rec["success"] is False and rec["correct"] is True


def test_agent_loop_hits_the_turn_budget(med_run):
    """A case with a budget of 3 (stated in the prompt) and three questions: the last turn is
    forced (the line at the end of the patient's turn), the consultation ends without a
    diagnosis (-5); the summary history of the episode log has the local keys."""
    tok, case = med_run["tok"], med_run["cases"][1]
    q1 = case["patient_information"][0]["doctor_question"][0]
    replies = [f"<answer>Question: {q1}</answer>{END}", f"<answer>Question: Do you sleep well?</answer>{END}",
               f"<answer>Question: {q1}</answer>{END}"]
    out, server = play(med_run, case, 3, replies, version=7)
    cons = local(tok, case, 3, replies)
    assert cons.ended and len(cons.patient) == 2
    check_sequence(out, server, tok, cons, replies)
    assert tok.decode(server.calls[-1]["prompt_ids"]).endswith(f"{dialog.FORCE}{END}\n<|im_start|>assistant\n")
    assert "You have at most 3 turns." in tok.decode(out.prompt_ids)
    rec = check_reward(out, cons, med_run, version=7)
    assert rec["reward_no_diagnosis"] == -5.0 and rec["reward_repeated"] == 0.0  # the last question is not answered
    hist = vx.med_rl_history(med_run["run"] / vx.EPISODE_LOG)
    last = hist[-1]
    assert last["step"] == 8 and last["n"] == 1 and last["budget"] == 3.0 and last["turns"] == 3.0
    assert last["reward_mean"] == last["episode_reward"] == pytest.approx(rec["reward"])
    assert {f"reward_{t}" for t in TERMS} <= set(last) and last["diagnosed"] == 0.0


def test_think_blocks_and_the_one_sequence_identity(med_run):
    """The nothink doctor's earlier replies are shown without think blocks (as evaluation shows
    them): a think block in a reply that a later turn follows stops the run with the key to
    change; in the last reply it is harmless. The think doctor plays the same replies with the
    blocks kept in the sequence."""
    tok, case = med_run["tok"], med_run["cases"][2]
    truth = case["truth"]
    q1 = case["patient_information"][0]["doctor_question"][0]
    diagnosis = f"<answer>Diagnosis: {truth['diagnosis']}\nRecommendation: {truth['recommendation']}</answer>{END}"
    thinking = [f"<think>ask</think>\n<answer>Question: {q1}</answer>{END}", diagnosis]
    with pytest.raises(ValueError, match=r"Reply 1 holds a think block.*med.rl.with_thinking: true"):
        play(med_run, case, 4, thinking)
    last_thinks = [f"<answer>Question: {q1}</answer>{END}", "<think>so</think>\n" + diagnosis]
    out, server = play(med_run, case, 4, last_thinks)
    check_sequence(out, server, tok, local(tok, case, 4, last_thinks), last_thinks)
    out, server = play(med_run, case, 4, thinking, rl=dict(MED_V["rl"], with_thinking=True))
    cons = local(tok, case, 4, thinking, with_thinking=True)
    check_sequence(out, server, tok, cons, thinking)
    assert "<think>ask</think>" in tok.decode(out.response_ids)


def test_a_consultation_over_the_token_budget_stops_the_run(med_run):
    tok, case = med_run["tok"], med_run["cases"][0]
    q1 = case["patient_information"][0]["doctor_question"][0]
    server = StubServer(tok, [f"<answer>Question: {q1}</answer>{END}"] * 6, version=1)
    loop = build_loop(med_run, server, response_length=30)
    row = {"case": json.dumps(case), "max_turns": 6, "index": 0}
    with pytest.raises(ValueError, match="more than rollout.response_length = 30"):
        loop.loop.run_until_complete(loop.run({"temperature": 1.0}, raw_prompt=[], extra_info=row))


def test_agent_loop_asks_the_configured_patient(med_run, stub):  # noqa: F811
    """med.patient: an OpenAI-compatible endpoint (the loopback stub): the loop asks it with the
    case record and the earlier turns, and its answer is the patient's turn of the sequence."""
    tok, case = med_run["tok"], med_run["cases"][3]
    replies = [f"<answer>Question: Do you have {s}?</answer>{END}" for s in ("pain", "fever")]
    spec = {"endpoint": stub.base, "model": "patient", "max_tokens": 16}
    out, server = play(med_run, case, 2, replies, patient=spec)
    assert [r["body"]["messages"][-1]["content"] for r in stub.requests] == ["Do you have pain?"]
    cons = local(tok, case, 2, replies, patients=patient_backend(spec, 0.5))
    assert cons.patient == ["Answer to: Do you have pain?"] and len(stub.requests) == 2
    check_sequence(out, server, tok, cons, replies)
    system = stub.requests[0]["body"]["messages"][0]["content"]
    assert case["patient_information"][0]["patient_response"][0] in system


def test_med_rl_command_dry_run(tmp_path):
    """The rule's shell lines: prepare-med-rl (budget mode, med config, prompt limit), main_ppo
    with the loop file, async rollout and raw chat, then the export from the episode log; a
    variance filter and an unknown budget mode are refused."""
    med = {"eval": MED["eval"], "patient": MED["patient"], "rl": MED["rl"]}
    kw = dict(rl_run="rl-dynamic-seed1", init="results/models/med-doctor-nothink-seed1/merged",
              cases="data/processed/med/rl/train_cases.jsonl", rl=dict(CONFIG["rl"], seed=1), med=med,
              verl=vl.verl_settings(CONFIG), nnodes=1, gpus_per_node=1, code_root=str(REPO),
              run_dir="results/med/rl/rl-dynamic-seed1", final="results/med/models/rl-dynamic-seed1/final",
              summary="results/med/rl/rl-dynamic-seed1/summary.json")
    cmd = vl.med_rl_command(mode="dynamic", **kw)
    lines = cmd.splitlines()
    prepare = next(x for x in lines if "prepare-med-rl" in x)
    assert prepare.startswith("SFT2RL_RESPONSE_LENGTH=$(python ")
    assert ("prepare-med-rl --run-dir results/med/rl/rl-dynamic-seed1 --init results/models/med-doctor-nothink-seed1"
            "/merged --cases data/processed/med/rl/train_cases.jsonl --mode dynamic --med-json ") in prepare
    assert f"--max-prompt-length {CONFIG['rl']['max_prompt_length']} --seed 1 --config-hash " in prepare
    assert json.dumps(med, sort_keys=True) in cmd.replace("'\"'\"'", "'")
    assert "python -m verl.trainer.main_ppo" in cmd
    assert "agent_loop_config_path=$PWD/results/med/rl/rl-dynamic-seed1/agent_loops.yaml" in cmd
    assert "actor_rollout_ref.rollout.agent.default_agent_loop=sft2rl_med" in cmd
    assert "actor_rollout_ref.rollout.mode=async" in cmd and "data.return_raw_chat=true" in cmd
    assert "algorithm.adv_estimator=grpo" in cmd and '"data.max_response_length=$SFT2RL_RESPONSE_LENGTH"' in cmd
    assert "data.train_files=$PWD/results/med/rl/rl-dynamic-seed1/train.parquet" in cmd
    assert cmd.index("prepare-med-rl") < cmd.index("verl.trainer.main_ppo") < cmd.index(" rl-export ")
    assert ("--final results/med/models/rl-dynamic-seed1/final --summary results/med/rl/rl-dynamic-seed1/summary.json "
            "--episode-log results/med/rl/rl-dynamic-seed1/episodes.jsonl --episode-task med") in cmd
    assert "--mode fixed" in vl.med_rl_command(mode="fixed", **kw)
    with pytest.raises(vl.VerlConfigError, match="turn budget"):
        vl.med_rl_command(mode="random", **kw)
    with pytest.raises(vl.VerlConfigError, match="med.rl.keep_group_fraction"):
        vl.med_rl_command(mode="fixed", **dict(kw, rl=dict(kw["rl"], keep_group_fraction=0.5)))


def test_prepared_run_key_holds_a_local_patient_models_weights(clinic_model, tmp_path):  # noqa: F811
    """On verl as locally (MedTask.key): new weights of a local patient model restart the run,
    a copy elsewhere does not."""
    import shutil

    def key(patient_dir, run):
        med = dict(MED_V, patient={"model": str(patient_dir)})
        return vx.prepare_med_rl(tmp_path / run, init=str(clinic_model / "model"),
                                 cases=str(clinic_model / "train_cases.jsonl"), mode="fixed", med=med, seed=RL["seed"],
                                 config_hash="x", max_prompt_length=RL["max_prompt_length"],
                                 train_batch=RL["train_batch"], epochs=1, total_steps=RL["total_steps"])["run_key"]

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(clinic_model / "model", a)
    shutil.copytree(clinic_model / "model", b)
    assert key(a, "r1") == key(b, "r2")
    (a / "config.json").write_text((a / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert key(a, "r3") != key(b, "r4")
