"""Consultations between a doctor and the simulated patient, and their metrics.

A consultation starts from the case's first messages (system turn and the patient's
description) and runs at most ``max_turns`` doctor turns. A question gets the patient's
answer; an invalid turn (:func:`.dialog.parse_turn`: neither answer format, text after its
``</answer>``, or a question turn asking other than one question) gets "Sorry, I do not
understand." and still counts as a turn. At the last turn the patient's message ends with the forced-diagnosis
line; a doctor that still does not diagnose ends without a diagnosis (scored as wrong,
empty text). All consultations of one doctor advance in lockstep, so a model answers one
batch of prompts per turn.

Metrics (per doctor, over all cases and per category):

* ``accuracy``: exact diagnosis (case, spaces and a final period ignored), with a Wilson
  interval (``ci_level``), only where the world defines the diagnosis names (the synthetic clinic);
* ``diag_rougeL`` / ``rec_rougeL``: mean ROUGE-L F1 (``rouge-score``) of the diagnosis and
  the recommendation against the ground truth, 0 without a diagnosis;
* ``diag_bleu1``, ``diag_bleu2``, ``rec_bleu1``, ``rec_bleu4``: corpus BLEU (``sacrebleu``) with
  n-gram precisions up to 1, 2 or 4, in [0, 1] (the diagnosis gets BLEU-2: the clinic's
  disease names have two words, so their BLEU-4 is 0 whatever the doctor says);
* ``turns``: mean doctor turns; ``repeated_question_rate``: share of questions asked before
  in the same consultation; ``invalid_format_rate``: share of doctor turns that are invalid (``parse_turn``);
  ``ir_precision``: share of patient replies that are not "Sorry…" (information retrieval
  precision); ``diagnosed_rate``: share of consultations ended by a diagnosis;
* the synthetic clinic only: ``evidence_sufficient_rate``, share of consultations whose
  description and answers make the true disease the clinic's most probable at the scripted
  doctor's confidence (the questions sufficed), and ``accuracy_if_sufficient``, the accuracy
  on those (the conclusion from enough evidence).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...stats import wilson
from .dialog import NOT_UNDERSTOOD, Reply, history_messages, parse_turn
from .patient import PatientRequest, patient_backend
from .reward import episode_terms, question_key, same_text, turn_terms, weights

CATEGORY_ALL = "all"


@dataclass
class Consultation:
    """One consultation: the doctor's replies, what the patient said after each, the budget
    (``max_turns``, stated in the prompt; the last turn forced)."""
    key: int
    case: dict[str, Any]
    max_turns: int
    with_thinking: bool
    replies: list[str] = field(default_factory=list)
    patient: list[str] = field(default_factory=list)
    parsed: list[Reply] = field(default_factory=list)
    ended: bool = False

    @property
    def first(self) -> list[dict[str, str]]:
        return self.case["first"]

    @property
    def last_turn(self) -> bool:
        return len(self.replies) == self.max_turns - 1

    def prompt(self) -> list[dict[str, str]]:
        return history_messages(self.first, self.replies, self.patient, with_thinking=self.with_thinking,
                                force=self.last_turn, budget=self.max_turns)

    def act(self, reply: str) -> str | None:
        """Take the doctor's reply; the question the patient must answer (:meth:`hear`), else None."""
        r = parse_turn(reply)
        self.replies.append(reply)
        self.parsed.append(r)
        if r.kind == "diagnosis" or len(self.replies) >= self.max_turns:
            self.ended = True
        elif r.kind == "question":
            return r.question
        else:
            self.patient.append(NOT_UNDERSTOOD)
        return None

    def hear(self, answer: str) -> None:
        self.patient.append(answer)

    def asked(self) -> list[tuple[str, str]]:
        """The earlier questions with the patient's answers."""
        return [(r.question, said) for r, said in zip(self.parsed, self.patient) if r.kind == "question"]

    def reward_terms(self, w: dict[str, Any]) -> dict[str, float]:
        return episode_terms(self.parsed, self.patient, self.case["truth"], w)

    def turn_rewards(self, w: dict[str, Any]) -> list[tuple[Any, float]]:
        """Per doctor turn: the state it acted in and its reward (:func:`reward.turn_terms`,
        summing to the consultation's). The state is what the environment holds at that turn:
        the turns used and the set of questions asked with the patient's answers, whatever
        their order or wording beyond :func:`reward.question_key` (two consultations of a case
        that found the same facts in as many turns face the same patient, the same rest of the
        budget and the same remaining questions)."""
        out, facts = [], set()
        for i, (r, t) in enumerate(zip(self.parsed, turn_terms(self.parsed, self.patient, self.case["truth"], w))):
            out.append(((i, frozenset(facts)), float(sum(t.values()))))
            if r.kind == "question" and i < len(self.patient):
                facts.add((question_key(r.question), self.patient[i]))
        return out

    def record(self, w: dict[str, Any] | None = None) -> dict[str, Any]:
        """The consultation's record: diagnosis, metrics' counts and the reward with its terms
        (``w``: :func:`reward.weights`; the reference weights by default)."""
        w = w or weights(None)
        final = self.parsed[-1] if self.parsed and self.parsed[-1].kind == "diagnosis" else None
        questions = [question_key(r.question) for r in self.parsed if r.kind == "question"]
        truth = self.case["truth"]
        terms = self.reward_terms(w)
        reward = float(sum(terms.values()))
        return {
            "case": self.case["id"], "category": self.case["category"], "max_turns": self.max_turns,
            "truth_diagnosis": truth["diagnosis"], "truth_recommendation": truth["recommendation"],
            "diagnosed": final is not None, "diagnosis": final.diagnosis if final else "",
            "recommendation": final.recommendation if final else "",
            "correct": (same_text(final.diagnosis, truth["diagnosis"]) if final else False)
            if self.case["exact"] else None,
            "turns": len(self.replies), "questions": len(questions),
            "repeated": len(questions) - len(set(questions)),
            "invalid": sum(r.kind == "invalid" for r in self.parsed),
            "patient_replies": len(self.patient), "sorry": sum(p.startswith("Sorry") for p in self.patient),
            "reward": reward, "success": reward >= w["success_threshold"],
            **{f"reward_{k}": v for k, v in terms.items()},
            "replies": self.replies, "patient": self.patient,
        }


def advance(cons: list[Consultation], replies: list[str], patients) -> None:
    """One turn of the consultations ``cons``: each takes its reply, then the patient answers
    every question of the turn in one batch (``patients``: :func:`patient.patient_backend`)."""
    asks = []
    for c, reply in zip(cons, replies):
        q = c.act(reply)
        if q is not None:
            asks.append((c, PatientRequest(c.case, q, c.asked())))
    if asks:
        for (c, _), said in zip(asks, patients.answer([r for _, r in asks])):
            c.hear(said)


def consult(cases: list[dict[str, Any]], policy, *, max_turns: int, with_thinking: bool, threshold: float = 0.5,
            patients=None, reward: dict[str, Any] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run one consultation per case with ``policy``; one record per case. ``patients``: the
    patient backend (default: the rule patient with ``threshold``); ``reward``: the weights
    of the records' reward (default: the reference's)."""
    from tqdm import tqdm

    if max_turns < 1:
        raise ValueError("config key 'med.eval.max_turns' must be at least 1")
    patients = patients or patient_backend("rule", threshold)
    w = weights(reward)
    cons = [Consultation(i, case, max_turns, with_thinking) for i, case in enumerate(cases)]
    bar = tqdm(total=max_turns, desc="consult", mininterval=5, disable=not progress)
    while True:
        active = [c for c in cons if not c.ended]
        if not active:
            break
        advance(active, policy(active, [c.prompt() for c in active]), patients)
        bar.update(1)
    bar.close()
    return [c.record(w) for c in cons]


# ------------------------------------------------------------------ metrics
def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(ref, pred)["rougeL"].fmeasure if pred.strip() else 0.0
            for pred, ref in zip(predictions, references)]


def corpus_bleu(predictions: list[str], references: list[str], order: int) -> float:
    from sacrebleu.metrics import BLEU

    if not predictions:
        return float("nan")
    return float(BLEU(max_ngram_order=order).corpus_score(predictions, [references]).score / 100)


def summarize(records: list[dict[str, Any]], ci_level: float = 0.95) -> dict[str, Any]:
    n = len(records)
    exact = [r["correct"] for r in records if r["correct"] is not None]
    lo, hi = wilson(sum(exact), len(exact), ci_level) if exact else (float("nan"), float("nan"))
    d_pred, d_ref = [r["diagnosis"] for r in records], [r["truth_diagnosis"] for r in records]
    r_pred, r_ref = [r["recommendation"] for r in records], [r["truth_recommendation"] for r in records]
    questions, turns, replies = (sum(r[k] for r in records) for k in ("questions", "turns", "patient_replies"))
    marked = [r for r in records if r.get("evidence_sufficient") is not None]

    def share(num: float, den: float) -> float:
        return num / den if den else float("nan")

    return {
        "cases": n,
        "accuracy": float(np.mean(exact)) if exact else float("nan"), "accuracy_lo": lo, "accuracy_hi": hi,
        "diag_rougeL": float(np.mean(rouge_l(d_pred, d_ref))) if n else float("nan"),
        "rec_rougeL": float(np.mean(rouge_l(r_pred, r_ref))) if n else float("nan"),
        "diag_bleu1": corpus_bleu(d_pred, d_ref, 1), "diag_bleu2": corpus_bleu(d_pred, d_ref, 2),
        "rec_bleu1": corpus_bleu(r_pred, r_ref, 1), "rec_bleu4": corpus_bleu(r_pred, r_ref, 4),
        "turns": share(turns, n),
        "repeated_question_rate": share(sum(r["repeated"] for r in records), questions),
        "invalid_format_rate": share(sum(r["invalid"] for r in records), turns),
        "ir_precision": share(replies - sum(r["sorry"] for r in records), replies),
        "diagnosed_rate": share(sum(r["diagnosed"] for r in records), n),
        "reward": float(np.mean([r["reward"] for r in records])) if n else float("nan"),
        "success_rate": share(sum(r["success"] for r in records), n),
        # the synthetic clinic only (records marked by mark_evidence): how often the evidence
        # gathered sufficed for the true diagnosis, and the accuracy on those consultations
        "evidence_sufficient_rate": share(sum(bool(r["evidence_sufficient"]) for r in marked), len(marked)),
        "accuracy_if_sufficient": share(sum(bool(r["correct"]) for r in marked if r["evidence_sufficient"]),
                                        sum(bool(r["evidence_sufficient"]) for r in marked)),
    }


def mark_evidence(records: list[dict[str, Any]], cases: list[dict[str, Any]], clinic: dict[str, Any],
                  confidence: float) -> None:
    """Mark each consultation record of the synthetic clinic with ``evidence_sufficient``
    (:func:`doctor.evidence_sufficient`: its description and answers made the true disease the
    clinic's most probable at ``confidence``, the scripted doctor's diagnosis threshold)."""
    from .doctor import evidence_sufficient

    by_id = {str(c["id"]): c for c in cases}
    for r in records:
        case = by_id[str(r["case"])]
        r["evidence_sufficient"] = evidence_sufficient(clinic, case["first"][-1]["content"], r["replies"],
                                                       r["patient"], r["truth_diagnosis"], confidence)


def summary_rows(records: list[dict[str, Any]], ci_level: float = 0.95) -> list[dict[str, Any]]:
    """One row over all cases, then one per category (sorted)."""
    rows = [{"category": CATEGORY_ALL, **summarize(records, ci_level)}]
    for cat in sorted({r["category"] for r in records}):
        rows.append({"category": cat, **summarize([r for r in records if r["category"] == cat], ci_level)})
    return rows


# ------------------------------------------------------------------ one doctor: the rule's job
def evaluate_doctor(doctor: str, cases_path: str, world_path: str | None, model_path: str | None,
                    with_thinking: bool, ev: dict[str, Any], world_cfg: dict[str, Any], ci_level: float,
                    consultations_out: str, summary_out: str | None, patient: Any = "rule",
                    reward: dict[str, Any] | None = None, sampled: bool = False) -> list[dict[str, Any]]:
    """Consult every held-out case with ``doctor`` (base | scripted | random | an SFT or RL run
    name) within ``ev['max_turns']`` turns, against the patient ``patient`` (``med.patient``);
    write the consultations (jsonl, with each one's reward under ``reward``: ``med.rl.reward``)
    and the summary rows (json); return the rows.

    A model doctor replies greedily; ``sampled``: it samples at ``ev['temperature']`` and
    ``ev['top_p']`` (the reference's evaluation) and consults each case ``ev['k_samples']``
    times (record field ``sample``: 0..k-1; the scripted and random doctors consult as they
    always do, k times). Its summary rows (no interval: the k consultations of a case are not
    independent; rl_table bootstraps over cases) are written only where ``summary_out`` is given."""
    import json
    from pathlib import Path

    from ...io import write_json, write_jsonl
    from .data import read_cases
    from .doctor import random_policy, scripted_policy

    cases = read_cases(cases_path)
    k = ev["k_samples"] if sampled else 1
    if k < 1:
        raise ValueError("config key 'med.eval.k_samples' must be at least 1 for the sampled evaluation")
    if doctor in ("scripted", "random"):
        if not world_path:
            raise ValueError(f"the {doctor} doctor needs the synthetic clinic (med.raw_files is set)")
        clinic = json.loads(Path(world_path).read_text())
        policy = scripted_policy(clinic, confidence=world_cfg["confidence"]) if doctor == "scripted" \
            else random_policy(clinic, max_turns=ev["max_turns"], seed=ev["seed"])
    else:
        from ...generation import reply_policy
        from ...model import load_model

        model, tokenizer = load_model(model_path)
        policy = reply_policy(model, tokenizer, max_new_tokens=ev["max_new_tokens"], do_sample=sampled,
                              temperature=ev["temperature"] if sampled else 1.0,
                              top_p=ev["top_p"] if sampled else 1.0, seed=ev["seed"], batch_size=ev["batch_size"])
    # the k consultations of every case advance together, one batch per turn
    records = consult([c for _ in range(k) for c in cases], policy, max_turns=ev["max_turns"],
                      with_thinking=with_thinking, patients=patient_backend(patient, ev["patient_threshold"]),
                      reward=reward)
    if world_path:
        mark_evidence(records, cases, json.loads(Path(world_path).read_text()), world_cfg["confidence"])
    for i, r in enumerate(records):
        r["doctor"] = doctor
        if sampled:
            r["sample"] = i // len(cases)
    from ...generation import cut_share

    rows = [{"doctor": doctor, **row} for row in summary_rows(records, ci_level)]
    # the all-cases row: the share of the model doctor's replies that reached med.eval.max_new_tokens
    rows[0]["replies_cut"] = cut_share(policy)
    if sampled:
        for row in rows:
            row.update(accuracy_lo=float("nan"), accuracy_hi=float("nan"), k_samples=k)  # no Wilson over k x n
    write_jsonl(consultations_out, records)
    if summary_out:
        write_json(summary_out, rows)
    return rows
