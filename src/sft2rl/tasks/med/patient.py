"""The simulated patient: the rule patient, and patients that are real models.

A case's ``patient_information`` (the MTMedDialog field) lists recorded doctor questions and
the patient's answers. Three backends answer a doctor's question from it, behind one batched
interface (:func:`patient_backend`, config key ``med.patient``):

* ``rule`` (default, :class:`Patient`): the answer of the most similar recorded question:
  cosine similarity of TF-IDF word vectors, the IDF fitted on the case's recorded questions
  (scikit-learn; English stop words such as "do you have" are left out, so two questions
  match by what they ask about, not by their frame). A word of the doctor's question that
  no recorded question uses still counts, in the question's norm: it weighs what scikit-learn's
  smooth IDF gives a term of no document, ln(1 + n) + 1 for n recorded questions (more than
  any recorded word), so a question asking about more than the record holds scores lower.
  Below ``threshold`` (default 0.5) the patient says "Sorry, I do not know.": on the
  synthetic clinic, whose symptoms share no content word, a recorded question scores 1.0,
  the question of an unrecorded symptom 0, a recorded symptom asked together with an
  unrecorded one (one word each) about 0.6 (answered) and one asked with three unrecorded
  ones below 0.5, whatever the case records. A recorded question whose answer is null
  records nothing (:func:`recorded_pairs`).
* ``{model: <local HF directory or hub id>, max_new_tokens: 64, batch_size: 32}``
  (:class:`ModelPatient`): an instruction model run in this process, greedy, batched.
* ``{endpoint: http://host:port/v1, model: <served name>, timeout_s: 60, api_key_env: null,
  max_tokens: 64, concurrency: 8}`` (:class:`EndpointPatient`): any OpenAI-compatible
  chat-completions server (``vllm serve`` on a cluster), temperature 0.

The reference (DoctorAgent-RL) uses a frozen instruction model as the patient, greedy: a
system prompt telling it to answer the doctor in one sentence from its self-report (an
"enhanced description" a model wrote from the record beforehand), the doctor's question as
the only user turn, and any reply containing "Sorry" replaced by "Sorry, I do not know."
(the -1 of the reward). The model patients here differ in what they read: the record itself
(the description and the recorded question/answer pairs, :func:`patient_messages`) rather
than a rewritten description, and the earlier turns of the consultation, so an answer can
stay consistent with what the patient said before. The reference's second use of the
patient model, judging whether a question repeats an earlier one, is not part of this module.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...errors import ConfigError, RunError
from ...fingerprint import params_digest
from ...rows import strip_thinking
from .dialog import DONT_KNOW, description


def _as_list(v: Any) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else [str(x) for x in v]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def local_model_dir(spec: Any) -> str | None:
    """The directory of a model patient run in this process when it is a local directory (a run
    keys on its weights, not on its path); None for the rule patient, an endpoint or a hub id."""
    if isinstance(spec, dict) and "endpoint" not in spec and os.path.isdir(str(spec.get("model"))):
        return str(spec["model"])
    return None


#: what a run's restart key holds instead of a local patient model's path
LOCAL_MODEL = "<a local directory, keyed by its files>"


def run_key_parts(med: dict[str, Any], described: dict[str, Any]
                  ) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """What a run that consults ``med``'s patient keys its restart on (:mod:`sft2rl.resume`):
    (data, the med config, the patient's description). A local patient model is data (its
    files) and its path is in neither of the others: new weights restart the run, a copy of the
    same weights elsewhere resumes it."""
    d = local_model_dir(med.get("patient"))
    if d is None:
        return {}, med, described
    return ({"patient_model": d}, dict(med, patient=dict(med["patient"], model=LOCAL_MODEL)),
            dict(described, model=LOCAL_MODEL) if "model" in described else described)


def recorded_pairs(info: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(question, answer) pairs: the i-th question of an entry pairs with its i-th answer when
    the lists have the same length, else every question with all answers joined. An entry
    whose answer is null (MTMedDialog's last entry where the patient never replied) records a
    question the record cannot answer: it gives no pair, so the rule patient says "Sorry, I
    do not know." to it, as to any unrecorded question."""
    pairs = []
    for entry in info:
        qs, rs = _as_list(entry["doctor_question"]), _as_list(entry.get("patient_response"))
        if not rs:
            continue
        if len(qs) == len(rs):
            pairs += list(zip(qs, rs))
        else:
            pairs += [(q, " ".join(rs)) for q in qs]
    return [(q, r) for q, r in pairs if q.strip()]


class Patient:
    """The rule patient of one case (TF-IDF match against its recorded questions)."""

    def __init__(self, info: list[dict[str, Any]], threshold: float = 0.5):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.pairs = recorded_pairs(info)
        self.threshold = threshold
        self.exact = {_norm(q): r for q, r in reversed(self.pairs)}
        self.vectorizer = None
        if self.pairs:
            try:
                self.vectorizer = TfidfVectorizer(lowercase=True, stop_words="english").fit([q for q, _ in self.pairs])
                self.matrix = self.vectorizer.transform([q for q, _ in self.pairs])
                self.analyzer = self.vectorizer.build_analyzer()  # lowercase, words, stop words out
            except ValueError:  # no word in any recorded question
                self.vectorizer = None

    def similarity(self, question: str) -> tuple[float, int]:
        """The best cosine similarity and the index of that recorded question (-1 if none).

        The question's vector is its TF-IDF over the recorded questions' vocabulary (their
        IDF), and each of its words outside that vocabulary (the vectorizer's own analyzer:
        lowercased, stop words out) adds count x (ln(1 + n) + 1) to its norm only, the smooth
        IDF of a term in none of the n recorded questions: an exactly recorded question still
        scores 1.0, one sharing no content word 0, and a question that also asks about what
        the record never mentions scores less than 1.0."""
        if self.vectorizer is None:
            return 0.0, -1
        import numpy as np
        from scipy.sparse import csr_matrix

        vocab, idf = self.vectorizer.vocabulary_, self.vectorizer.idf_
        counts = Counter(self.analyzer(question))
        known = {vocab[w]: c * idf[vocab[w]] for w, c in counts.items() if w in vocab}
        unseen = np.log(1 + len(self.pairs)) + 1.0  # smooth IDF of a term in no recorded question
        norm = np.sqrt(sum(v * v for v in known.values())
                       + sum((c * unseen) ** 2 for w, c in counts.items() if w not in vocab))
        if norm == 0:  # no content word at all
            return 0.0, 0
        query = csr_matrix((list(known.values()), ([0] * len(known), list(known))), shape=(1, len(vocab)))
        sims = (self.matrix @ query.T).toarray().ravel() / norm
        i = int(sims.argmax())
        return float(sims[i]), i

    def answer(self, question: str) -> str:
        if _norm(question) in self.exact:
            return self.exact[_norm(question)]
        sim, i = self.similarity(question)
        return self.pairs[i][1] if i >= 0 and sim >= self.threshold else DONT_KNOW


# ------------------------------------------------------------------ the batched interface
@dataclass
class PatientRequest:
    """One doctor question to the patient of ``case``.

    ``case``: an evaluation case (``id``, ``first`` — system turn and the patient's
    description —, ``patient_information``, ``truth``); ``question``: the doctor's question
    text (without "Question:"); ``history``: the (question, answer) pairs of this
    consultation before it, oldest first (the rule patient ignores it)."""
    case: dict[str, Any]
    question: str
    history: list[tuple[str, str]] = field(default_factory=list)


class PatientBackend(Protocol):
    def answer(self, requests: list[PatientRequest]) -> list[str]:
        """One answer per request, in request order."""

    def describe(self) -> dict[str, Any]:
        """The kind and the settings (for logs and run keys; never a secret)."""


class RulePatients:
    """The rule patient of every case: one :class:`Patient` per case, built on first use
    and kept (key: the case's ``id`` and a digest of its recorded pairs, so two cases that
    share an id but not a record never share a patient)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.cache: dict[tuple[str, str], Patient] = {}

    def patient(self, case: dict[str, Any]) -> Patient:
        info = case["patient_information"]
        key = (str(case["id"]), params_digest(recorded_pairs(info)))
        if key not in self.cache:
            self.cache[key] = Patient(info, self.threshold)
        return self.cache[key]

    def answer(self, requests: list[PatientRequest]) -> list[str]:
        return [self.patient(r.case).answer(r.question) for r in requests]

    def describe(self) -> dict[str, Any]:
        return {"kind": "rule", "threshold": self.threshold}


# ------------------------------------------------------------------ the model patients' prompt
PATIENT_SYSTEM = (
    "You are the patient in an online medical consultation, and the user is your doctor. Answer the "
    "doctor's question in one short sentence, in the first person, using only your record below. Do not "
    "name a diagnosis or give advice. If your record does not answer the question, reply exactly: {dont_know}"
    "\n\nYour record\nYour description: {report}\nWhat you know (a question, then your answer):\n{facts}")
_HEAD, _TAIL = description("\x00").split("\x00")  # the doctor-facing frame around the self-report
_NEXT_ACTION = _TAIL.strip().splitlines()[0]  # "Decide next action:"
_OPEN_THINK_RE = re.compile(r"<think>", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(?:A|Answer|Patient)\s*:\s*", re.IGNORECASE)


def self_report(case: dict[str, Any]) -> str:
    """The patient's description: the last of the case's first messages without the frame
    :func:`dialog.description` puts around it for the doctor ("Patient's description: " and
    everything from "Decide next action:" on); a text without that frame is kept whole."""
    text = case["first"][-1]["content"]
    if text.startswith(_HEAD):
        text = text[len(_HEAD):]
    return text.split(_NEXT_ACTION, 1)[0].strip()


def patient_messages(request: PatientRequest) -> list[dict[str, str]]:
    """The chat of a model patient: the doctor is the user, the patient the assistant.

    1. system: the instructions (answer in one short sentence from the record only, reply
       exactly "Sorry, I do not know." when the record does not answer) and the record: the
       patient's description (:func:`self_report`) and the recorded question/answer pairs
       (:func:`recorded_pairs`, one ``Q: … / A: …`` pair of lines each);
    2. the earlier turns of this consultation (``request.history``): the doctor's question as
       a user turn, the patient's answer as an assistant turn;
    3. the doctor's question as the last user turn."""
    facts = "\n".join(f"Q: {q}\nA: {a}" for q, a in recorded_pairs(request.case["patient_information"]))
    system = PATIENT_SYSTEM.format(dont_know=DONT_KNOW, report=self_report(request.case), facts=facts or "(nothing)")
    msgs = [{"role": "system", "content": system}]
    for question, answer in request.history:
        msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return msgs + [{"role": "user", "content": request.question}]


def clean_reply(text: str | None) -> str:
    """A model patient's reply as the doctor hears it: think blocks removed (an unclosed one
    to the end: a reasoning model cut off by the token limit answered nothing), the first
    non-empty line, stripped, without a leading "A:" / "Answer:" / "Patient:" label. An empty
    reply, and one containing "Sorry" (the reference's test), is exactly
    "Sorry, I do not know.", so the doctor's prompt, the reward and the metrics (which count
    replies starting with "Sorry" as not answered) agree."""
    text = _OPEN_THINK_RE.split(strip_thinking(text or ""), 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reply = _LABEL_RE.sub("", lines[0]).strip() if lines else ""
    return DONT_KNOW if not reply or "Sorry" in reply else reply


# ------------------------------------------------------------------ a model in this process
class ModelPatient:
    """An instruction model answering from the case record in this process: greedy,
    ``batch_size`` requests per :func:`sft2rl.generation.generate` call, at most
    ``max_new_tokens`` tokens. The model is loaded (:func:`sft2rl.model.load_model`: a local
    HF directory or a hub id, on the GPU when there is one) at the first question."""

    def __init__(self, model: str, max_new_tokens: int = 64, batch_size: int = 32):
        self.path, self.max_new_tokens, self.batch_size = model, max_new_tokens, batch_size
        self.loaded = None

    def load(self):
        if self.loaded is None:
            from ...model import load_model

            self.loaded = load_model(self.path)
        return self.loaded

    def answer(self, requests: list[PatientRequest]) -> list[str]:
        from ... import generation

        if not requests:
            return []
        model, tokenizer = self.load()
        prompts = [patient_messages(r) for r in requests]
        room = getattr(model.config, "max_position_embeddings", None)
        if room is not None:
            lengths = generation.prompt_lengths(tokenizer, prompts)
            longest = max(range(len(prompts)), key=lengths.__getitem__)
            if lengths[longest] + self.max_new_tokens > room:
                raise RunError(f"patient model {self.path}: the prompt of case {requests[longest].case['id']} is "
                               f"{lengths[longest]} tokens, with max_new_tokens = {self.max_new_tokens} over the "
                               f"model's {room} positions (a shorter record, or a model with a longer context)")
        out: list[str] = []
        for i in range(0, len(prompts), self.batch_size):
            out += generation.generate(model, tokenizer, prompts[i:i + self.batch_size],
                                       max_new_tokens=self.max_new_tokens, do_sample=False).texts
        return [clean_reply(t) for t in out]

    def describe(self) -> dict[str, Any]:
        return {"kind": "model", "model": self.path, "max_new_tokens": self.max_new_tokens,
                "batch_size": self.batch_size}


# ------------------------------------------------------------------ an OpenAI-compatible endpoint
class EndpointPatient:
    """An instruction model behind an OpenAI-compatible chat-completions endpoint (vLLM's
    ``vllm serve``, or any such server): one POST ``{endpoint}/chat/completions`` per
    request with ``{model, messages, temperature: 0, max_tokens}``, ``concurrency`` at a
    time (standard library only). ``api_key_env`` names an environment variable whose value
    is sent as ``Authorization: Bearer …`` (read at each call, never logged).

    Any failure — a timeout, a refused connection, an HTTP error status, a body that is not a
    chat completion — raises :class:`sft2rl.errors.RunError` naming the endpoint, the model
    and what happened: the job stops before it writes anything. There is no retry."""

    def __init__(self, endpoint: str, model: str, timeout_s: float = 60, api_key_env: str | None = None,
                 max_tokens: int = 64, concurrency: int = 8):
        self.endpoint, self.model, self.timeout_s = endpoint.rstrip("/"), model, timeout_s
        self.api_key_env, self.max_tokens, self.concurrency = api_key_env, max_tokens, concurrency

    @property
    def url(self) -> str:
        return f"{self.endpoint}/chat/completions"

    def fail(self, what: str, hint: str = "") -> RunError:
        """'patient endpoint URL <what> (model 'name')', then ': <hint>' where there is one."""
        tail = f": {hint}" if hint else ""
        return RunError(f"patient endpoint {self.endpoint} {what} (model {self.model!r}){tail}")

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise self.fail("needs an API key", f"the environment variable {self.api_key_env} "
                                                     f"({KEY}.api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: list[dict[str, str]], headers: dict[str, str]) -> str:
        """The content of one chat completion (RunError on any failure)."""
        import http.client
        import socket
        import urllib.error
        import urllib.request

        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0,
                           "max_tokens": self.max_tokens}).encode()
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace").strip()[:300]
            raise self.fail(f"answered POST /chat/completions with HTTP {e.code} {e.reason}", detail) from e
        except (TimeoutError, socket.timeout, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise self.fail(f"did not answer within timeout_s = {self.timeout_s} s") from e
            if isinstance(reason, ConnectionRefusedError):
                raise self.fail("refused the connection", "is the server running?") from e
            raise self.fail("could not be reached", str(reason)) from e
        except (ConnectionError, http.client.HTTPException) as e:
            raise self.fail("broke off the answer", f"{type(e).__name__}: {e}") from e
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
            if content is not None and not isinstance(content, str):
                raise TypeError(f"content is a {type(content).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            snippet = raw[:200].decode("utf-8", "replace")
            raise self.fail("sent a malformed chat completion", f"{type(e).__name__}: {e}; body {snippet!r}") from e
        return content or ""

    def answer(self, requests: list[PatientRequest]) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        if not requests:
            return []
        headers = self.headers()
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)))
        try:
            futures = [pool.submit(self.complete, patient_messages(r), headers) for r in requests]
            return [clean_reply(f.result()) for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "endpoint": self.endpoint, "model": self.model, "timeout_s": self.timeout_s,
                "api_key_env": self.api_key_env, "max_tokens": self.max_tokens, "concurrency": self.concurrency}


# ------------------------------------------------------------------ med.patient
KEY = "med.patient"
MODEL_KEYS = {"model": None, "max_new_tokens": 64, "batch_size": 32}
ENDPOINT_KEYS = {"endpoint": None, "model": None, "timeout_s": 60, "api_key_env": None, "max_tokens": 64,
                 "concurrency": 8}


def _check(spec: dict[str, Any]) -> dict[str, Any]:
    """The settings of a model or endpoint spec with the defaults filled in (ConfigError with
    the key and what is allowed otherwise)."""
    endpoint = "endpoint" in spec
    kind, allowed, other = (("an endpoint patient", ENDPOINT_KEYS, MODEL_KEYS) if endpoint
                            else ("an in-process model patient", MODEL_KEYS, ENDPOINT_KEYS))
    for k in spec:
        if k not in allowed:
            hint = ""
            if k in other:
                hint = (f"; '{k}' is the in-process model patient's (drop 'endpoint' to run the model here)"
                        if endpoint else f"; '{k}' is the endpoint patient's (add 'endpoint' to use a server)")
            raise ConfigError(f"config key '{KEY}': unknown key '{k}' for {kind} (it takes {', '.join(allowed)}){hint}")
    if not isinstance(spec.get("model"), str) or not spec["model"].strip():
        what = ("the served model name (vllm serve's model or --served-model-name)" if endpoint
                else "a local HF model directory or a hub id")
        raise ConfigError(f"config key '{KEY}.model' is missing or empty: {kind} needs {what}")
    cfg = {**allowed, **spec}
    if endpoint and not (isinstance(cfg["endpoint"], str) and re.match(r"https?://[^/\s]+", cfg["endpoint"])):
        raise ConfigError(f"config key '{KEY}.endpoint' = {cfg['endpoint']!r} must be an http(s) URL such as "
                          "http://host:8000/v1 (the server's OpenAI-compatible base)")
    for k in ("max_new_tokens", "batch_size", "max_tokens", "concurrency"):
        if k in cfg and not (isinstance(cfg[k], int) and not isinstance(cfg[k], bool) and cfg[k] >= 1):
            raise ConfigError(f"config key '{KEY}.{k}' = {cfg[k]!r} must be an integer of at least 1")
    if endpoint:
        t = cfg["timeout_s"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
            raise ConfigError(f"config key '{KEY}.timeout_s' = {t!r} must be a positive number of seconds")
        if cfg["api_key_env"] is not None and not (isinstance(cfg["api_key_env"], str) and cfg["api_key_env"]):
            raise ConfigError(f"config key '{KEY}.api_key_env' = {cfg['api_key_env']!r} must be null or the name "
                              "of an environment variable")
    return cfg


def patient_backend(spec: Any, threshold: float) -> RulePatients | ModelPatient | EndpointPatient:
    """The patient backend of ``spec`` (``med.patient``): ``"rule"`` (or null), ``{model: …}``
    or ``{endpoint: …, model: …}`` (see the module). ``threshold`` is the rule patient's
    similarity threshold; the model patients do not use it. Nothing is loaded or contacted
    here (the model loads, the endpoint is called, at the first :meth:`answer`)."""
    if spec is None or spec == "rule":
        return RulePatients(threshold)
    if not isinstance(spec, dict):
        raise ConfigError(f"config key '{KEY}' = {spec!r} must be 'rule', {{model: <HF directory or hub id>}} or "
                          "{endpoint: <http://host:port/v1>, model: <served model name>}")
    cfg = _check(spec)
    if "endpoint" in cfg:
        return EndpointPatient(**cfg)
    return ModelPatient(**cfg)
