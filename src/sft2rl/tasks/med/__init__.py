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
* ``reward``: DoctorAgent-RL's consultation reward, term by term;
* ``rl``: the consultation as a multi-turn task of the shared GRPO trainer (fixed or dynamic
  turn budget);
* ``verl_agent``: the same consultations as a verl agent loop (``backend: verl``);
* ``table``: ``results/med/eval.csv``, the thinking ablation, LaTeX, the figure;
* ``rl_table``: ``results/med/rl_eval.csv``, the turn-budget ablation, their figures.
"""
from __future__ import annotations

#: ``agent_name`` of the medical verl rows: :class:`sft2rl.tasks.med.verl_agent.MedAgentLoop`.
VERL_AGENT_NAME = "sft2rl_med"
THINKING = {"think": True, "nothink": False}  # run-name part -> with_thinking
#: the turn budgets of medical RL (:mod:`sft2rl.tasks.med.rl`)
RL_MODES = ("fixed", "dynamic")
#: keys of ``med.rl`` that belong to the task, not to the shared trainer's ``rl:`` section
RL_TASK_KEYS = ("with_thinking", "seeds", "budget_range", "eval_budgets", "reward", "cases", "no_signal_control")


def rl_config(config: dict) -> dict:
    """The shared ``rl:`` section with the medical overrides (``med.rl``): what the ``med_rl``
    rule trains with. Replies are as long as in evaluation (``med.eval.max_new_tokens``); RL
    starts from the merged SFT doctor."""
    med = config["med"]
    over = {k: v for k, v in med["rl"].items() if k not in RL_TASK_KEYS}
    out = dict(config["rl"], **over)
    out["max_response_length"] = med["eval"]["max_new_tokens"]
    return dict(sorted(out.items()))  # a rule's params compare in order, and an override moves a key
