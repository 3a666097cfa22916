"""Medical consultation: protocol, clinic, scripted doctor, patient, rows, validation, metrics."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sft2rl.errors import DataError
from sft2rl.io import read_jsonl, write_jsonl, write_parquet
from sft2rl.tasks.med import clinic, consult, data, dialog, doctor, patient, table

REPO_CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
MED = REPO_CONFIG["med"]
MAX_TURNS = MED["eval"]["max_turns"]
#: the default clinic with fewer cases (the world, its diseases and symptoms are the default's)
WORLD = dict(MED["world"], cases={"train": 40, "val": 6, "test": 12}, corpus_repeats=2)

#: a hand-made clinic: A and B share the chief complaint s1; s2 tells them apart (every symptom recorded)
HAND = {"dropout": 0.25, "symptoms": ["s1", "s2", "s3", "s4"], "diseases": [
    {"name": "Alpha fever", "category": "c1", "symptoms": ["s1", "s2"], "recommendation": "Rest."},
    {"name": "Beta syndrome", "category": "c2", "symptoms": ["s1", "s3"], "recommendation": "Drink water."},
    {"name": "Gamma disease", "category": "c2", "symptoms": ["s4", "s3"], "recommendation": "Sleep."}]}


def hand_case(present, disease="Beta syndrome", rec="Drink water.", chief="s1"):
    info = [{"doctor_question": [clinic.question(s)], "patient_response": [clinic.answer(s, s in present)]}
            for s in HAND["symptoms"]]
    return {"id": "0", "category": "c2", "exact": True,
            "first": [{"role": "system", "content": dialog.SYSTEM_PROMPT},
                      {"role": "user", "content": dialog.description(f"I have had {chief} for 3 days.")}],
            "truth": {"diagnosis": disease, "recommendation": rec}, "patient_information": info}


@pytest.fixture(scope="module")
def clinic_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("clinic")
    counts = data.write_clinic_data(WORLD, out, out / "corpus.jsonl", MAX_TURNS)
    return out, counts


# ------------------------------------------------------------------ protocol
@pytest.mark.parametrize("text,kind,fields", [
    ("<think>hm</think>\n<answer>Question: Do you have a cough?</answer>", "question", {"question": "Do you have a cough?"}),
    ("<answer>Diagnosis: Roku disease\nRecommendation: Rest.</answer>", "diagnosis",
     {"diagnosis": "Roku disease", "recommendation": "Rest."}),
    ("<answer>Question: </answer>", "invalid", {}),
    ("<answer>Diagnosis: Roku disease</answer>", "invalid", {}),          # no recommendation
    ("<answer>Question: a?</answer><answer>Question: b?</answer>", "invalid", {}),
    ("<think><answer>Question: hidden?</answer></think>", "invalid", {}),  # an answer inside thinking is not one
    ("Do you have a cough?", "invalid", {}),
    # a question then a conclusion concludes (DoctorAgent-RL scores any answer naming a diagnosis)
    ("<answer>Question: Do you have a cough?\nDiagnosis: Roku disease\nRecommendation: Rest.</answer>", "diagnosis",
     {"diagnosis": "Roku disease", "recommendation": "Rest.", "question": ""}),
    ("<answer>Question: Do you have a cough?\nDiagnosis: Roku disease</answer>", "invalid", {}),
    # "Diagnosis:" inside a question's sentence is no conclusion
    ("<answer>Question: Was your last Diagnosis: asthma?</answer>", "question",
     {"question": "Was your last Diagnosis: asthma?"}),
])
def test_parse_reply(text, kind, fields):
    r = dialog.parse_reply(text)
    assert r.kind == kind
    for k, v in fields.items():
        assert getattr(r, k) == v


# ------------------------------------------------------------------ clinic
def test_clinic_is_deterministic_with_overlapping_profiles_and_partial_records():
    a, b = clinic.build_clinic(WORLD), clinic.build_clinic(copy.deepcopy(WORLD))
    n = len(WORLD["categories"]) * WORLD["diseases_per_category"]
    assert a == b and len(a["diseases"]) == n >= 16
    assert len(a["symptoms"]) == 8 * len(WORLD["categories"]) + len(clinic.GENERAL_SYMPTOMS) >= 38
    assert len({tuple(sorted(d["symptoms"])) for d in a["diseases"]}) == n
    assert len({d["name"] for d in a["diseases"]}) == n
    # profiles overlap: within a category, and through the general symptoms across categories
    for cat in WORLD["categories"]:
        profs = [set(d["symptoms"]) for d in a["diseases"] if d["category"] == cat]
        assert any(p & q for i, p in enumerate(profs) for q in profs[i + 1:])
        assert all(len(p & q) <= clinic.MAX_SHARED for i, p in enumerate(profs) for q in profs[i + 1:])
    owners = {s: sum(s in d["symptoms"] for d in a["diseases"]) for s in a["symptoms"]}
    assert max(owners[s] for s in clinic.GENERAL_SYMPTOMS) >= 3
    cases = clinic.generate_cases(a, WORLD)
    assert cases == clinic.generate_cases(b, WORLD)
    split = {s: [c["pattern"] for c in cases if c["split"] == s] for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in split.items()} == {"train": 40, "val": 6, "test": 12}
    assert not set(split["test"]) & set(split["train"]) and not set(split["val"]) & set(split["train"])
    recorded = []
    for c in cases:
        prof = next(d for d in a["diseases"] if d["name"] == c["disease"])["symptoms"]
        assert c["chief"] in c["present"] and set(c["present"]) <= set(prof) and len(c["present"]) >= 2
        assert c["volunteered"] is None or (c["volunteered"] in c["present"] and c["volunteered"] != c["chief"])
        assert {c["chief"], c["volunteered"]} - {None} <= set(c["recorded"])
        info = clinic.patient_information(a, c)
        assert len(info) == len(c["recorded"]) < len(a["symptoms"])
        recorded.append(len(info) / len(a["symptoms"]))
    assert 0.2 < np.mean(recorded) < 0.5  # part of what could be asked, as in MTMedDialog rows
    # a split that runs out of new consultations: a clear error, not an endless loop
    with pytest.raises(RuntimeError, match="no new consultation"):
        clinic.generate_cases(a, dict(WORLD, cases={"train": 1, "val": 1, "test": 2}), key=lambda c: "the same")


def test_more_training_cases_leave_the_held_out_cases_as_they_are():
    """Test cases are drawn first, then validation, then train: raising med.world.cases.train
    (the SFT recipe's data lever) changes only the train split, so tables measured with more
    training cases stand on the same held-out consultations."""
    a = clinic.build_clinic(WORLD)
    small = clinic.generate_cases(a, WORLD)
    large = clinic.generate_cases(a, dict(WORLD, cases=dict(WORLD["cases"], train=3 * WORLD["cases"]["train"])))
    held = [c for c in small if c["split"] != "train"]
    assert held == [c for c in large if c["split"] != "train"]
    train_small = [c["key"] for c in small if c["split"] == "train"]
    train_large = [c["key"] for c in large if c["split"] == "train"]
    assert train_large[:len(train_small)] == train_small and len(train_large) == 3 * len(train_small)
    assert not {c["key"] for c in held} & set(train_large)


def test_corpus_holds_the_knowledge_and_no_case(clinic_files):
    out, _ = clinic_files
    world = json.loads((out / "world.json").read_text())
    corpus = "\n".join(json.loads(line)["text"] for line in (out / "corpus.jsonl").read_text().splitlines())
    for d in world["diseases"]:
        assert f"What are the symptoms of {d['name']}?" in corpus and d["recommendation"] in corpus
        assert f"Diagnosis: {d['name']}\nRecommendation: {d['recommendation']}" in corpus
    assert "Patient's description" not in corpus and "Do you have" not in corpus and " days." not in corpus
    assert "Sorry" not in corpus and dialog.FORCE not in corpus


# ------------------------------------------------------------------ the scripted doctor and the patient
def test_scripted_consultation_with_a_known_outcome():
    """Chief complaint s1 fits Alpha and Beta; s2 (Alpha's) tells them apart; 'no' leaves Beta."""
    case = hand_case(present=["s1", "s3"])
    policy = doctor.scripted_policy(HAND, confidence=0.7)
    [rec] = consult.consult([case], policy, max_turns=5, with_thinking=True, threshold=0.5, progress=False)
    assert rec["replies"][0] == ("<think>It could be Alpha fever or Beta syndrome. Ask about s2.</think>\n"
                                 "<answer>Question: Do you have s2?</answer>")
    assert rec["patient"] == ["No, I do not have s2."]
    # posterior after "no s2": Alpha 0.25 / (0.25 + 1) = 0.2, Beta 0.8 >= 0.7
    assert doctor.posterior(HAND, "s1", {"s2": False}) == pytest.approx([0.2, 0.8, 0.0])
    assert rec["replies"][1] == ("<think>The patient has s1, not s2. The answers fit Beta syndrome best.</think>\n"
                                 "<answer>Diagnosis: Beta syndrome\nRecommendation: Drink water.</answer>")
    assert rec["correct"] is True and rec["turns"] == 2 and rec["questions"] == 1 and rec["sorry"] == 0
    # at confidence 0.9 it asks s3 too ("yes" rules Alpha out), then diagnoses
    [rec] = consult.consult([case], doctor.scripted_policy(HAND, confidence=0.9), max_turns=5,
                            with_thinking=True, threshold=0.5, progress=False)
    assert rec["patient"] == ["No, I do not have s2.", "Yes, I have s3."] and rec["correct"] and rec["turns"] == 3


def test_scripted_doctor_reads_do_not_know_and_volunteered_symptoms():
    world = clinic.build_clinic(WORLD)
    d = world["diseases"][0]
    chief, other = d["symptoms"][0], d["symptoms"][1]
    first = dialog.description(f"I have had {chief} for 4 days. I also have {other}.")
    assert clinic.read_self_report(first) == (chief, other)
    asked = next(s for s in world["symptoms"] if s not in d["symptoms"])
    reply = dialog.doctor_reply(dialog.question_answer(clinic.question(asked)), "x")
    got_chief, answers = doctor.read_dialogue(first, [reply], [dialog.DONT_KNOW])
    assert got_chief == chief and answers == {other: True, asked: None}
    # "Sorry" about a symptom of its own organ system makes a disease less likely (recorded.related > other)
    # (the general symptom as the complaint: candidates of several systems)
    general = d["symptoms"][-1]
    sym = next(s for s in world["category_symptoms"][d["category"]] if s not in d["symptoms"])
    before, after = doctor.posterior(world, general, {}), doctor.posterior(world, general, {sym: None})
    assert after[0] < before[0]
    # it never asks what it was told or asked already
    nxt = doctor.scripted_reply(world, first, [reply], [dialog.DONT_KNOW], confidence=1.0)
    assert dialog.parse_reply(nxt).question not in {clinic.question(s) for s in (chief, other, asked)}


def test_forced_diagnosis_at_the_turn_limit():
    """A doctor that only asks: the last prompt carries the forced-diagnosis line, then it ends undiagnosed."""
    seen = []

    def asker(cons, prompts):
        seen.append(prompts[0][-1]["content"])
        return ["<answer>Question: Do you have s2?</answer>"] * len(cons)

    [rec] = consult.consult([hand_case(["s1", "s2"])], asker, max_turns=3, with_thinking=True, threshold=0.5,
                            progress=False)
    assert rec["turns"] == 3 and not rec["diagnosed"] and rec["correct"] is False and rec["diagnosis"] == ""
    assert [dialog.FORCE in s for s in seen] == [False, False, True]
    assert rec["questions"] == 3 and rec["repeated"] == 2 and len(rec["patient"]) == 2
    # the scripted doctor diagnoses when forced, whatever its confidence
    [rec] = consult.consult([hand_case(["s1", "s3"])], doctor.scripted_policy(HAND, confidence=1.0),
                            max_turns=2, with_thinking=True, threshold=0.5, progress=False)
    assert rec["turns"] == 2 and rec["diagnosed"]


def test_training_dialogues_end_as_the_evaluation_does(tmp_path):
    """With a short turn limit many scripted consultations reach it: exactly their last-turn rows
    carry the forced-diagnosis line, and those rows diagnose; no dialogue is longer."""
    out = tmp_path / "raw"
    data.write_clinic_data(WORLD, out, tmp_path / "corpus.jsonl", 2)
    rows = data.load_raw(out / "train.jsonl")
    forced = [r for r in rows if dialog.FORCE in r["prompt"][-1]["content"]]
    assert forced and all(r["extra_info"]["turn"] == 1 for r in forced)
    assert all(dialog.parse_reply(r["response"]).kind == "diagnosis" for r in forced)
    assert all(r["extra_info"]["turn"] <= 1 for r in rows)
    assert len(forced) == sum(r["extra_info"]["turn"] == 1 for r in rows)
    # the evaluation's last prompt is the same text: the scripted doctor replays the rows exactly
    cases = data.cases_from_rows(data.load_raw(out / "test.jsonl", need_patient=True))
    world = json.loads((out / "world.json").read_text())
    recs = consult.consult(cases, doctor.scripted_policy(world, confidence=WORLD["confidence"]), max_turns=2,
                           with_thinking=True, threshold=0.5, progress=False)
    replay = [p for c, r in zip(cases, recs) for p in data.consultation_rows(c["first"], r["replies"], r["patient"],
                                                                              {}, {}, 2)]
    assert [r["prompt"] for r in replay] == [r["prompt"] for r in data.load_raw(out / "test.jsonl")]


def test_patient_answers_by_similarity_with_a_threshold():
    info = clinic.patient_information(clinic.build_clinic(WORLD), {"present": ["a cough", "a fever"]})
    p = patient.Patient(info, threshold=0.5)
    assert p.answer("Do you have a cough?") == "Yes, I have a cough."
    assert p.answer("do you  have a COUGH?") == "Yes, I have a cough."           # normalised exact match
    assert p.answer("Have you got a cough at night?") == "Yes, I have a cough."  # the symptom word carries it
    assert p.answer("Do you have a headache?") == dialog.DONT_KNOW                # no recorded question is close
    sim, _ = p.similarity("Do you have a sore throat?")
    assert sim == pytest.approx(1.0)
    assert p.similarity("Do you have rashes?")[0] < 0.5
    # MTMedDialog entries with lists: i-th question pairs with the i-th answer, else all answers joined
    pairs = patient.recorded_pairs([{"doctor_question": ["q one", "q two"], "patient_response": ["a1", "a2"]},
                                    {"doctor_question": "q three", "patient_response": ["b1", "b2"]}])
    assert pairs == [("q one", "a1"), ("q two", "a2"), ("q three", "b1 b2")]
    assert patient.Patient([], 0.5).answer("anything?") == dialog.DONT_KNOW


@pytest.mark.parametrize("n_recorded", [1, 3, 12])
def test_partial_records_answer_only_what_they_record(n_recorded):
    """Whatever a case records, a recorded symptom gets its answer and any other one "Sorry"
    (the question frame "Do you have" never matches on its own)."""
    world = clinic.build_clinic(WORLD)
    for start in range(0, len(world["symptoms"]), 5):
        rec = (world["symptoms"] * 2)[start:start + n_recorded]
        case = {"present": rec[::2], "recorded": rec}
        p = patient.Patient(clinic.patient_information(world, case), threshold=0.5)
        for s in world["symptoms"]:
            want = clinic.answer(s, s in case["present"]) if s in rec else dialog.DONT_KNOW
            assert p.answer(clinic.question(s)) == want, (s, rec)


# ------------------------------------------------------------------ rows, with_thinking, validation
def test_clinic_rows_are_the_consultations_the_evaluation_replays(clinic_files):
    out, counts = clinic_files
    rows = data.load_raw(out / "test.jsonl", need_patient=True)
    assert len(rows) == counts["test"]
    cases = data.cases_from_rows(rows)
    assert len(cases) == WORLD["cases"]["test"] and all(c["exact"] for c in cases)
    world = json.loads((out / "world.json").read_text())
    records = consult.consult(cases, doctor.scripted_policy(world, confidence=WORLD["confidence"]),
                              max_turns=MAX_TURNS, with_thinking=True, threshold=0.5, progress=False)
    # replaying with the scripted doctor gives back exactly the rows: same prompts, same replies
    replay = [p for c, r in zip(cases, records)
              for p in data.consultation_rows(c["first"], r["replies"], r["patient"], {}, {}, MAX_TURNS)]
    assert [r["prompt"] for r in replay] == [r["prompt"] for r in rows]
    assert [r["response"] for r in replay] == [r["response"] for r in rows]
    first = rows[0]
    assert first["prompt"][0]["role"] == "system" and first["prompt"][1]["content"].startswith("Patient's description: ")
    assert first["response"].startswith("<think>") and set(first["reward_model"]["ground_truth"]) == {
        "diagnosis", "recommendation"}
    assert first["extra_info"]["index"] == 0 and first["extra_info"]["turn"] == 0


def _multi_turn_row():
    return {"prompt": [{"role": "system", "content": "sys <think>kept</think>"},
                       {"role": "user", "content": "Patient's description: x\nFormat: <think> </think> <answer>"},
                       {"role": "assistant", "content": "<think>first idea</think>\n<answer>Question: q1?</answer>"},
                       {"role": "user", "content": "Yes."},
                       {"role": "assistant", "content": "<answer>Question: q2?</answer>"},   # no think block
                       {"role": "user", "content": "No."}],
            "response": "<think>final</think>\n<answer>Diagnosis: D\nRecommendation: R</answer>",
            "reward_model": {"ground_truth": {"diagnosis": "D", "recommendation": "R"}}}


def test_with_thinking_false_strips_targets_and_earlier_doctor_turns_only():
    row = _multi_turn_row()
    kept = data.sft_row(row, True)
    assert kept["prompt"] == row["prompt"] and kept["response"] == row["response"]
    assert kept["messages"] == row["prompt"] + [{"role": "assistant", "content": row["response"]}]
    dropped = data.sft_row(row, False)
    assert dropped["response"] == "<answer>Diagnosis: D\nRecommendation: R</answer>"
    assert dropped["prompt"][2]["content"] == "<answer>Question: q1?</answer>"
    assert dropped["prompt"][4]["content"] == "<answer>Question: q2?</answer>"
    # system and patient turns are never touched (the format line names the tags)
    assert dropped["prompt"][0] == row["prompt"][0] and dropped["prompt"][1] == row["prompt"][1]
    assert "<think>" not in "".join(m["content"] for m in dropped["messages"] if m["role"] == "assistant")
    # a row without think blocks is the same either way
    plain = data.sft_row({**row, "response": dropped["response"], "prompt": dropped["prompt"]}, True)
    assert plain == data.sft_row({**row, "response": dropped["response"], "prompt": dropped["prompt"]}, False)


def test_history_without_thinking_matches_the_training_rows(clinic_files):
    out, _ = clinic_files
    rows = data.load_raw(out / "train.jsonl")
    row = next(r for r in rows if r["extra_info"]["turn"] == 2)
    first, k = row["prompt"][:2], 2
    replies = [m["content"] for m in row["prompt"][2::2]]
    answers = [m["content"] for m in row["prompt"][3::2]]
    assert len(replies) == k
    # the budget the clinic's consultations had is stated at the end of the description
    assert row["prompt"][1]["content"].endswith("\n" + dialog.BUDGET.format(n=MAX_TURNS))
    assert dialog.history_messages(first, replies, answers, with_thinking=False,
                                   budget=MAX_TURNS) == data.sft_row(row, False)["prompt"]
    # the evaluation's consultation of the same dialogue states the same budget: the same prompt
    [case] = [c for c in data.cases_from_rows(rows) if c["first"][1]["content"] in row["prompt"][1]["content"]][:1]
    assert "turns." not in case["first"][1]["content"]
    con = consult.Consultation(0, case, MAX_TURNS, with_thinking=False)
    con.replies, con.patient = replies, answers
    assert con.prompt() == data.sft_row(row, False)["prompt"]
    # another budget replaces the line, and your own rows get it stated in their SFT rows
    assert dialog.with_budget(first, 3)[1]["content"].endswith("at most 3 turns.")
    own = {**row, "prompt": [first[0], {"role": "user", "content": case["first"][1]["content"]}] + row["prompt"][2:]}
    assert data.sft_row(own, True, budget=MAX_TURNS)["prompt"] == data.sft_row(row, True)["prompt"]


BAD_ROWS = [
    (lambda r: r.pop("response"), "response"),
    (lambda r: r.update(response="<answer>Maybe</answer>"), "response"),
    (lambda r: r.update(prompt=[]), "prompt"),
    (lambda r: r["prompt"].append({"role": "assistant", "content": "x"}), "prompt"),
    (lambda r: r["prompt"].__setitem__(1, {"role": "patient", "content": "x"}), "prompt[1]"),
    (lambda r: r["reward_model"]["ground_truth"].pop("diagnosis"), "reward_model.ground_truth.diagnosis"),
    (lambda r: r["reward_model"].update(patient_information=[{"doctor_question": "q"}]),
     "reward_model.patient_information[0].patient_response"),
]
# a parquet column holds one type: these rows cannot be written next to good ones as parquet
JSONL_ONLY_ROWS = [
    (lambda r: r.update(reward_model="D"), "reward_model"),
    (lambda r: r["prompt"].__setitem__(1, {"role": ["user"], "content": "x"}), "prompt[1]"),  # an unhashable role
]


@pytest.mark.parametrize("mutate,field,ext", [(m, f, e) for m, f in BAD_ROWS for e in ("jsonl", "parquet")]
                         + [(m, f, "jsonl") for m, f in JSONL_ONLY_ROWS])
def test_bad_rows_name_file_row_and_field_and_nothing_is_written(tmp_path, mutate, field, ext):
    good = _multi_turn_row()
    bad = copy.deepcopy(good)
    mutate(bad)
    path = tmp_path / f"val.{ext}"
    (write_jsonl if ext == "jsonl" else write_parquet)(path, [good, good, bad])
    write_jsonl(tmp_path / "train.jsonl", [good])
    with pytest.raises(DataError) as err:
        data.write_sft_data(str(tmp_path / "train.jsonl"), str(path), False, tmp_path / "out")
    assert str(err.value).startswith(f"{path}:3: field '{field}'")
    assert not (tmp_path / "out").exists()


def test_test_rows_need_patient_information(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [_multi_turn_row()])
    with pytest.raises(DataError, match=r"test.jsonl:1: field 'reward_model.patient_information'"):
        data.write_cases(str(tmp_path / "test.jsonl"), tmp_path / "cases.jsonl")
    assert not (tmp_path / "cases.jsonl").exists()


@pytest.mark.parametrize("extra", ["showcase", [1]])
def test_an_extra_info_that_is_no_object_names_file_line_and_field(tmp_path, extra):
    """A string or list extra_info raised a raw TypeError or AttributeError in write_cases."""
    row = _multi_turn_row()
    row["reward_model"]["patient_information"] = [{"doctor_question": ["q1?"], "patient_response": ["Yes."]}]
    write_jsonl(tmp_path / "test.jsonl", [row, dict(row, extra_info=extra)])
    with pytest.raises(DataError, match=r"test.jsonl:2: field 'extra_info': must be an object"):
        data.write_cases(str(tmp_path / "test.jsonl"), tmp_path / "cases.jsonl")
    assert not (tmp_path / "cases.jsonl").exists()


def test_one_case_id_on_two_dialogues_is_refused_and_a_null_one_names_none(tmp_path):
    """Two dialogues under one extra_info.case were merged into one case (the second left the
    held-out set without a word); a null case id (pyarrow fills one into rows without it)
    named them all one case. Now the conflict is refused, naming both lines, and a null id
    groups by description and diagnosis, as rows without one do."""
    row = _multi_turn_row()
    row["reward_model"]["patient_information"] = [{"doctor_question": ["q1?"], "patient_response": ["Yes."]}]
    other = copy.deepcopy(row)
    other["prompt"][1]["content"] = other["prompt"][1]["content"].replace("x", "another complaint")
    other["reward_model"]["ground_truth"] = {"diagnosis": "E", "recommendation": "S"}
    path = tmp_path / "test.jsonl"
    write_jsonl(path, [dict(row, extra_info={"case": 1}), dict(row, extra_info={"case": 1}),
                       dict(other, extra_info={"case": 1})])
    with pytest.raises(DataError, match=r"test.jsonl:3: field 'extra_info.case': case 1 has another description "
                                         r"or ground truth than on line 1"):
        data.write_cases(str(path), tmp_path / "cases.jsonl")
    assert not (tmp_path / "cases.jsonl").exists()
    write_jsonl(path, [dict(row, extra_info={"case": None}), dict(other, extra_info={"case": None})])
    assert data.write_cases(str(path), tmp_path / "cases.jsonl") == 2


def test_a_test_consultation_of_the_training_files_is_refused_dropped_or_kept(tmp_path):
    """Your own files (med.raw_files): a held-out dialogue whose diagnosis prompt (the whole
    consultation, numbers masked) is a train or val prompt is refused naming the test file and
    its line, dropped with every row of its dialogue, or kept; cases_overlap.json counts it."""
    row = _multi_turn_row()
    row["reward_model"]["patient_information"] = [{"doctor_question": ["q1?"], "patient_response": ["Yes."]}]
    turn0 = dict(row, prompt=row["prompt"][:2], response="<answer>Question: q1?</answer>")
    other = copy.deepcopy(row)
    other["prompt"][1]["content"] = "Patient's description: y for 3 days\nFormat: <think> </think> <answer>"
    seen = copy.deepcopy(row)  # the test dialogue again, with another number
    seen["prompt"][1]["content"] = "Patient's description: x for 12 days\nFormat: <think> </think> <answer>"
    leaked = copy.deepcopy(seen)
    leaked["prompt"][1]["content"] = leaked["prompt"][1]["content"].replace("12", "5")
    leaked_turn0 = dict(leaked, prompt=leaked["prompt"][:2], response="<answer>Question: q1?</answer>")
    write_jsonl(tmp_path / "train.jsonl", [seen])
    write_jsonl(tmp_path / "val.jsonl", [turn0])
    test = tmp_path / "test.jsonl"
    write_jsonl(test, [other, leaked_turn0, leaked])
    training = {"train": str(tmp_path / "train.jsonl"), "val": str(tmp_path / "val.jsonl")}
    cases, report = tmp_path / "cases.jsonl", tmp_path / "overlap.json"
    with pytest.raises(DataError, match=rf"^{re.escape(str(test))}:3: field 'prompt': 1 of 2 test consultations are "
                                         r"consultations of the training files"):
        data.write_cases(str(test), cases, training=training, overlap_out=report)
    assert not cases.exists() and not report.exists()
    assert data.write_cases(str(test), cases, training=training, policy="drop", overlap_out=report) == 1
    assert [c["first"][1]["content"].startswith("Patient's description: y") for _, c in read_jsonl(cases)] == [True]
    counts = json.loads(report.read_text())
    assert counts["in_train"] == 1 and counts["dropped"] == 1 and counts["lines"] == [3] and counts["policy"] == "drop"
    assert data.write_cases(str(test), cases, training=training, policy="allow", overlap_out=report) == 2
    assert json.loads(report.read_text())["turns_in_train"] == 1  # the leaked diagnosis row; its first turn is new


def test_mtmeddialog_rows_group_into_cases(tmp_path):
    """User rows without clinic numbering: one case per (description, diagnosis), not exact-scored."""
    row = _multi_turn_row()
    row["reward_model"]["patient_information"] = [{"doctor_question": ["q1?"], "patient_response": ["Yes."]}]
    turn0 = dict(row, prompt=row["prompt"][:2], response="<answer>Question: q1?</answer>")
    other = copy.deepcopy(turn0)
    other["prompt"][1]["content"] = "Patient's description: y"
    cases = data.cases_from_rows([turn0, row, other])
    assert len(cases) == 2 and cases[0]["first"] == row["prompt"][:2] and not cases[0]["exact"]
    assert cases[0]["category"] == "all"
    [rec] = consult.consult(cases[:1], lambda c, p: ["<answer>Diagnosis: d\nRecommendation: R</answer>"],
                            max_turns=3, with_thinking=True, threshold=0.5, progress=False)
    assert rec["correct"] is None
    assert pd.isna(consult.summarize([rec])["accuracy"])


# ------------------------------------------------------------------ metrics by hand
def test_metrics_on_hand_computed_cases():
    def rec(diag, truth, correct, **kw):
        base = {"category": "c", "diagnosis": diag, "truth_diagnosis": truth, "recommendation": "rest well now",
                "truth_recommendation": "rest well now", "correct": correct, "diagnosed": bool(diag)}
        return {**base, **kw}

    records = [rec("Roku disease", "Roku disease", True, turns=3, questions=2, repeated=1, invalid=0,
                   patient_replies=2, sorry=1, reward=11.0, success=True),
               rec("Roku fever", "Guzes syndrome", False, turns=4, questions=2, repeated=0, invalid=1,
                   patient_replies=3, sorry=0, reward=2.0, success=False),
               rec("", "Kai fever", False, turns=10, questions=8, repeated=3, invalid=2, patient_replies=9, sorry=9,
                   reward=-20.0, success=False)]
    s = consult.summarize(records)
    assert s["reward"] == pytest.approx(-7 / 3) and s["success_rate"] == pytest.approx(1 / 3)
    assert s["accuracy"] == pytest.approx(1 / 3)
    lo, hi = s["accuracy_lo"], s["accuracy_hi"]
    assert 0 < lo < 1 / 3 < hi < 1
    # ROUGE-L F1: 1, 0 (no common word), 0 (no diagnosis)
    assert s["diag_rougeL"] == pytest.approx((1 + 0 + 0) / 3)
    assert consult.rouge_l(["Roku fever"], ["Kai fever"]) == [pytest.approx(0.5)]
    assert s["rec_rougeL"] == pytest.approx(1.0)
    assert s["turns"] == pytest.approx(17 / 3)
    assert s["repeated_question_rate"] == pytest.approx(4 / 12)
    assert s["invalid_format_rate"] == pytest.approx(3 / 17)
    assert s["ir_precision"] == pytest.approx((14 - 10) / 14)
    assert s["diagnosed_rate"] == pytest.approx(2 / 3)
    # corpus BLEU-1: 3 of 4 words match, same length (no brevity penalty)
    assert consult.corpus_bleu(["a b c d"], ["a b c e"], 1) == pytest.approx(0.75)
    assert consult.corpus_bleu(["rest well now please"], ["rest well now please"], 4) == pytest.approx(1.0)
    assert consult.corpus_bleu(["rest well now"], ["rest well now"], 4) == 0.0  # no 4-gram: why names get BLEU-2
    rows = consult.summary_rows(records)
    assert [r["category"] for r in rows] == ["all", "c"]


def test_random_doctor_is_seeded_and_near_chance_and_mostly_hears_sorry(clinic_files):
    out, _ = clinic_files
    world = json.loads((out / "world.json").read_text())
    cases = data.cases_from_rows(data.load_raw(out / "test.jsonl", need_patient=True)) * 10
    for i, c in enumerate(cases):
        cases[i] = dict(c, id=str(i))
    runs = [consult.consult(cases, doctor.random_policy(world, max_turns=MAX_TURNS, seed=s), max_turns=MAX_TURNS,
                            with_thinking=True, threshold=0.5, progress=False) for s in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    rnd = consult.summarize(runs[0])
    assert rnd["accuracy"] == pytest.approx(1 / len(world["diseases"]), abs=0.06)
    assert all(1 <= r["questions"] <= MAX_TURNS - 1 and r["repeated"] == 0 for r in runs[0])
    # information-retrieval precision tells the doctors apart: the scripted doctor asks what the
    # likely diseases' cases record, the random one mostly what they do not
    scripted_recs = consult.consult(cases, doctor.scripted_policy(world, confidence=WORLD["confidence"]),
                                    max_turns=MAX_TURNS, with_thinking=True, threshold=0.5, progress=False)
    consult.mark_evidence(scripted_recs, cases, world, WORLD["confidence"])
    scripted = consult.summarize(scripted_recs)
    assert rnd["ir_precision"] < 0.45 < scripted["ir_precision"]
    assert scripted["accuracy"] > 0.8 > 0.2 > rnd["accuracy"]
    # evidence: the scripted doctor stops asking once its posterior passes the confidence, so its
    # consultations end with sufficient evidence (but those forced at the last turn) and it
    # concludes right from it; the random doctor often asks enough but guesses
    assert "evidence_sufficient" not in runs[0][0] and pd.isna(rnd["evidence_sufficient_rate"])
    consult.mark_evidence(runs[0], cases, world, WORLD["confidence"])
    rnd = consult.summarize(runs[0])
    assert all(r["correct"] for r in scripted_recs if r["evidence_sufficient"])
    assert scripted["accuracy_if_sufficient"] == 1.0 and scripted["evidence_sufficient_rate"] > 0.8
    assert rnd["accuracy_if_sufficient"] < 0.3 and 0.2 < rnd["evidence_sufficient_rate"] < 1.0
    assert rnd["accuracy_if_sufficient"] == pytest.approx(
        sum(r["correct"] for r in runs[0] if r["evidence_sufficient"]) / sum(r["evidence_sufficient"] for r in runs[0]))


# ------------------------------------------------------------------ the default clinic: held out, and it fits
@pytest.fixture(scope="module")
def default_clinic(tmp_path_factory):
    """The raw rows the med_world rule writes for the default config (config.yaml med section)."""
    out = tmp_path_factory.mktemp("default_clinic")
    data.write_clinic_data(MED["world"], out, out / "corpus.jsonl", MAX_TURNS)
    return out


def _masked(prompt):
    return json.dumps([[m["role"], re.sub(r"\d+", "#", m["content"])] for m in prompt])


def test_default_clinic_holds_out_its_test_consultations(default_clinic):
    """With every number masked, no test diagnosis prompt (the consultation so far, then
    "Diagnosis: ...") is also a training prompt: the clinic redraws a case whose consultation an
    earlier split holds (issue 20 allowed 10%; the redraw makes it 0). Checked on the rows as written."""
    train = data.load_raw(default_clinic / "train.jsonl")
    test = data.load_raw(default_clinic / "test.jsonl", need_patient=True)
    seen = {_masked(r["prompt"]) for r in train}
    diag = [r for r in test if dialog.parse_reply(r["response"]).kind == "diagnosis"]
    assert len(diag) == MED["world"]["cases"]["test"]
    leaked = sum(_masked(r["prompt"]) in seen for r in diag)
    assert leaked == 0, f"{leaked} of {len(diag)} test diagnosis prompts are training prompts"
    report = json.loads((default_clinic / "overlap.json").read_text())["test"]
    assert report["in_train"] == leaked and report["test_diagnosis_prompts"] == len(diag)
    # the consultations differ in more than the first turn, and some answers are "Sorry"
    assert len({_masked(r["prompt"]) for r in diag}) == len(diag)
    assert sum(dialog.DONT_KNOW in json.dumps(r["prompt"]) for r in train) > len(train) / 10
    n_symptoms = len(json.loads((default_clinic / "world.json").read_text())["symptoms"])
    assert all(len(r["reward_model"]["patient_information"]) < n_symptoms for r in test)


def test_default_rows_fit_the_tiny_base_window(default_clinic):
    """The longest SFT row (with and without think blocks, train and val) in tokens of the med
    base's tokenizer fits its pretraining window, which fits its positions and sft.max_length."""
    from sft2rl import model as model_mod
    from sft2rl.rows import load_corpus
    from sft2rl.sft import encode_conversation

    window = MED["pretrain"]["seq_len"]
    assert window <= MED["tiny"]["max_position_embeddings"] and window <= MED["sft"]["max_length"]
    tok = model_mod.build_tokenizer(load_corpus(default_clinic / "corpus.jsonl"), MED["tiny"]["vocab_size"],
                                    ("<think>", "</think>", "<answer>", "</answer>"))
    rows = data.load_raw(default_clinic / "train.jsonl") + data.load_raw(default_clinic / "val.jsonl")
    longest = {}
    for thinking in (True, False):
        longest[thinking] = max(encode_conversation(tok, data.sft_row(r, thinking)["messages"], 10**6,
                                                    "last")["length"] for r in rows)
    assert longest[False] < longest[True] <= window, (longest, window)


@pytest.mark.parametrize("thinking", [True, False])
def test_consultation_rows_train_each_turn_as_its_own_row_does(clinic_files, thinking):
    """One row per consultation (med.sft_rows: consultation) trained on every doctor turn puts
    the loss on exactly the tokens the per-turn rows put it on, each after the same tokens."""
    from sft2rl import model as model_mod
    from sft2rl.rows import load_corpus
    from sft2rl.sft import IGNORE, encode_conversation

    out, _ = clinic_files
    tok = model_mod.build_tokenizer(load_corpus(out / "corpus.jsonl"), MED["tiny"]["vocab_size"],
                                    ("<think>", "</think>", "<answer>", "</answer>"))
    turns = [data.sft_row(r, thinking) for r in data.load_raw(out / "train.jsonl")]
    packed = data.pack_consultations(out / "train.jsonl", turns)
    assert len(packed) == WORLD["cases"]["train"] < len(turns)
    assert all(dialog.parse_reply(r["response"]).kind == "diagnosis" for r in packed)
    big = [encode_conversation(tok, r["messages"], 10**6, "all") for r in packed]
    trained = 0
    for r in turns:
        own = encode_conversation(tok, r["messages"], 10**6, "last")
        n = own["length"]
        home = [b for b in big if b["input_ids"][:n] == own["input_ids"]]
        assert home, r["messages"][-1]
        # on its own row's tokens the consultation row trains the row's target, and nothing else
        assert home[0]["labels"][n - sum(t != IGNORE for t in own["labels"]):n] == \
            [t for t in own["labels"] if t != IGNORE]
        trained += sum(t != IGNORE for t in own["labels"])
    assert sum(t != IGNORE for b in big for t in b["labels"]) == trained
    assert sum(b["length"] for b in big) * 2 < sum(encode_conversation(tok, r["messages"], 10**6, "last")["length"]
                                                   for r in turns)


def test_consultation_rows_need_every_turn_of_a_history(tmp_path):
    """A row whose earlier doctor turns have no rows of their own cannot be packed without
    training them: the error names file, row and field; per-turn rows train such a file."""
    row = _multi_turn_row()
    write_jsonl(tmp_path / "train.jsonl", [row])
    write_jsonl(tmp_path / "val.jsonl", [row])
    with pytest.raises(DataError, match=r"train.jsonl:1: field 'prompt': its doctor turn at message 3 has no row"):
        data.write_sft_data(str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"), False, tmp_path / "out",
                            rows="consultation")
    assert not (tmp_path / "out").exists()
    assert data.write_sft_data(str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"), False, tmp_path / "out",
                               rows="turn") == {"train": 1, "val": 1}
    # with a row for each of its turns the consultation is one row; a second copy of the whole
    # consultation would train its early turns twice where the per-turn rows train them once
    first = {**row, "prompt": row["prompt"][:2], "response": row["prompt"][2]["content"]}
    second = {**row, "prompt": row["prompt"][:4], "response": row["prompt"][4]["content"]}
    rows = [data.sft_row(r, True) for r in (first, second, row)]
    assert data.pack_consultations("t", rows) == rows[2:]
    with pytest.raises(DataError, match=r"^t:1: field 'prompt': packed, this doctor turn would train 2 times"):
        data.pack_consultations("t", rows + rows[2:])


# ------------------------------------------------------------------ decoupling
QA_PACKAGE = "sft2rl.tasks.qa"
MED_MODULES = ["sft2rl.tasks.med." + m for m in ("clinic", "consult", "data", "dialog", "doctor", "patient", "table")]


def test_the_medical_task_imports_no_qa_module():
    """Neither the imports the workflow's code() follows (module level and inside functions) nor
    what importing the package loads reach a QA module: editing the QA world never reruns it."""
    from sft2rl import fingerprint

    scripts = [Path(__file__).resolve().parents[1] / "workflow/scripts" / f"{s}.py"
               for s in ("med_data", "med_eval", "med_table", "base_model", "sft", "merge")]
    reached = fingerprint.module_closure([m[len("sft2rl."):] for m in MED_MODULES], scripts)
    assert not [m for m in reached if f"sft2rl.{m}".startswith(QA_PACKAGE)], reached
    code = ("import sys\n" + "".join(f"import {m}\n" for m in MED_MODULES) +
            f"print([m for m in sys.modules if m.startswith({QA_PACKAGE!r})])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


# ------------------------------------------------------------------ the thinking ablation's paired intervals
def _records(correct, turns=2):
    return [{"case": str(i), "correct": bool(c), "diagnosed": True, "diagnosis": "A" if c else "B",
             "truth_diagnosis": "A", "recommendation": "r", "truth_recommendation": "r", "turns": turns,
             "questions": turns - 1, "repeated": 0, "invalid": 0, "patient_replies": turns - 1, "sorry": 0}
            for i, c in enumerate(correct)]


def test_paired_bootstrap_of_think_minus_nothink():
    rng = np.random.default_rng(0)
    base = [rng.random(80) < 0.5 for _ in range(3)]
    same = [table.case_arrays(_records(b)) for b in base]
    ci = table.paired_bootstrap(same, same, n_boot=500)
    assert ci["diff"]["accuracy_ci_low"] == ci["diff"]["accuracy_ci_high"] == 0.0  # identical runs: no difference
    lo, hi = ci["true"]["accuracy_ci_low"], ci["true"]["accuracy_ci_high"]
    assert lo < np.mean([b.mean() for b in base]) < hi
    # think right on 10 more cases in every seed: the paired interval is narrow around +0.125
    better = [b.copy() for b in base]
    for b in better:
        b[np.flatnonzero(~b)[:10]] = True
    ci = table.paired_bootstrap([table.case_arrays(_records(b)) for b in better], same, n_boot=500)
    assert 0 < ci["diff"]["accuracy_ci_low"] < 0.125 < ci["diff"]["accuracy_ci_high"] < 0.25
    unpaired = ci["true"]["accuracy_ci_high"] - ci["true"]["accuracy_ci_low"]
    assert ci["diff"]["accuracy_ci_high"] - ci["diff"]["accuracy_ci_low"] < unpaired
    with pytest.raises(ValueError, match="same held-out cases"):
        table.paired_bootstrap(same[:1], [table.case_arrays(_records(base[0][:40]))])


# ------------------------------------------------------------------ the reference's own MTMedDialog files
def _dialogue(description="Patient's description: Diarrhea (male, 37 years old)", n_questions=2, diagnose=True,
              unanswered=True):
    """The rows of one MTMedDialog dialogue as the reference's files hold them: one per doctor
    turn, each prompt the one before plus the last reply and the patient's answer; the record's
    last entry has a null answer (``unanswered``: the patient never replied), as in 169 of the
    reference's 5,516 train rows."""
    first = [{"role": "system", "content": dialog.SYSTEM_PROMPT}, {"role": "user", "content": description}]
    replies = [f"<think>ask {i}</think>\n<answer>Question: symptom number {i}?</answer>" for i in range(n_questions)]
    if diagnose:
        replies.append("<think>enough</think>\n<answer>Diagnosis: enteritis\nRecommendation: rest</answer>")
    info = [{"doctor_question": [f"symptom number {i}?"], "patient_response": [f"answer {i}"]}
            for i in range(n_questions)]
    if unanswered:
        info.append({"doctor_question": ["Are you there? Feeling any better?"], "patient_response": None})
    rm = {"ground_truth": {"diagnosis": "enteritis", "recommendation": "rest"}, "patient_information": info}
    rows, prompt = [], list(first)
    for i, reply in enumerate(replies):
        rows.append({"data_source": "medical_consultation", "prompt": [dict(m) for m in prompt], "response": reply,
                     "reward_model": copy.deepcopy(rm), "extra_info": {"index": i}})
        prompt += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"answer {i}"}]
    return rows


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_null_patient_responses_load_and_record_no_answer(tmp_path, ext):
    rows = _dialogue()
    path = tmp_path / f"test.{ext}"
    (write_jsonl if ext == "jsonl" else write_parquet)(path, rows)
    loaded = data.load_raw(path, need_patient=True)
    assert len(loaded) == 3 and loaded[0]["reward_model"]["patient_information"][-1]["patient_response"] is None
    assert data.write_cases(str(path), tmp_path / "cases.jsonl") == 1
    [case] = data.read_cases(tmp_path / "cases.jsonl")
    # the question whose answer is null is one the record cannot answer
    assert patient.recorded_pairs(case["patient_information"]) == [("symptom number 0?", "answer 0"),
                                                                   ("symptom number 1?", "answer 1")]
    p = patient.Patient(case["patient_information"], 0.5)
    assert p.answer("Are you there? Feeling any better?") == dialog.DONT_KNOW
    assert p.answer("symptom number 1?") == "answer 1"


@pytest.mark.parametrize("bad,field", [
    (5, "reward_model.patient_information[1].patient_response"),
    ([], "reward_model.patient_information[1].patient_response"),
    (["fine", None], "reward_model.patient_information[1].patient_response"),
    ("doctor_question", "reward_model.patient_information[1].doctor_question"),
])
def test_other_wrong_patient_information_still_names_file_line_and_field(tmp_path, bad, field):
    rows = _dialogue(n_questions=1)
    entry = rows[1]["reward_model"]["patient_information"][1]
    if bad == "doctor_question":
        entry["doctor_question"] = None
    else:
        entry["patient_response"] = bad
    write_jsonl(tmp_path / "test.jsonl", rows)
    with pytest.raises(DataError) as err:
        data.write_cases(str(tmp_path / "test.jsonl"), tmp_path / "cases.jsonl")
    assert str(err.value).startswith(f"{tmp_path / 'test.jsonl'}:2: field '{field}'")
    assert not (tmp_path / "cases.jsonl").exists()


def test_every_malformed_response_is_named_at_once_and_nothing_is_written(tmp_path):
    """The reference's train file has 9 responses that are not a doctor turn ("Questions: …",
    "Recommendation: …" alone, a bare thank-you, "Diagnosis: …" without a recommendation):
    one error counts them all and names the first lines, rather than stopping at the first."""
    good = _dialogue(n_questions=1, unanswered=False)
    shapes = ["<answer>Questions: Eat more vegetables. Have you had any bleeding?</answer>",
              "<think>t</think>\n<answer>Recommendation: Take omeprazole twice daily.</answer>",
              "<think>t</think>\n<answer>You're welcome. Please follow up if it persists.</answer>",
              "<answer>Diagnosis: This seems like gastroenteritis. Avoid cold foods, okay?</answer>",
              "<answer>Recommendation: Warm sitz baths daily.</answer>",
              "<answer>Recommendation: Schedule a follow-up in 4 weeks.</answer>",
              "<answer>You're very welcome!</answer>"]
    rows = []
    for shape in shapes:
        rows += [good[0], {**good[1], "response": shape}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", good)
    with pytest.raises(DataError) as err:
        data.write_sft_data(str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"), False, tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'train.jsonl'}:2: field 'response': 7 of 14 rows (lines 2, 4, 6, 8, 10 "
                          "and 2 more) are not a doctor turn")
    assert "'Question: …' or 'Diagnosis: …\\nRecommendation: …'" in msg
    assert not (tmp_path / "out").exists()
    write_jsonl(tmp_path / "train.jsonl", [good[0], {**good[1], "response": shapes[1]}] + good)
    with pytest.raises(DataError, match=r"train.jsonl:2: field 'response': 1 of 4 rows \(line 2\) are not"):
        data.load_raw(tmp_path / "train.jsonl")


@pytest.mark.parametrize("rows_mode", ["turn", "consultation"])
def test_a_dialogue_longer_than_the_budget_states_its_own_length(tmp_path, rows_mode):
    """Your own rows state med.eval.max_turns, but a longer dialogue states its own length: no
    row keeps asking past the limit it states (the reference's train file, budget 10: 71 rows
    were doctor turns 10 to 14 stating "at most 10 turns")."""
    long = _dialogue("Patient's description: long", n_questions=4, unanswered=False)    # 5 doctor turns
    short = _dialogue("Patient's description: short", n_questions=1, unanswered=False)  # 2 doctor turns
    write_jsonl(tmp_path / "train.jsonl", long + short)
    write_jsonl(tmp_path / "val.jsonl", short)
    for budget, want_long, want_short in [(3, 5, 3), (5, 5, 5), (8, 8, 8)]:
        out = tmp_path / f"out{budget}"
        data.write_sft_data(str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl"), True, out, budget=budget,
                            rows=rows_mode)
        written = pd.read_parquet(out / "train.parquet").to_dict("records")
        stated = [int(re.search(r"You have at most (\d+) turns\.$", r["prompt"][1]["content"]).group(1))
                  for r in written]
        want = [want_long] * 5 + [want_short] * 2 if rows_mode == "turn" else [want_long, want_short]
        assert stated == want, budget
        for r, n in zip(written, stated):  # no doctor turn asks at or after the last turn it was allowed
            turn = sum(m["role"] == "assistant" for m in r["prompt"])
            assert turn < n and (turn < n - 1 or dialog.parse_reply(r["response"]).kind == "diagnosis")
    assert data.dialogue_turns(long + short) == [5] * 5 + [2] * 2
    assert data.dialogue_turns(long[:3]) == [3] * 3  # a row no other row continues ends its dialogue


def test_an_invalid_turn_is_no_evidence_for_the_scripted_reading():
    """read_dialogue reads the consultation as it was played: a question turn with text after its
    answer was not answered ("Sorry, I do not understand."), so it records nothing."""
    first = "I have had a fever for 3 days."
    invalid = "<answer>Question: Do you have a cough?</answer> Thank you."
    assert dialog.parse_turn(invalid).kind == "invalid"
    assert doctor.read_dialogue(first, [invalid], [dialog.NOT_UNDERSTOOD])[1] == {}
    valid = "<answer>Question: Do you have a cough?</answer>"
    assert doctor.read_dialogue(first, [valid], [dialog.DONT_KNOW])[1] == {"a cough": None}
