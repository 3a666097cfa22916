"""Multi-turn medical consultation (SPEC section C): a doctor model talks with a patient.

Everything about the medical task lives in this folder:

* ``dialog``: the MTMedDialog prompt protocol (system turn, the patient's description, the
  two answer formats ``Question: …`` and ``Diagnosis: …\\nRecommendation: …``), parsing of a
  doctor's reply;
* ``clinic``: the embedded synthetic clinic (diseases, symptom profiles, recommendations,
  patient cases), deterministic from a seed, and its pretraining corpus;
* ``doctor``: the scripted doctor (asks the most informative question, diagnoses the most
  probable disease), the random-question doctor, a model as the doctor;
* ``patient``: the rule-based simulated patient (answers from the case's recorded facts);
* ``data``: MTMedDialog rows (written from scripted consultations, or your own files),
  validation with errors naming file, row and field, ``with_thinking`` processing, the
  held-out cases;
* ``consult``: consultations between a doctor and the patient, their metrics;
* ``table``: ``results/med/eval.csv``, the thinking ablation, LaTeX, the figure.
"""
from __future__ import annotations

THINKING = {"think": True, "nothink": False}  # run-name part -> with_thinking
