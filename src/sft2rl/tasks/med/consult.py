"""Consultations between a doctor and the simulated patient, and their metrics.

A consultation starts from the case's first messages (system turn and the patient's
description) and runs at most ``max_turns`` doctor turns. A question gets the patient's
answer; a reply in neither answer format gets "Sorry, I do not understand." and still
counts as a turn. At the last turn the patient's message ends with the forced-diagnosis
line; a doctor that still does not diagnose ends without a diagnosis (scored as wrong,
empty text). All consultations of one doctor advance in lockstep, so a model answers one
batch of prompts per turn.

Metrics (per doctor, over all cases and per category):

* ``accuracy``: exact diagnosis (case, spaces and a final period ignored), with a 95%
  Wilson interval, only where the world defines the diagnosis names (the synthetic clinic);
* ``diag_rougeL`` / ``rec_rougeL``: mean ROUGE-L F1 (``rouge-score``) of the diagnosis and
  the recommendation against the ground truth, 0 without a diagnosis;
* ``diag_bleu1``, ``diag_bleu2``, ``rec_bleu1``, ``rec_bleu4``: corpus BLEU (``sacrebleu``) with
  n-gram precisions up to 1, 2 or 4, in [0, 1] (the diagnosis gets BLEU-2: the clinic's
  disease names have two words, so their BLEU-4 is 0 whatever the doctor says);
* ``turns``: mean doctor turns; ``repeated_question_rate``: share of questions asked before
  in the same consultation; ``invalid_format_rate``: share of doctor turns in neither format;
  ``ir_precision``: share of patient replies that are not "Sorry…" (information retrieval
  precision); ``diagnosed_rate``: share of consultations ended by a diagnosis.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...stats import wilson
from .dialog import NOT_UNDERSTOOD, Reply, history_messages, parse_reply
from .patient import Patient

CATEGORY_ALL = "all"


@dataclass
class Consultation:
    key: int
    case: dict[str, Any]
    max_turns: int
    with_thinking: bool
    patient_sim: Patient
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
                                force=self.last_turn)

    def act(self, reply: str) -> None:
        r = parse_reply(reply)
        self.replies.append(reply)
        self.parsed.append(r)
        if r.kind == "diagnosis" or len(self.replies) >= self.max_turns:
            self.ended = True
        else:
            self.patient.append(self.patient_sim.answer(r.question) if r.kind == "question" else NOT_UNDERSTOOD)

    def record(self) -> dict[str, Any]:
        final = self.parsed[-1] if self.parsed and self.parsed[-1].kind == "diagnosis" else None
        questions = [normalize(r.question) for r in self.parsed if r.kind == "question"]
        truth = self.case["truth"]
        return {
            "case": self.case["id"], "category": self.case["category"],
            "truth_diagnosis": truth["diagnosis"], "truth_recommendation": truth["recommendation"],
            "diagnosed": final is not None, "diagnosis": final.diagnosis if final else "",
            "recommendation": final.recommendation if final else "",
            "correct": (normalize(final.diagnosis) == normalize(truth["diagnosis"]) if final else False)
            if self.case["exact"] else None,
            "turns": len(self.replies), "questions": len(questions),
            "repeated": len(questions) - len(set(questions)),
            "invalid": sum(r.kind == "invalid" for r in self.parsed),
            "patient_replies": len(self.patient), "sorry": sum(p.startswith("Sorry") for p in self.patient),
            "replies": self.replies, "patient": self.patient,
        }


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()


def consult(cases: list[dict[str, Any]], policy, *, max_turns: int, with_thinking: bool, threshold: float,
            progress: bool = True) -> list[dict[str, Any]]:
    """Run one consultation per case with ``policy``; one record per case."""
    from tqdm import tqdm

    if max_turns < 1:
        raise ValueError("config key 'med.eval.max_turns' must be at least 1")
    cons = [Consultation(i, case, max_turns, with_thinking, Patient(case["patient_information"], threshold))
            for i, case in enumerate(cases)]
    bar = tqdm(total=max_turns, desc="consult", mininterval=5, disable=not progress)
    while True:
        active = [c for c in cons if not c.ended]
        if not active:
            break
        for c, reply in zip(active, policy(active, [c.prompt() for c in active])):
            c.act(reply)
        bar.update(1)
    bar.close()
    return [c.record() for c in cons]


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
    }


def summary_rows(records: list[dict[str, Any]], ci_level: float = 0.95) -> list[dict[str, Any]]:
    """One row over all cases, then one per category (sorted)."""
    rows = [{"category": CATEGORY_ALL, **summarize(records, ci_level)}]
    for cat in sorted({r["category"] for r in records}):
        rows.append({"category": cat, **summarize([r for r in records if r["category"] == cat], ci_level)})
    return rows


# ------------------------------------------------------------------ one doctor: the rule's job
def evaluate_doctor(doctor: str, cases_path: str, world_path: str | None, model_path: str | None,
                    with_thinking: bool, ev: dict[str, Any], world_cfg: dict[str, Any], ci_level: float,
                    consultations_out: str, summary_out: str) -> list[dict[str, Any]]:
    """Consult every held-out case with ``doctor`` (base | scripted | random | an SFT run name);
    write the consultations (jsonl) and the summary rows (json); return the rows."""
    import json
    from pathlib import Path

    from ...io import write_json, write_jsonl
    from .data import read_cases
    from .doctor import random_policy, scripted_policy

    cases = read_cases(cases_path)
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
        policy = reply_policy(model, tokenizer, max_new_tokens=ev["max_new_tokens"], do_sample=False,
                              temperature=1.0, seed=ev["seed"], batch_size=ev["batch_size"])
    records = consult(cases, policy, max_turns=ev["max_turns"], with_thinking=with_thinking,
                      threshold=ev["patient_threshold"])
    for r in records:
        r["doctor"] = doctor
    rows = [{"doctor": doctor, **row} for row in summary_rows(records, ci_level)]
    write_jsonl(consultations_out, records)
    write_json(summary_out, rows)
    return rows
