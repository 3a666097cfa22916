"""Doctors: the scripted doctor (the data's author and the upper reference), the
random-question doctor (the chance floor) and a model (:func:`sft2rl.generation.reply_policy`).

Every doctor sees only the dialogue: the patient's description and the patient's replies.
A policy maps the open consultations and their prompts to one reply each.

The scripted doctor keeps a posterior over the clinic's diseases. Under the clinic's case
model a symptom outside a disease's profile is never present and a profile symptom is
present with probability ``1 - dropout``; the chief complaint rules out every disease
without it. Each turn it asks about the symptom with the largest expected information gain
(ties: the world's symptom order), and it diagnoses the most probable disease when that
probability reaches ``confidence``, when no question is informative, or after
``max_questions`` questions. Its think text names the leading candidates.
"""
from __future__ import annotations

import math
import random
import re
from typing import Any, Callable

from .clinic import question
from .dialog import diagnosis_answer, doctor_reply, question_answer

Policy = Callable[[list[Any], list[list[dict[str, str]]]], list[str]]
CHIEF_RE = re.compile(r"I have had (.+?) for \d+ days?\.")
ASKED_RE = re.compile(r"^Do you have (.+)\?$")
ANSWER_YES_RE = re.compile(r"^Yes, I have (.+)\.$")
ANSWER_NO_RE = re.compile(r"^No, I do not have (.+)\.$")


def _listed(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]


def read_dialogue(first_user: str, patient: list[str]) -> tuple[str | None, dict[str, bool]]:
    """The chief complaint and the answered symptoms (yes/no) the dialogue states."""
    m = CHIEF_RE.search(first_user)
    answers: dict[str, bool] = {}
    for reply in patient:
        reply = reply.split("\n")[0].strip()
        if (y := ANSWER_YES_RE.match(reply)):
            answers[y.group(1)] = True
        elif (n := ANSWER_NO_RE.match(reply)):
            answers[n.group(1)] = False
    return (m.group(1) if m else None), answers


def posterior(clinic: dict[str, Any], chief: str | None, answers: dict[str, bool]) -> list[float]:
    drop = clinic["dropout"]
    weights = []
    for d in clinic["diseases"]:
        prof = d["symptoms"]
        w = 0.0 if chief is not None and chief not in prof else 1.0
        for s, yes in answers.items():
            if s in prof:
                w *= (1 - drop) if yes else drop
            elif yes:
                w = 0.0
        weights.append(w)
    total = sum(weights)
    n = len(weights)
    return [w / total for w in weights] if total > 0 else [1 / n] * n


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def best_question(clinic: dict[str, Any], chief: str | None, answers: dict[str, bool]) -> tuple[str | None, float]:
    """The unasked symptom with the largest expected information gain, and the gain."""
    post = posterior(clinic, chief, answers)
    h = _entropy(post)
    best, gain = None, 1e-9
    for s in clinic["symptoms"]:
        if s == chief or s in answers:
            continue
        p_yes = sum(p * (1 - clinic["dropout"]) for p, d in zip(post, clinic["diseases"]) if s in d["symptoms"])
        if not 0 < p_yes < 1:
            continue
        g = h - p_yes * _entropy(posterior(clinic, chief, {**answers, s: True})) \
            - (1 - p_yes) * _entropy(posterior(clinic, chief, {**answers, s: False}))
        if g > gain + 1e-12:
            best, gain = s, g
    return best, gain


def scripted_reply(clinic: dict[str, Any], first_user: str, patient: list[str], *, confidence: float,
                   max_questions: int, force: bool = False) -> str:
    """The scripted doctor's next reply (with its think block)."""
    chief, answers = read_dialogue(first_user, patient)
    post = posterior(clinic, chief, answers)
    order = sorted(range(len(post)), key=lambda i: (-post[i], i))
    names = [clinic["diseases"][i]["name"] for i in order if post[i] > 0.01][:3]
    s, _ = best_question(clinic, chief, answers)
    if not force and s is not None and post[order[0]] < confidence and len(patient) < max_questions:
        return doctor_reply(question_answer(question(s)), f"It could be {_listed(names)}. "
                                                           f"Asking about {s} tells them apart.")
    top = clinic["diseases"][order[0]]
    return doctor_reply(diagnosis_answer(top["name"], top["recommendation"]), f"The answers fit {top['name']} best.")


def scripted_policy(clinic: dict[str, Any], *, confidence: float, max_questions: int) -> Policy:
    def act(consultations, prompts):
        return [scripted_reply(clinic, c.first[-1]["content"], c.patient, confidence=confidence,
                               max_questions=max_questions, force=c.last_turn) for c in consultations]
    return act


def random_policy(clinic: dict[str, Any], *, max_questions: int, seed: int) -> Policy:
    """Uniformly random unasked questions, a uniformly random number of them (1 to
    ``max_questions``), then a uniformly random disease with its recommendation: the floor
    a doctor that neither asks nor reasons reaches (accuracy 1 / number of diseases)."""
    plans: dict[int, tuple[int, random.Random]] = {}

    def act(consultations, prompts):
        out = []
        for c in consultations:
            if c.key not in plans:
                rng = random.Random(seed * 1_000_003 + c.key)
                plans[c.key] = (rng.randint(1, max_questions), rng)
            n, rng = plans[c.key]
            chief, answers = read_dialogue(c.first[-1]["content"], c.patient)
            left = [s for s in clinic["symptoms"] if s != chief and s not in answers]
            if len(c.patient) < n and left and not c.last_turn:
                out.append(doctor_reply(question_answer(question(rng.choice(left))), None))
            else:
                d = rng.choice(clinic["diseases"])
                out.append(doctor_reply(diagnosis_answer(d["name"], d["recommendation"]), None))
        return out
    return act
