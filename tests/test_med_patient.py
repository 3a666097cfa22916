"""The simulated patient's backends: the rule patient, a model in this process, an
OpenAI-compatible endpoint (against a loopback stub server that records the requests)."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml

from sft2rl.errors import ConfigError, RunError
from sft2rl.tasks.med import clinic, data, dialog, patient
from sft2rl.tasks.med.patient import PatientRequest, patient_backend

MED = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())["med"]
WORLD = dict(MED["world"], cases={"train": 8, "val": 2, "test": 4})


@pytest.fixture(scope="module")
def cases():
    """Clinic cases as the consultation sees them (partial records, as the default clinic draws)."""
    world = clinic.build_clinic(WORLD)
    return world, [data.clinic_case(world, c) for c in clinic.generate_cases(world, WORLD)]


def hand_case(case_id="7", facts=(("Do you have a cough?", "Yes, I have a cough."),
                                  ("Do you have a fever?", "No, I do not have a fever."))):
    return {"id": case_id, "category": "c", "exact": True,
            "first": [{"role": "system", "content": dialog.SYSTEM_PROMPT},
                      {"role": "user", "content": dialog.description("I have had a cough for 3 days.")}],
            "truth": {"diagnosis": "Roku fever", "recommendation": "Rest."},
            "patient_information": [{"doctor_question": [q], "patient_response": [a]} for q, a in facts]}


# ------------------------------------------------------------------ the rule patient
def test_rule_backend_answers_what_the_rule_patient_answers(cases):
    world, evs = cases
    backend = patient_backend("rule", 0.5)
    questions = [clinic.question(s) for s in world["symptoms"]] + ["Have you got a cough at night?",
                                                                    "Do you have a headache?", "do you  have A FEVER?"]
    requests = [PatientRequest(ev, q, history=[("x?", "y")]) for q in questions for ev in evs]  # cases interleaved
    rule = {ev["id"]: patient.Patient(ev["patient_information"], 0.5) for ev in evs}  # the rule patient as it is
    want = [rule[r.case["id"]].answer(r.question) for r in requests]
    got = backend.answer(requests)
    assert got == want
    assert dialog.DONT_KNOW in got and any(a.startswith("Yes, I have") for a in got)  # both kinds occur
    # one patient per case, reused: the same case asked again builds nothing new
    assert len(backend.cache) == len(evs)
    first = backend.patient(evs[0])
    assert backend.answer(requests[::-1]) == want[::-1]
    assert backend.patient(dict(evs[0])) is first and len(backend.cache) == len(evs)
    # same id, another record: another patient
    other = dict(evs[0], patient_information=[{"doctor_question": ["Do you have a rash?"],
                                               "patient_response": ["Yes, I have a rash."]}])
    assert backend.answer([PatientRequest(other, "Do you have a rash?")]) == ["Yes, I have a rash."]
    assert backend.patient(other) is not first and len(backend.cache) == len(evs) + 1
    assert backend.describe() == {"kind": "rule", "threshold": 0.5}
    assert patient_backend(None, 0.3).describe() == {"kind": "rule", "threshold": 0.3}
    assert backend.answer([]) == []


def test_rule_backend_threshold():
    case = hand_case()
    q = "Is your cough worse with a fever?"  # shares words with both recorded questions
    assert patient_backend("rule", 0.99).answer([PatientRequest(case, q)]) == [dialog.DONT_KNOW]
    assert patient_backend("rule", 0.01).answer([PatientRequest(case, q)]) == [patient.Patient(
        case["patient_information"], 0.01).answer(q)] != [dialog.DONT_KNOW]


# ------------------------------------------------------------------ the model patients' prompt and reply
def test_patient_messages_hold_the_record_the_history_and_the_question():
    case = hand_case()
    req = PatientRequest(case, "Do you have chills?", history=[("Do you have a cough?", "Yes, I have a cough."),
                                                               ("Do you sneeze?", dialog.DONT_KNOW)])
    msgs = patient.patient_messages(req)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    system = msgs[0]["content"]
    assert "Your description: I have had a cough for 3 days.\n" in system
    assert "Decide next action" not in system and dialog.FORMAT_LINE not in system  # the doctor's frame is gone
    assert "Q: Do you have a cough?\nA: Yes, I have a cough.\nQ: Do you have a fever?\nA: No, I do not have a fever." \
        in system
    assert f"reply exactly: {dialog.DONT_KNOW}" in system
    assert [m["content"] for m in msgs[1:]] == ["Do you have a cough?", "Yes, I have a cough.", "Do you sneeze?",
                                                dialog.DONT_KNOW, "Do you have chills?"]
    # no history: system and the question only; a description without the clinic's frame is kept whole
    bare = dict(case, first=[{"role": "user", "content": "My back hurts."}])
    msgs = patient.patient_messages(PatientRequest(bare, "Since when?"))
    assert len(msgs) == 2 and "Your description: My back hurts.\n" in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": "Since when?"}


@pytest.mark.parametrize("raw,want", [
    ("  Yes, I have a cough.  ", "Yes, I have a cough."),
    ("Yes, I have a cough.\nDoctor: anything else?", "Yes, I have a cough."),
    ("\n\nA: No, I do not.", "No, I do not."),
    ("<think>The record says yes.</think>\nYes, since Monday.", "Yes, since Monday."),
    ("<think>The record says yes, but", dialog.DONT_KNOW),  # cut off while thinking: no answer
    ("", dialog.DONT_KNOW), ("   \n ", dialog.DONT_KNOW), (None, dialog.DONT_KNOW),
    ("Sorry, I cannot answer your question.", dialog.DONT_KNOW),
    ("I am not sure. Sorry, I do not know that.", dialog.DONT_KNOW),  # the reference: "Sorry" anywhere
])
def test_clean_reply(raw, want):
    assert patient.clean_reply(raw) == want


# ------------------------------------------------------------------ an OpenAI-compatible endpoint
class Stub(ThreadingHTTPServer):
    """A loopback chat-completions server: records (path, headers, body) of every request and
    answers by ``mode``: ok (a reply naming the question), slow, http500, badjson, nochoices."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.mode, self.requests, self.lock = "ok", [], threading.Lock()
        self.active = self.max_active = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class StubHandler(BaseHTTPRequestHandler):
    server: Stub

    def log_message(self, *args):  # quiet
        pass

    def send(self, code: int, body: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def do_POST(self):
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            s.active += 1
            s.max_active = max(s.max_active, s.active)
        question = body["messages"][-1]["content"]
        # later questions answer sooner, so the completion order is not the request order
        time.sleep({"slow": 1.5}.get(s.mode, 0.05 + 0.02 * (len(question) % 5)))
        with s.lock:
            s.active -= 1
        if s.mode == "http500":
            return self.send(500, b'{"error": {"message": "CUDA out of memory"}}')
        if s.mode == "badjson":
            return self.send(200, b"<html>not json</html>")
        if s.mode == "nochoices":
            return self.send(200, json.dumps({"id": "x", "choices": []}).encode())
        reply = {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": f" Answer to: {question}\nextra line"}}]}
        return self.send(200, json.dumps(reply).encode())


@pytest.fixture
def stub():
    server = Stub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_endpoint_sends_chat_completions_and_keeps_the_order(stub, monkeypatch):
    monkeypatch.setenv("PATIENT_TEST_KEY", "sk-test-123")
    backend = patient_backend({"endpoint": stub.base + "/", "model": "qwen-patient", "max_tokens": 32,
                               "concurrency": 4, "api_key_env": "PATIENT_TEST_KEY"}, 0.5)
    case = hand_case()
    questions = [f"Question number {i}{'?' * (i % 5)}" for i in range(12)]
    reqs = [PatientRequest(case, q, history=[("Do you have a cough?", "Yes, I have a cough.")]) for q in questions]
    assert backend.answer(reqs) == [f"Answer to: {q}" for q in questions]
    assert len(stub.requests) == 12 and stub.max_active > 1  # concurrent
    for rec in stub.requests:
        assert rec["path"] == "/v1/chat/completions"
        assert rec["auth"] == "Bearer sk-test-123"
        body = rec["body"]
        assert set(body) == {"model", "messages", "temperature", "max_tokens"}
        assert body["model"] == "qwen-patient" and body["temperature"] == 0 and body["max_tokens"] == 32
        assert "Q: Do you have a fever?\nA: No, I do not have a fever." in body["messages"][0]["content"]
        assert "Your description: I have had a cough for 3 days." in body["messages"][0]["content"]
        assert body["messages"][1:3] == [{"role": "user", "content": "Do you have a cough?"},
                                         {"role": "assistant", "content": "Yes, I have a cough."}]
    assert sorted(r["body"]["messages"][-1]["content"] for r in stub.requests) == sorted(questions)
    assert all(r["body"]["messages"] == patient.patient_messages(next(q for q in reqs if q.question ==
                                                                      r["body"]["messages"][-1]["content"]))
               for r in stub.requests)
    described = backend.describe()
    assert described == {"kind": "endpoint", "endpoint": stub.base, "model": "qwen-patient", "timeout_s": 60,
                         "api_key_env": "PATIENT_TEST_KEY", "max_tokens": 32, "concurrency": 4}
    assert "sk-test-123" not in json.dumps(described)
    assert backend.answer([]) == [] and len(stub.requests) == 12


def test_endpoint_without_a_key_sends_no_authorization(stub, monkeypatch):
    monkeypatch.delenv("PATIENT_TEST_KEY", raising=False)
    backend = patient_backend({"endpoint": stub.base, "model": "m"}, 0.5)
    assert backend.answer([PatientRequest(hand_case(), "Do you have a cough?")]) == ["Answer to: Do you have a cough?"]
    assert stub.requests[0]["auth"] is None and stub.requests[0]["body"]["max_tokens"] == 64
    # a key variable named but not set: a clear error before anything is sent
    keyed = patient_backend({"endpoint": stub.base, "model": "m", "api_key_env": "PATIENT_TEST_KEY"}, 0.5)
    with pytest.raises(RunError, match=rf"{stub.base} needs an API key \(model .m.\): .*PATIENT_TEST_KEY"):
        keyed.answer([PatientRequest(hand_case(), "q?")])
    assert len(stub.requests) == 1


@pytest.mark.parametrize("mode,match", [
    ("slow", r"did not answer within timeout_s = 0.5 s \(model 'm'\)$"),
    ("http500", r"answered POST /chat/completions with HTTP 500 Internal Server Error \(model 'm'\): .*CUDA out of"),
    ("badjson", r"sent a malformed chat completion \(model 'm'\): JSONDecodeError.*not json"),
    ("nochoices", r"sent a malformed chat completion \(model 'm'\): IndexError"),
])
def test_endpoint_failures_stop_the_run(stub, mode, match):
    stub.mode = mode
    backend = patient_backend({"endpoint": stub.base, "model": "m", "timeout_s": 0.5, "concurrency": 2}, 0.5)
    t0 = time.time()
    with pytest.raises(RunError, match=rf"^patient endpoint {stub.base} {match}"):
        backend.answer([PatientRequest(hand_case(), f"q{i}?") for i in range(3)])
    assert time.time() - t0 < 5


def test_endpoint_refused_connection():
    with socket.socket() as s:  # bound, never listening: a connection to it is refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        backend = patient_backend({"endpoint": url, "model": "x"}, 0.5)
        with pytest.raises(RunError) as err:
            backend.answer([PatientRequest(hand_case(), "Do you have a cough?")])
    assert str(err.value) == f"patient endpoint {url} refused the connection (model 'x'): is the server running?"


# ------------------------------------------------------------------ a model in this process
@pytest.fixture(scope="module")
def tiny_patient_model(tmp_path_factory):
    """An untrained tiny Qwen2 whose tokenizer knows the patient prompt's words."""
    import torch

    from conftest import TINY_ARCH
    from sft2rl.model import build_tiny_model, build_tokenizer

    texts = [patient.PATIENT_SYSTEM, dialog.description("I have had a cough for 3 days."),
             "Do you have a cough? Yes, I have a cough. No, I do not have a fever."] * 3
    tok = build_tokenizer(texts, 400)
    torch.manual_seed(0)
    model = build_tiny_model(tok, dict(TINY_ARCH, max_position_embeddings=1024))
    out = tmp_path_factory.mktemp("patient_model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_model_backend_generates_greedy_batches_from_the_record(tiny_patient_model, monkeypatch):
    from sft2rl import generation

    calls = []
    real = generation.generate

    def spy(model, tokenizer, prompts, **kw):
        calls.append((prompts, kw))
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(generation, "generate", spy)
    backend = patient_backend({"model": str(tiny_patient_model), "max_new_tokens": 6, "batch_size": 2}, 0.5)
    assert backend.loaded is None  # nothing loads before the first question
    case = hand_case()
    reqs = [PatientRequest(case, f"Do you have pain number {i}?", history=[("Do you have a cough?", "Yes.")] * (i % 2))
            for i in range(5)]
    answers = backend.answer(reqs)
    assert len(answers) == 5 and all(isinstance(a, str) and a and "\n" not in a for a in answers)
    assert [len(p) for p, _ in calls] == [2, 2, 1]
    assert [m for p, _ in calls for m in p] == [patient.patient_messages(r) for r in reqs]
    assert all(kw["do_sample"] is False and kw["max_new_tokens"] == 6 for _, kw in calls)
    assert backend.answer(reqs) == answers  # greedy: the same answers again
    assert backend.describe() == {"kind": "model", "model": str(tiny_patient_model), "max_new_tokens": 6,
                                  "batch_size": 2}
    # a prompt that cannot fit the model's positions: a clear error, not a crash inside the model
    long = patient_backend({"model": str(tiny_patient_model), "max_new_tokens": 1000}, 0.5)
    with pytest.raises(RunError, match=r"patient model .*: the prompt of case 7 is \d+ tokens, with max_new_tokens "
                                       r"= 1000 over the model's 1024 positions"):
        long.answer(reqs[:1])


# ------------------------------------------------------------------ med.patient
@pytest.mark.parametrize("spec,match", [
    ("gpt", r"'med.patient' = 'gpt' must be 'rule'"),
    (["rule"], r"'med.patient' = \['rule'\] must be 'rule'"),
    ({}, r"'med.patient.model' is missing or empty: an in-process model patient needs a local HF"),
    ({"model": ""}, r"'med.patient.model' is missing or empty"),
    ({"endpoint": "http://h:8000/v1"}, r"'med.patient.model' is missing .*an endpoint patient needs the served"),
    ({"model": "m", "temperature": 0.7}, r"unknown key 'temperature' for an in-process model patient \(it takes "
                                         r"model, max_new_tokens, batch_size\)$"),
    ({"model": "m", "max_tokens": 8}, r"unknown key 'max_tokens' .*is the endpoint patient's \(add 'endpoint'"),
    ({"endpoint": "http://h:8000/v1", "model": "m", "max_new_tokens": 8},
     r"unknown key 'max_new_tokens' for an endpoint patient .*is the in-process model patient's \(drop 'endpoint'"),
    ({"endpoint": "h:8000/v1", "model": "m"}, r"'med.patient.endpoint' = 'h:8000/v1' must be an http\(s\) URL"),
    ({"endpoint": "http://h/v1", "model": "m", "timeout_s": 0}, r"'med.patient.timeout_s' = 0 must be a positive"),
    ({"endpoint": "http://h/v1", "model": "m", "concurrency": 0}, r"'med.patient.concurrency' = 0 must be an int"),
    ({"endpoint": "http://h/v1", "model": "m", "max_tokens": True}, r"'med.patient.max_tokens' = True must be"),
    ({"endpoint": "http://h/v1", "model": "m", "api_key_env": ""}, r"'med.patient.api_key_env' = '' must be null"),
    ({"model": "m", "batch_size": 1.5}, r"'med.patient.batch_size' = 1.5 must be an integer"),
])
def test_spec_validation(spec, match):
    with pytest.raises(ConfigError, match=match):
        patient_backend(spec, 0.5)


def test_spec_defaults():
    assert patient_backend({"model": "Qwen/Qwen2.5-7B-Instruct"}, 0.5).describe() == {
        "kind": "model", "model": "Qwen/Qwen2.5-7B-Instruct", "max_new_tokens": 64, "batch_size": 32}
    assert patient_backend({"endpoint": "https://h.example:8443/v1/", "model": "p"}, 0.5).describe() == {
        "kind": "endpoint", "endpoint": "https://h.example:8443/v1", "model": "p", "timeout_s": 60,
        "api_key_env": None, "max_tokens": 64, "concurrency": 8}


# ------------------------------------------------------------------ the rule patient's similarity
def clinic_patient(recorded=("a sore throat", "a cough", "a fever"), present=("a cough",)):
    return patient.Patient(clinic.patient_information(clinic.build_clinic(WORLD), {"present": list(present),
                                                                                 "recorded": list(recorded)}), 0.5)


def test_words_the_record_never_uses_count_in_the_question():
    """The IDF is the recorded questions', but a word of the doctor's question outside their
    vocabulary weighs a term of no document (ln(1 + n) + 1): asking about more than the
    record holds scores lower, and a bundle of symptoms is not the one symptom it names."""
    p = clinic_patient()
    a, b = np.log(4 / 2) + 1, np.log(4) + 1  # n = 3: a recorded word (in one question), an unseen one
    assert p.similarity("Do you have a sore throat?")[0] == pytest.approx(1.0)  # a recorded question
    assert p.similarity("Do you have a cough, or not?")[0] == pytest.approx(1.0)  # stop words stay out
    assert p.similarity("Do you have sneezing?")[0] == 0  # a lone unrecorded symptom
    assert p.answer("Do you have sneezing?") == dialog.DONT_KNOW
    sim, i = p.similarity("Do you have sneezing or a sore throat?")  # was 1.0
    assert sim == pytest.approx(np.sqrt(2) * a / np.sqrt(2 * a * a + b * b)) and 0.70 < sim < 0.71
    assert p.pairs[i][0] == "Do you have a sore throat?"
    # a recorded symptom with an unrecorded one (one word each): about 0.58, still answered
    assert p.similarity("Do you have a cough or sneezing?")[0] == pytest.approx(a / np.sqrt(a * a + b * b))
    assert p.answer("Do you have a cough or sneezing?") == "Yes, I have a cough."
    # a bundle of four symptoms, one of them recorded: below the threshold (was 1.0, answered)
    bundle = "Do you have a cough, sneezing, chills or a rash?"
    want = a / np.sqrt(a * a + 3 * b * b)
    assert p.similarity(bundle)[0] == pytest.approx(want) and want < 0.5
    assert p.answer(bundle) == dialog.DONT_KNOW
    # a repeated unseen word counts as often as it occurs; case does not matter
    assert p.similarity("COUGH? Sneezing, sneezing?")[0] == pytest.approx(a / np.sqrt(a * a + 4 * b * b))


@pytest.mark.parametrize("n_recorded", [1, 2, 5, 10, 20])
def test_a_four_symptom_bundle_is_not_answered_whatever_the_record(n_recorded):
    """One recorded symptom asked with three unrecorded ones stays below 0.5 however many
    questions the case records; the recorded question alone still scores 1.0."""
    symptoms = [s for s in clinic.build_clinic(WORLD)["symptoms"] if len(s.split()) == 1]
    rec, other = symptoms[:n_recorded], symptoms[n_recorded:n_recorded + 3]
    p = clinic_patient(rec, rec[:1])
    assert p.similarity(clinic.question(rec[0]))[0] == pytest.approx(1.0)
    assert p.similarity(f"Do you have {other[0]}?")[0] == 0
    bundle = f"Do you have {rec[0]}, {other[0]}, {other[1]} or {other[2]}?"
    assert p.similarity(bundle)[0] < 0.5 and p.answer(bundle) == dialog.DONT_KNOW


def test_a_null_answer_records_no_pair():
    """MTMedDialog records end with a question the patient never answered (patient_response
    null): it gives no recorded pair, so every patient treats it as unrecorded."""
    info = [{"doctor_question": ["Is it fresh blood?"], "patient_response": ["It's not fresh blood."]},
            {"doctor_question": ["Are you there? Feeling any better?"], "patient_response": None},
            {"doctor_question": "Any fever?", "patient_response": None}]
    assert patient.recorded_pairs(info) == [("Is it fresh blood?", "It's not fresh blood.")]
    p = patient.Patient(info, 0.5)
    assert p.answer("Are you there? Feeling any better?") == dialog.DONT_KNOW
    assert p.answer("Any fever?") == dialog.DONT_KNOW
    assert p.answer("Is it fresh blood?") == "It's not fresh blood."
    case = dict(hand_case(), patient_information=info)
    assert patient_backend("rule", 0.5).answer([PatientRequest(case, "Feeling any better?")]) == [dialog.DONT_KNOW]
    system = patient.patient_messages(PatientRequest(case, "Any fever?"))[0]["content"]
    assert "Q: Is it fresh blood?\nA: It's not fresh blood." in system and "Feeling any better" not in system
    assert patient.Patient(info[1:], 0.5).answer("Any fever?") == dialog.DONT_KNOW  # nothing recorded at all
