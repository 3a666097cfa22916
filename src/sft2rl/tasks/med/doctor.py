"""Doctors: the scripted doctor (the data's author and the upper reference), the
random-question doctor (the chance floor) and a model (:func:`sft2rl.generation.reply_policy`).

Every doctor sees only the dialogue: the patient's description, its own questions and the
patient's replies. A policy maps the open consultations and their prompts to one reply each.

The scripted doctor keeps a posterior over the clinic's diseases. Under the clinic's case
model a symptom outside a disease's profile is never present and a profile symptom is
present with probability ``1 - dropout``; the chief complaint (and a volunteered symptom)
rules out every disease without it; and a case records a symptom related to its disease
(its organ system's, or a general one) with probability ``recorded.related``, any other
with probability ``recorded.other``, so "Sorry, I do not know." also tells something. Each turn it
asks about the unasked symptom with the largest expected information gain (ties: the
world's symptom order), and it diagnoses the most probable disease when that probability
reaches ``confidence``, when no question is informative (an expected information gain
below :data:`MIN_GAIN`), or at the consultation's last turn
(``max_turns``, where the prompt carries the forced-diagnosis line: the same limit in the
training dialogues and in the evaluation). Its think text names the leading candidates before a question, and restates the
findings before the diagnosis.
"""
from __future__ import annotations

import math
import random
import re
from typing import Any, Callable

from .clinic import question, read_self_report
from .dialog import diagnosis_answer, doctor_reply, parse_turn, question_answer
from .reward import same_text

Policy = Callable[[list[Any], list[list[dict[str, str]]]], list[str]]
ASKED_RE = re.compile(r"^Do you have (.+)\?$")
ANSWER_YES_RE = re.compile(r"^Yes, I have (.+)\.$")
ANSWER_NO_RE = re.compile(r"^No, I do not have (.+)\.$")
#: a question worth asking tells at least this much (expected information gain, nats)
MIN_GAIN = 0.1


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]


def read_dialogue(first_user: str, replies: list[str], patient: list[str]
                  ) -> tuple[str | None, dict[str, bool | None]]:
    """The chief complaint and the symptoms asked or reported so far with what the patient
    said: True (yes; a volunteered symptom too), False (no), None ("Sorry, I do not know.",
    or an answer about another symptom)."""
    chief, volunteered = read_self_report(first_user)
    answers: dict[str, bool | None] = {volunteered: True} if volunteered else {}
    for reply, said in zip(replies, patient):
        said = said.split("\n")[0].strip()
        r = parse_turn(reply)  # as the consultation read it: an invalid turn asked nothing
        asked = ASKED_RE.match(r.question) if r.kind == "question" else None
        if (y := ANSWER_YES_RE.match(said)):
            answers[y.group(1)] = True
        elif (n := ANSWER_NO_RE.match(said)):
            answers[n.group(1)] = False
        elif asked and asked.group(1) not in answers:
            answers[asked.group(1)] = None
    return chief, answers


def _recorded_prob(clinic: dict[str, Any], disease: dict[str, Any], symptom: str) -> float | None:
    """The chance that a case of ``disease`` records ``symptom`` (None: the world does not say)."""
    rec = clinic.get("recorded")
    if not rec:
        return None
    related = symptom in clinic["general"] or symptom in clinic["category_symptoms"].get(disease["category"], ())
    return rec["related"] if related else rec["other"]


def _likelihood(clinic: dict[str, Any], d: dict[str, Any], s: str, said: bool | None) -> float:
    """P(the patient's answer about ``s`` | disease ``d``): yes, no or "do not know" (None)."""
    drop = clinic["dropout"]
    rho = _recorded_prob(clinic, d, s)
    if said is None:
        return 1.0 if rho is None else 1 - rho
    inside = s in d["symptoms"]
    p = ((1 - drop) if said else drop) if inside else (0.0 if said else 1.0)
    return p * (1.0 if rho is None else rho)


def posterior(clinic: dict[str, Any], chief: str | None, answers: dict[str, bool | None]) -> list[float]:
    """P(disease | chief complaint, answers); an answer None is "Sorry, I do not know."."""
    weights = []
    for d in clinic["diseases"]:
        w = 0.0 if chief is not None and chief not in d["symptoms"] else 1.0
        for s, said in answers.items():
            w *= _likelihood(clinic, d, s, said)
        weights.append(w)
    total = sum(weights)
    n = len(weights)
    return [w / total for w in weights] if total > 0 else [1 / n] * n


def ranked(post: list[float]) -> list[int]:
    """Disease indices from the most probable down (ties: the clinic's order), the order the
    scripted doctor lists and diagnoses by."""
    return sorted(range(len(post)), key=lambda i: (-post[i], i))


def evidence_sufficient(clinic: dict[str, Any], first_user: str, replies: list[str], patient: list[str],
                        truth: str, confidence: float) -> bool:
    """Whether what a consultation learnt (the description and the patient's answers) makes the
    true disease the clinic's most probable one at posterior >= ``confidence``: the scripted
    doctor, given this evidence, would diagnose it correctly. It separates a doctor that asked
    too little from one that concluded wrongly from enough."""
    chief, answers = read_dialogue(first_user, replies, patient)
    post = posterior(clinic, chief, answers)
    top = ranked(post)[0]
    return post[top] >= confidence and same_text(clinic["diseases"][top]["name"], truth)


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def best_question(clinic: dict[str, Any], chief: str | None, answers: dict[str, bool | None]
                  ) -> tuple[str | None, float]:
    """The unasked symptom with the largest expected information gain (over the answers yes,
    no and "do not know"), and the gain."""
    post = posterior(clinic, chief, answers)
    h = _entropy(post)
    best, gain = None, MIN_GAIN
    for s in clinic["symptoms"]:
        if s in answers or s == chief:
            continue
        g = h
        for said in (True, False, None) if clinic.get("recorded") else (True, False):  # else: all recorded
            p_said = sum(p * _likelihood(clinic, d, s, said) for p, d in zip(post, clinic["diseases"]))
            if p_said > 0:
                g -= p_said * _entropy(posterior(clinic, chief, {**answers, s: said}))
        if g > gain + 1e-12:
            best, gain = s, g
    return best, gain


def scripted_reply(clinic: dict[str, Any], first_user: str, replies: list[str], patient: list[str], *,
                   confidence: float, force: bool = False) -> str:
    """The scripted doctor's next reply (with its think block); ``force``: the last turn."""
    chief, answers = read_dialogue(first_user, replies, patient)
    post = posterior(clinic, chief, answers)
    order = ranked(post)
    names = [clinic["diseases"][i]["name"] for i in order if post[i] > 0.01][:3]
    s, _ = best_question(clinic, chief, answers)
    if not force and s is not None and post[order[0]] < confidence:
        return doctor_reply(question_answer(question(s)), f"It could be {_listed(names)}. Ask about {s}.")
    top = clinic["diseases"][order[0]]
    return doctor_reply(diagnosis_answer(top["name"], top["recommendation"]), _findings(chief, answers) +
                        f"The answers fit {top['name']} best.")


def _findings(chief: str | None, answers: dict[str, bool | None]) -> str:
    """What the dialogue established, restated before the diagnosis: "The patient has X and Y,
    not Z." (the knowledge corpus's "I have X and Y" in the doctor's words)."""
    yes = [s for s in [chief] + [s for s, v in answers.items() if v is True] if s]
    no = [s for s, v in answers.items() if v is False]
    if not yes:
        return ""
    has = ", ".join(yes[:-1]) + " and " + yes[-1] if len(yes) > 1 else yes[0]
    return f"The patient has {has}" + (f", not {_listed(no)}" if no else "") + ". "


def scripted_policy(clinic: dict[str, Any], *, confidence: float) -> Policy:
    def act(consultations, prompts):
        return [scripted_reply(clinic, c.first[-1]["content"], c.replies, c.patient, confidence=confidence,
                               force=c.last_turn) for c in consultations]
    return act


def random_policy(clinic: dict[str, Any], *, max_turns: int, seed: int) -> Policy:
    """Uniformly random unasked questions, a uniformly random number of them (1 to
    ``max_turns - 1``), then a uniformly random disease with its recommendation: the floor
    a doctor that neither asks nor reasons reaches (accuracy 1 / number of diseases)."""
    plans: dict[int, tuple[int, random.Random]] = {}

    def act(consultations, prompts):
        out = []
        for c in consultations:
            if c.key not in plans:
                rng = random.Random(seed * 1_000_003 + c.key)
                plans[c.key] = (rng.randint(1, max(1, max_turns - 1)), rng)
            n, rng = plans[c.key]
            chief, answers = read_dialogue(c.first[-1]["content"], c.replies, c.patient)
            left = [s for s in clinic["symptoms"] if s != chief and s not in answers]
            if len(c.patient) < n and left and not c.last_turn:
                out.append(doctor_reply(question_answer(question(rng.choice(left))), None))
            else:
                d = rng.choice(clinic["diseases"])
                out.append(doctor_reply(diagnosis_answer(d["name"], d["recommendation"]), None))
        return out
    return act
