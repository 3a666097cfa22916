"""The medical consultation on the shared GRPO trainer: multi-turn episodes against the patient.

One item is a train case (the clinic's train consultations, or your MTMedDialog train rows
through their ``patient_information``); its ``n`` consultations are one group (DoctorAgent-RL:
8 per case). All consultations of a batch advance in lockstep, exactly as in evaluation
(:func:`sft2rl.tasks.med.consult.consult`): the same prompt (system turn, the patient's
description ending with the turn budget, the earlier turns; the last turn forced), the same
reply limit ``med.eval.max_new_tokens``, the same parsing, the same patient
(``med.patient``). Replies are sampled (``rl.temperature``).

Turn budget (``med.rl.turn_budget``): ``fixed`` plays every training consultation with
``med.eval.max_turns`` turns, the evaluation's and the SFT rows' limit; ``dynamic`` draws the
limit uniformly from ``med.rl.budget_range`` (DoctorAgent-RL: 2..10) for each case of each
step, and the prompt states it. The draw is per case, not per episode, so the episodes of a
group, whose rewards are normalised against each other, play under the same limit.

Each doctor turn is one row of the trajectory (its prompt and the sampled reply, loss mask 1
on the reply): the prompts of a batch start alike (system turn and the description's
opening), that common start is the rows' shared prompt, computed once per batch, and the
rest of a turn's prompt leads its row's response as context (loss mask 0), as in the games
task. Every row of a consultation takes the consultation's advantage. The reward is
DoctorAgent-RL's, term by term (:mod:`sft2rl.tasks.med.reward`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...rl_task import Rollout, check_limits, multi_turn_rollout
from . import RL_MODES
from .consult import Consultation, advance, consult
from .data import read_cases
from .patient import patient_backend, run_key_parts
from .reward import TERMS, weights

MODES = RL_MODES


def budgets(mode: str, n_items: int, fixed: int, budget_range: list[int], seed: int) -> list[int]:
    """The turn budget of each case of a step: ``fixed`` for every case, or drawn uniformly
    from ``budget_range`` (inclusive) with ``seed``."""
    if mode == "fixed":
        return [int(fixed)] * n_items
    if mode != "dynamic":
        raise ValueError(f"med.rl turn budget must be one of {MODES}, got {mode!r}")
    lo, hi = budget_range
    return [int(b) for b in np.random.default_rng(seed).integers(lo, hi + 1, size=n_items)]


class MedTask:
    """The doctor's multi-turn RL task (:func:`sft2rl.grpo.train_rl`). ``med`` holds
    ``eval``, ``patient`` and ``rl`` (``budget_range``, ``reward``, ``with_thinking``,
    ``cases``) of the ``med:`` config section; ``mode``: fixed or dynamic."""

    def __init__(self, train_cases: str, val_cases: str, med: dict[str, Any], mode: str):
        if mode not in MODES:
            raise ValueError(f"med.rl turn budget must be one of {MODES}, got {mode!r}")
        self.train_path, self.val_path, self.med, self.mode = train_cases, val_cases, med, mode
        self.ev, self.rl = med["eval"], med["rl"]
        self.w = weights(self.rl.get("reward"))
        self.with_thinking = bool(self.rl["with_thinking"])
        self.patients = patient_backend(med.get("patient", "rule"), self.ev["patient_threshold"])
        self.items: list[dict] = []
        self.val_cases: list[dict] = []

    def key(self) -> dict[str, Any]:
        patient_data, med, patient = run_key_parts(self.med, self.patients.describe())
        return {"data": {"train_cases": self.train_path, "val_cases": self.val_path, **patient_data},
                "params": {"med": med, "mode": self.mode, "patient": patient},
                "modules": ["tasks.med.rl"]}

    def _max_budget(self) -> int:
        return int(self.ev["max_turns"]) if self.mode == "fixed" else int(self.rl["budget_range"][1])

    def load(self, tokenizer, cfg: dict[str, Any]) -> list[dict]:
        self.items = read_cases(self.train_path)
        if self.rl.get("cases"):  # RL on the first ``med.rl.cases`` train cases only
            self.items = self.items[:int(self.rl["cases"])]
        self.val_cases = read_cases(self.val_path)
        first = [Consultation(0, c, self._max_budget(), self.with_thinking).prompt() for c in self.items]
        check_limits(tokenizer, cfg, self.train_path, self.items, first, self.ev["max_new_tokens"],
                     "med.eval.max_new_tokens")
        return self.items

    def rollout(self, model, tokenizer, items: list[dict], n: int, cfg: dict[str, Any], seed: int) -> Rollout:
        torch.manual_seed(seed)
        limits = budgets(self.mode, len(items), self.ev["max_turns"], self.rl["budget_range"], seed)
        cons = [Consultation(g * n + k, case, limits[g], self.with_thinking)
                for g, case in enumerate(items) for k in range(n)]
        return multi_turn_rollout(
            model, tokenizer, cons, np.repeat(np.arange(len(items)), n), done=lambda c: c.ended,
            prompt=Consultation.prompt, advance=lambda active, replies: advance(active, replies, self.patients),
            max_new_tokens=self.ev["max_new_tokens"], cfg=cfg,
            metrics={"budget": float(np.mean(limits))})

    def rewards(self, items: list[dict], rollout: Rollout) -> tuple[np.ndarray, dict[str, float]]:
        records = [c.record(self.w) for c in rollout.info]
        return np.array([r["reward"] for r in records], dtype=np.float64), episode_metrics(records)

    def turn_rewards(self, items: list[dict], rollout: Rollout) -> list[list[tuple[Any, float]]]:
        """Per consultation, per doctor turn: the state the turn acted in (the facts found so far
        and the turns used) and the turn's reward (:meth:`Consultation.turn_rewards`), the
        anchor states and rewards of GiGPO's step advantages (``rl.step_adv_weight``)."""
        return [c.turn_rewards(self.w) for c in rollout.info]

    def validate(self, model, tokenizer) -> dict[str, float]:
        """Greedy consultations of the val cases at the evaluation's budget, as the table's."""
        from ...generation import reply_policy

        ev = self.ev
        pol = reply_policy(model, tokenizer, max_new_tokens=ev["max_new_tokens"], do_sample=False, temperature=1.0,
                           seed=ev["seed"], batch_size=ev["batch_size"])
        records = consult(self.val_cases, pol, max_turns=ev["max_turns"], with_thinking=self.with_thinking,
                          patients=self.patients, reward=self.rl.get("reward"), progress=False)
        return episode_metrics(records)


def random_doctor_curves(train_cases: str, val_cases: str, world_path: str, med: dict[str, Any], seed: int
                         ) -> dict[str, Any]:
    """The random-question doctor (:func:`sft2rl.tasks.med.doctor.random_policy`: what a doctor
    without information scores) on the cases the RL curves are measured on, against the same
    patient, with the same reward (``med.rl.reward``): ``val``, the val cases at
    ``med.eval.max_turns`` as validation consults them; ``train``, per turn budget (fixed:
    ``med.eval.max_turns``; dynamic: one draw per case from ``med.rl.budget_range`` with
    ``seed``, the workflow's ``med.eval.seed``), the train cases RL plays (the first
    ``med.rl.cases``). Each: :func:`episode_metrics`."""
    import json
    from pathlib import Path

    from .doctor import random_policy

    ev, rl = med["eval"], med["rl"]
    clinic = json.loads(Path(world_path).read_text())
    patients = patient_backend(med.get("patient", "rule"), ev["patient_threshold"])
    with_thinking = bool(rl["with_thinking"])

    def run(cases: list[dict], limits: list[int]) -> list[dict[str, Any]]:
        records = []
        for b in sorted(set(limits)):  # the random doctor plans its questions within its case's limit
            group = [c for c, lim in zip(cases, limits) if lim == b]
            records += consult(group, random_policy(clinic, max_turns=b, seed=ev["seed"]), max_turns=b,
                               with_thinking=with_thinking, patients=patients, reward=rl.get("reward"),
                               progress=False)
        return records

    val = read_cases(val_cases)
    train = read_cases(train_cases)
    if rl.get("cases"):
        train = train[:int(rl["cases"])]
    return {"val": episode_metrics(run(val, [int(ev["max_turns"])] * len(val))),
            "train": {mode: episode_metrics(run(train, budgets(mode, len(train), ev["max_turns"],
                                                               rl["budget_range"], seed)))
                      for mode in MODES}}


def episode_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """Means over consultations: reward and each term, success, accuracy (where exact),
    turns, diagnosed, and the rates of repeated questions, unanswered questions and bad turns."""
    out = {"episode_reward": float(np.mean([r["reward"] for r in records])),
           "success": float(np.mean([r["success"] for r in records])),
           **{f"reward_{k}": float(np.mean([r[f"reward_{k}"] for r in records])) for k in TERMS},
           "turns": float(np.mean([r["turns"] for r in records])),
           "diagnosed": float(np.mean([r["diagnosed"] for r in records]))}
    exact = [r["correct"] for r in records if r["correct"] is not None]
    if exact:
        out["accuracy"] = float(np.mean(exact))
    questions = sum(r["questions"] for r in records)
    turns = sum(r["turns"] for r in records)
    replies = sum(r["patient_replies"] for r in records)
    out["repeated_rate"] = sum(r["repeated"] for r in records) / questions if questions else 0.0
    out["invalid_rate"] = sum(r["invalid"] for r in records) / turns if turns else 0.0
    out["sorry_rate"] = sum(r["sorry"] for r in records) / replies if replies else 0.0
    return out
