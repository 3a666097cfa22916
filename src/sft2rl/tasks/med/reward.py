"""The consultation reward of DoctorAgent-RL, term by term, every weight from config.

An episode is one consultation of at most its turn budget. Its reward is the sum of its
turns' terms (``med.rl.reward``, reference weights by default):

* a question the patient answers from the record: ``answered`` (+1); one it cannot answer
  ("Sorry, I do not know."): ``unanswered`` (-1);
* a question asked before in the same consultation (case, spaces and a final "?" or "."
  ignored): ``repeated`` (-2), instead of the answered / unanswered term;
* a turn in neither answer format, with text after its ``</answer>``, or a question turn
  asking other than one question (other than one "?"; :func:`.dialog.parse_turn`): ``invalid`` (-2);
* the diagnosis turn: ``diagnosis`` (5) x the match of the diagnosis with the truth and
  ``recommendation`` (5) x the token-overlap F1 of the recommendation; the match is the
  token-overlap F1 (``match: f1``, the reference's) or exact (``match: exact``: 1 when the
  names agree, case, spaces and a final period ignored; the clinic has exact disease names);
* a consultation that reaches its turn budget without a diagnosis: ``no_diagnosis`` (-5) (a
  question at that last turn is never answered and earns no question term).

The episode succeeds when its reward reaches ``success_threshold`` (10). Token-overlap F1 is
SQuAD's but for punctuation: lower case, punctuation replaced by a space (SQuAD deletes it:
"check-up" is two words here, one there), articles removed, F1 of the bags of words.
DoctorAgent-RL splits with jieba, which keeps punctuation and spaces as tokens.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any

#: DoctorAgent-RL's weights (restated in issue 23); ``med.rl.reward`` overrides them
REFERENCE = {"diagnosis": 5.0, "recommendation": 5.0, "answered": 1.0, "unanswered": -1.0, "repeated": -2.0,
             "invalid": -2.0, "no_diagnosis": -5.0, "match": "f1", "success_threshold": 10.0}
#: the terms an episode's reward is the sum of (the keys of :func:`episode_terms`)
TERMS = ("diagnosis", "recommendation", "answered", "unanswered", "repeated", "invalid", "no_diagnosis")

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _tokens(text: str) -> list[str]:
    return _ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower())).split()


def token_f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 of two texts (0 when either has no word); words as the module says."""
    p, t = _tokens(prediction), _tokens(truth)
    common = sum((Counter(p) & Counter(t)).values())
    if not p or not t or common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(t)
    return 2 * precision * recall / (precision + recall)


def same_text(a: str, b: str) -> bool:
    """Equal up to case, runs of spaces and a final period (the exact-diagnosis rule)."""
    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", s.strip().lower()).rstrip(".").strip()
    return norm(a) == norm(b)


def question_key(question: str) -> str:
    """What makes two questions the same question: case, spaces, a final "?" or "." ignored."""
    return re.sub(r"\s+", " ", question.strip().lower()).rstrip("?.").strip()


def weights(cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The reference weights with ``cfg`` (``med.rl.reward``) over them; unknown keys refused."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(REFERENCE))
    if unknown:
        raise ValueError(f"config key 'med.rl.reward': unknown {unknown}; known: {sorted(REFERENCE)}")
    out = {**REFERENCE, **cfg}
    if out["match"] not in ("f1", "exact"):
        raise ValueError(f"config key 'med.rl.reward.match' must be f1 or exact, got {out['match']!r}")
    return out


def turn_terms(parsed: list, patient: list[str], truth: dict[str, str], w: dict[str, Any]) -> list[dict[str, float]]:
    """Each doctor turn's share of the reward terms, turn by turn (what GiGPO's step advantages
    need); the ``no_diagnosis`` penalty falls on the last turn. They sum to :func:`episode_terms`.
    The replies are read as a consultation reads them (:func:`.dialog.parse_turn`): a question
    turn asking other than one question is ``invalid`` there.
    ``parsed``: the doctor's replies as :class:`sft2rl.tasks.med.dialog.Reply`; ``patient``: what
    the patient said after each reply but the last (the answer, or "Sorry, I do not
    understand." after a malformed turn)."""
    out = []
    asked: set[str] = set()
    for i, r in enumerate(parsed):
        t = dict.fromkeys(TERMS, 0.0)
        out.append(t)
        if r.kind == "invalid":
            t["invalid"] += w["invalid"]
            continue
        if r.kind == "diagnosis":
            match = (1.0 if same_text(r.diagnosis, truth["diagnosis"]) else 0.0) if w["match"] == "exact" \
                else token_f1(r.diagnosis, truth["diagnosis"])
            t["diagnosis"] += w["diagnosis"] * match
            t["recommendation"] += w["recommendation"] * token_f1(r.recommendation, truth["recommendation"])
            continue
        if i >= len(patient):  # the question of the last turn: the budget ended the consultation
            continue
        key = question_key(r.question)
        if key in asked:
            t["repeated"] += w["repeated"]
        elif not patient[i].startswith("Sorry"):
            t["answered"] += w["answered"]
        else:
            t["unanswered"] += w["unanswered"]
        asked.add(key)
    if not parsed or parsed[-1].kind != "diagnosis":
        if not out:
            out.append(dict.fromkeys(TERMS, 0.0))
        out[-1]["no_diagnosis"] += w["no_diagnosis"]
    return out


def episode_terms(parsed: list, patient: list[str], truth: dict[str, str], w: dict[str, Any]) -> dict[str, float]:
    """Each term's share of one consultation's reward: the sum over its turns of
    :func:`turn_terms`."""
    turns = turn_terms(parsed, patient, truth, w)
    return {k: float(sum(t[k] for t in turns)) for k in TERMS}
