"""The medical consultation as a multi-turn RL task: DoctorAgent-RL's reward term by term, the
turn budget (fixed, or drawn per case and stated in the prompt), rows and masks of a
rollout, and a short run of the shared trainer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sft2rl.tasks.med import consult, data, dialog, reward
from sft2rl.tasks.med.dialog import parse_reply
from test_med import MAX_TURNS, MED, WORLD, hand_case

RL = dict(seed=1, train_mode="full", lora=dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear"),
          n=3, train_batch=2, ppo_mini_batch=2, ppo_epochs=1, epochs=1, total_steps=2, lr=1e-3, grad_clip=1.0,
          clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, keep_group_fraction=1.0, val_every=1,
          kl_coef=0.001, kl_type="low_var_kl", use_kl_loss=False, entropy_coef=0.001, norm_adv_by_std=True,
          temperature=1.0, top_p=1.0, max_prompt_length=1024, max_response_length=6, save_freq=2)
MED_RL = {"eval": dict(MED["eval"], max_turns=3, max_new_tokens=6, batch_size=8),
          "patient": "rule", "rl": {"with_thinking": False, "budget_range": [2, 4], "reward": {}}}


def q(text: str) -> str:
    return f"<answer>Question: {text}</answer>"


def dx(d: str, r: str) -> str:
    return f"<answer>Diagnosis: {d}\nRecommendation: {r}</answer>"


def test_token_f1_is_squad_f1_with_punctuation_as_a_space():
    assert reward.token_f1("Beta syndrome", "beta syndrome.") == 1.0
    # punctuation splits a word (SQuAD would delete it: "checkup", F1 0.4 and 0)
    assert reward.token_f1("follow-up visit", "follow up visit") == 1.0
    assert reward.token_f1("check-up", "up") == pytest.approx(2 / 3)
    assert reward.token_f1("Alpha syndrome", "Beta syndrome") == pytest.approx(0.5)
    # 2 common of 3 predicted and 4 true words: P 2/3, R 1/2
    assert reward.token_f1("drink water now", "the drink of water daily") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert reward.token_f1("", "x") == 0.0 and reward.token_f1("a the", "a") == 0.0
    # words count with their multiplicity (SQuAD's Counter): 2 of the 3 "rest" match one
    assert reward.token_f1("rest rest and fluids", "rest and fluids") == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert reward.token_f1("rest rest and fluids", "rest rest and fluids") == 1.0
    assert reward.same_text("Influenza.", " influenza") and not reward.same_text("Influenza", "Influenzas")


def test_episode_reward_terms_are_the_reference_terms():
    """+1 answered, -1 "Sorry", -2 repeated (instead), -2 malformed or two questions in one turn
    (which the patient does not answer, as DoctorAgent-RL's environment does not), 5 x F1 of
    diagnosis and recommendation; -5 without a diagnosis at the limit."""
    w = reward.weights(None)
    case = hand_case(["s1", "s3"])  # s1..s4 recorded; the truth: Beta syndrome, "Drink water."
    con = consult.Consultation(0, case, 8, with_thinking=False)
    patients = consult.patient_backend("rule", 0.5)
    for reply in [q("Do you have s3?"), q(" do you have  S3 ?"), "garbled", q("Do you have fever?"),
                  q("Do you have s2? Do you have s4?"), dx("Alpha syndrome", "Drink water.")]:
        consult.advance([con], [reply], patients)
    assert con.patient[2] == dialog.NOT_UNDERSTOOD and con.patient[3] == dialog.DONT_KNOW
    assert con.patient[4] == dialog.NOT_UNDERSTOOD  # two questions: not answered
    terms = con.reward_terms(w)
    assert terms == {"answered": 1.0, "repeated": -2.0, "invalid": -4.0, "unanswered": -1.0,
                     "diagnosis": pytest.approx(2.5), "recommendation": 5.0, "no_diagnosis": 0.0}
    rec = con.record(w)
    assert rec["reward"] == pytest.approx(1.5) and rec["success"] is False and rec["repeated"] == 1
    assert rec["reward_invalid"] == -4.0 and rec["correct"] is False
    assert rec["invalid"] == 2 and rec["questions"] == 3
    # exact match: the wrong disease earns nothing for the diagnosis
    assert con.reward_terms(reward.weights({"match": "exact"}))["diagnosis"] == 0.0
    # the right one earns everything: success at reward >= 10
    good = consult.Consultation(0, case, 8, with_thinking=False)
    for reply in [q("Do you have s3?"), dx("Beta syndrome", "Drink water.")]:
        consult.advance([good], [reply], patients)
    assert good.record(w)["reward"] == 11.0 and good.record(w)["success"] is True
    # the budget runs out without a diagnosis: -5 and the turns' terms
    late = consult.Consultation(0, case, 2, with_thinking=False)
    for reply in [q("Do you have s3?"), q("Do you have s4?")]:
        consult.advance([late], [reply], patients)
    assert late.ended and late.reward_terms(w)["no_diagnosis"] == -5.0 and late.record(w)["reward"] == -4.0
    # at exactly the threshold: a one-turn perfect consultation earns 10 and succeeds (reward >= 10)
    exact = consult.Consultation(0, case, 8, with_thinking=False)
    consult.advance([exact], [dx("beta syndrome.", "Drink water.")], patients)
    assert exact.record(w)["reward"] == 10.0 and exact.record(w)["success"] is True
    assert exact.record(w)["correct"] is True  # case, spaces and a final period aside
    assert exact.record(dict(w, success_threshold=10.5))["success"] is False
    with pytest.raises(ValueError, match="unknown"):
        reward.weights({"bonus": 1})
    with pytest.raises(ValueError, match="match"):
        reward.weights({"match": "rouge"})
    assert parse_reply(dx("x", "y")).kind == "diagnosis"
    # a consultation's turn (DoctorAgent-RL's rules): one "?" (or "？"), nothing after </answer>
    assert [dialog.parse_turn(t).kind for t in (
        q("Do you have s3?"), q("Do you have s3？"), q("Do you have s3"), q("Do you have s3? Or s4?"),
        q("Do you have s3?") + " I think it is the flu", q("Do you have s3?") + " \n", dx("x", "y") + "!")] == \
        ["question", "question", "invalid", "invalid", "invalid", "question", "invalid"]
    trailing = consult.Consultation(0, case, 8, with_thinking=False)
    consult.advance([trailing], [q("Do you have s3?") + " Probably Beta syndrome."], patients)
    assert trailing.patient == [dialog.NOT_UNDERSTOOD] and trailing.record(w)["reward_invalid"] == -2.0


def test_turn_rewards_sum_to_the_reward_and_key_on_the_facts_found():
    """GiGPO's inputs: each turn's reward (the terms of its own turn; -5 without a diagnosis on
    the last), summing to the consultation's, and its state: the turns used and the questions
    asked with their answers, in any order and wording up to case and a final "?"."""
    w = reward.weights(None)
    case = hand_case(["s1", "s3"])
    patients = consult.patient_backend("rule", 0.5)

    def run(replies, budget=8):
        con = consult.Consultation(0, case, budget, with_thinking=False)
        for reply in replies:
            consult.advance([con], [reply], patients)
        return con

    a = run([q("Do you have s3?"), q("Do you have fever?"), "garbled", q("Do you have s3?"),
             dx("Alpha syndrome", "Drink water.")])
    assert [r for _, r in a.turn_rewards(w)] == pytest.approx([1.0, -1.0, -2.0, -2.0, 7.5])
    assert sum(r for _, r in a.turn_rewards(w)) == pytest.approx(a.record(w)["reward"])
    b = run([q("do you have  fever ?"), q("Do you have S3?"), dx("Beta syndrome", "Drink water.")])
    sa, sb = [s for s, _ in a.turn_rewards(w)], [s for s, _ in b.turn_rewards(w)]
    assert sa[0] == sb[0] and sa[1] != sb[1]          # the start; one fact against another
    assert sa[2] == sb[2]                             # the same two facts in two turns, either order
    assert sa[3] != sb[2]                             # a malformed turn used a turn: not that state
    late = run([q("Do you have s3?"), q("Do you have s4?")], budget=2)
    assert [r for _, r in late.turn_rewards(w)] == [1.0, -5.0] and late.record(w)["reward"] == -4.0


def test_budgets_fixed_and_drawn_per_case():
    from sft2rl.tasks.med.rl import budgets

    assert budgets("fixed", 3, 8, [2, 10], seed=1) == [8, 8, 8]
    drawn = budgets("dynamic", 400, 8, [2, 10], seed=1)
    assert set(drawn) == set(range(2, 11)) and drawn == budgets("dynamic", 400, 8, [2, 10], seed=1)
    assert drawn != budgets("dynamic", 400, 8, [2, 10], seed=2)
    with pytest.raises(ValueError, match="fixed"):
        budgets("random", 1, 8, [2, 10], seed=1)


@pytest.fixture(scope="module")
def clinic_model(tmp_path_factory):
    """The RL cases of a small clinic (train and val) and an untrained tiny model with its tokenizer."""
    from sft2rl.model import build_tiny_model, build_tokenizer
    from sft2rl.text import chat_text

    from conftest import TINY_ARCH

    out = tmp_path_factory.mktemp("med_rl")
    world = dict(WORLD, cases={"train": 6, "val": 3, "test": 3})
    data.write_clinic_data(world, out, out / "corpus.jsonl", MAX_TURNS)
    for split in ("train", "val"):
        data.write_cases(out / f"{split}.jsonl", out / f"{split}_cases.jsonl")
    rows = data.load_raw(out / "train.jsonl")
    docs = [chat_text(r["prompt"] + [{"role": "assistant", "content": r["response"]}]) for r in rows]
    tok = build_tokenizer(docs, 400, ("<think>", "</think>", "<answer>", "</answer>"))
    torch.manual_seed(0)
    build_tiny_model(tok, TINY_ARCH).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out


@pytest.mark.parametrize("mode", ["fixed", "dynamic"])
def test_consultation_rollout_rows_masks_budgets_and_rewards(clinic_model, mode):
    """A consultation is one row: every doctor reply sits after exactly the prompt of that
    turn, the evaluation's (the budget stated; the tokens so far, then the patient's answer as
    the chat template renders it; the rendered chat where every earlier reply re-tokenises as
    sampled); the loss mask covers the sampled replies only; a group shares its budget; the
    scores are the consultations' rewards."""
    from test_games_rl import sampled_turns

    from sft2rl.chat_tokens import TokenChat, token_builder
    from sft2rl.model import load_model
    from sft2rl.tasks.med.rl import MedTask

    model, tok = load_model(str(clinic_model / "model"))
    task = MedTask(str(clinic_model / "train_cases.jsonl"), str(clinic_model / "val_cases.jsonl"), MED_RL, mode)
    items = task.load(tok, RL)
    assert len(items) == 6 and len(task.val_cases) == 3
    ro = task.rollout(model, tok, items[:2], 3, RL, seed=11)
    cons = ro.info
    assert ro.traj_group.tolist() == [0, 0, 0, 1, 1, 1]
    limits = [c.max_turns for c in cons]
    assert limits[:3] == [limits[0]] * 3 and limits[3:] == [limits[3]] * 3
    assert all(2 <= b <= 4 for b in limits) if mode == "dynamic" else limits == [3] * 6
    assert ((ro.loss_mask == 1) <= (ro.response_mask == 1)).all()
    # one row per consultation, but for a turn after a reply the prompt shows otherwise (without
    # thinking a reply is shown stripped): that prompt is rendered whole and opens a row
    from sft2rl.rows import strip_thinking

    shown_otherwise = [sum(strip_thinking(r) != r for r in c.replies[:-1]) for c in cons]
    assert [int((ro.row_traj == i).sum()) for i in range(6)] == [1 + k for k in shown_otherwise]
    turn = dict.fromkeys(range(6), 0)
    chats = [TokenChat(tok, token_builder(tok, model.config.model_type)) for _ in cons]
    canonical, rendered = dict.fromkeys(range(6), True), 0
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for i, before, reply in sampled_turns(ro):
        c = cons[i]
        text = tok.decode(reply, skip_special_tokens=True)
        assert text == c.replies[turn[i]]
        msgs = dialog.history_messages(c.first, c.replies[:turn[i]], c.patient[:turn[i]], with_thinking=False,
                                       force=turn[i] == c.max_turns - 1, budget=c.max_turns)
        assert f"at most {c.max_turns} turns." in msgs[1]["content"]
        assert before == chats[i].prompt(msgs)
        if canonical[i]:
            chat_text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            assert before == tok.encode(chat_text, add_special_tokens=False)
            rendered += 1
        chats[i].reply(reply, text)
        canonical[i] &= tok.encode(text, add_special_tokens=False) + [end] == reply
        turn[i] += 1
    assert turn == {i: len(c.replies) for i, c in enumerate(cons)} and rendered >= 6
    scores, metrics = task.rewards(items[:2], ro)
    assert scores.tolist() == [c.record()["reward"] for c in cons]
    # an untrained model's replies are malformed: -2 a turn, -5 without a diagnosis
    assert scores.tolist() == [-2.0 * len(c.replies) - 5.0 for c in cons]
    assert metrics["invalid_rate"] == 1.0 and metrics["reward_no_diagnosis"] == -5.0
    again = task.rollout(model, tok, items[:2], 3, RL, seed=11)
    assert [c.replies for c in again.info] == [c.replies for c in cons]


def test_med_rl_runs_on_the_shared_trainer_with_validation(clinic_model, tmp_path):
    from sft2rl.grpo import train_rl
    from sft2rl.tasks.med.rl import MedTask

    task = MedTask(str(clinic_model / "train_cases.jsonl"), str(clinic_model / "val_cases.jsonl"), MED_RL, "dynamic")
    # with GiGPO's step advantages: the trainer refuses turn rewards that do not sum to the scores
    summary = train_rl(str(clinic_model / "model"), task, str(tmp_path / "run"), dict(RL, step_adv_weight=1.0, step_adv_gamma=0.95))
    hist = summary["history"]
    assert [h["step"] for h in hist] == [0, 1, 2]
    assert all({"val_episode_reward", "val_accuracy", "val_turns"} <= set(h) for h in hist)
    for h in hist[1:]:
        assert {"episode_reward", "reward_answered", "reward_invalid", "success", "budget", "entropy"} <= set(h)
        assert 2 <= h["budget"] <= 4 and 0.0 <= h["step_adv_nonzero"] <= 1.0
    with pytest.raises(ValueError, match="max_new_tokens"):
        train_rl(str(clinic_model / "model"), task, str(tmp_path / "bad"), dict(RL, max_response_length=7))
    with pytest.raises(ValueError, match=r"first-turn prompt has \d+ tokens, more than rl.max_prompt_length = 40"):
        train_rl(str(clinic_model / "model"), task, str(tmp_path / "long"), dict(RL, max_prompt_length=40))
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="none.jsonl: no training items"):
        train_rl(str(clinic_model / "model"), MedTask(str(empty), str(clinic_model / "val_cases.jsonl"), MED_RL,
                                                      "fixed"), str(tmp_path / "empty"), RL)


def test_restart_key_covers_the_medical_modules_only():
    from sft2rl.fingerprint import module_closure

    med = module_closure(["grpo", "tasks.med.rl"])
    assert {"tasks.med.reward", "tasks.med.patient", "tasks.med.consult", "tasks.med.dialog", "rl_task"} <= set(med)
    assert not any(m.startswith(("tasks.qa", "tasks.games")) for m in med)
    assert np.isfinite(json.loads(json.dumps(1.0)))


def test_restart_key_holds_a_local_patient_models_weights(clinic_model, tmp_path):
    """A local patient model is keyed by its content, not its path: new weights restart RL, a
    moved copy does not."""
    import shutil

    from sft2rl.grpo import rl_run_key
    from sft2rl.tasks.med.rl import MedTask

    def key(model_dir):
        med = dict(MED_RL, patient={"model": str(model_dir)})
        task = MedTask(str(clinic_model / "train_cases.jsonl"), str(clinic_model / "val_cases.jsonl"), med, "fixed")
        return rl_run_key(str(clinic_model / "model"), task, RL)["key"]

    a = tmp_path / "a"
    shutil.copytree(clinic_model / "model", a)
    shutil.copytree(clinic_model / "model", tmp_path / "b")
    assert key(a) == key(tmp_path / "b")
    (a / "config.json").write_text((a / "config.json").read_text().replace("}", ', "x": 1}', 1))
    assert key(a) != key(tmp_path / "b")


def test_accuracy_stays_empty_on_cases_without_exact_disease_names(tmp_path):
    """Your own MTMedDialog rows have no exact disease names (``correct`` None): every accuracy
    column of rl_eval.csv, the turn-budget ablation and the thinking ablation is empty, never a
    0.00 [0.00, 0.00] that reads as "no difference"; the reward columns are computed as usual."""
    from sft2rl.tasks.med import rl_table, table

    def records(reward_value, sample=None):
        return [{"case": str(i), "correct": None, "reward": reward_value + (i % 2), "turns": 2, "diagnosed": True,
                 "questions": 1, "repeated": 0, "invalid": 0, "patient_replies": 1, "sorry": 0, "success": False,
                 "diagnosis": "d", "truth_diagnosis": "d", "recommendation": "r", "truth_recommendation": "r",
                 **({} if sample is None else {"sample": sample})} for i in range(20)]

    paths, summaries, sampled = {}, {}, {}
    for doctor, r in (("sft", 4.0), ("rl-fixed-seed1", 6.0)):
        paths[doctor] = tmp_path / f"{doctor}.jsonl"
        paths[doctor].write_text("".join(json.dumps(x) + "\n" for x in records(r)))
        sampled[doctor] = tmp_path / f"{doctor}.sampled.jsonl"
        sampled[doctor].write_text("".join(json.dumps(x) + "\n" for j in (0, 1) for x in records(r, j)))
        summaries[doctor] = tmp_path / f"{doctor}.json"
        summaries[doctor].write_text(json.dumps([{"doctor": doctor, **consult.summarize(records(r))}]))
        assert np.isnan(json.loads(summaries[doctor].read_text())[0]["accuracy"])
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"steps": 1, "seconds": 1.0}))
    infos = {"sft": {"with_thinking": False, "seed": 1},
             "rl-fixed-seed1": {"with_thinking": False, "budget": "fixed", "seed": 1, "control": False}}
    bs = {"bootstrap_samples": 200, "ci_level": 0.95, "bootstrap_seed": 0}
    frame = rl_table.rl_eval_frame({d: str(p) for d, p in summaries.items()}, {d: str(p) for d, p in paths.items()},
                                   "sft", infos, {"rl-fixed-seed1": str(train)}, bs,
                                   {d: str(p) for d, p in sampled.items()})
    rl = frame.set_index("doctor").loc["rl-fixed-seed1"]
    for col in ("diff_accuracy", "diff_accuracy_lo", "diff_sampled_accuracy", "sampled_accuracy",
                "sampled_accuracy_lo", "sampled_accuracy_hi"):
        assert np.isnan(rl[col]), col
    assert rl["diff_reward"] == pytest.approx(2.0) and rl["diff_reward_lo"] == pytest.approx(2.0)
    assert rl["k_samples"] == 2
    tex = rl_table.rl_eval_latex(frame)
    assert "sampled ($k=2$)" in tex and "-- [--, --]" in tex and "0.00 [0.00" not in tex
    budget = rl_table.turn_budget_frame({("sft", 8): [str(paths["sft"])], ("fixed", 8): [str(paths["rl-fixed-seed1"])]},
                                        bs)
    assert budget["accuracy_mean"].isna().all() and budget["accuracy_lo"].isna().all()
    assert budget["reward_mean"].tolist() == pytest.approx([4.5, 6.5])
    assert "-- [--, --] & 4.50" in rl_table.budget_latex(budget)
    arrays = [table.case_arrays(records(4.0))]
    ci = table.paired_bootstrap(arrays, arrays, n_boot=100)
    assert all(np.isnan(ci[v]["accuracy_ci_low"]) for v in ("true", "false", "diff"))


def test_random_doctor_curves_consult_the_cases_the_curves_are_measured_on(clinic_model, tmp_path):
    """The RL curves' no-information lines: the random-question doctor on the val cases at
    med.eval.max_turns scores what the evaluation's random doctor scores there (another code
    path), on the first med.rl.cases train cases at the fixed budget the same, and at the
    dynamic budgets each consultation ends within its own drawn limit."""
    from sft2rl.io import read_jsonl, write_jsonl
    from sft2rl.tasks.med.rl import budgets, episode_metrics, random_doctor_curves

    med = dict(MED_RL, rl=dict(MED_RL["rl"], cases=4))
    world = str(clinic_model / "world.json")
    got = random_doctor_curves(str(clinic_model / "train_cases.jsonl"), str(clinic_model / "val_cases.jsonl"),
                               world, med, seed=5)
    first4 = tmp_path / "train4.jsonl"
    write_jsonl(first4, data.read_cases(clinic_model / "train_cases.jsonl")[:4])
    for key, cases in (("val", clinic_model / "val_cases.jsonl"), ("fixed", first4)):
        out = tmp_path / f"{key}.jsonl"
        consult.evaluate_doctor("random", str(cases), world, None, False, dict(med["eval"], k_samples=1),
                                {"confidence": WORLD["confidence"]}, 0.95, str(out), None, patient="rule",
                                reward=med["rl"]["reward"])
        expect = episode_metrics([r for _, r in read_jsonl(out)])
        assert (got["val"] if key == "val" else got["train"]["fixed"]) == pytest.approx(expect), key
    limits = budgets("dynamic", 4, med["eval"]["max_turns"], med["rl"]["budget_range"], 5)
    assert len(set(limits)) > 1 and 1 <= got["train"]["dynamic"]["turns"] <= np.mean(limits)
    assert got["train"]["dynamic"] != got["train"]["fixed"]
