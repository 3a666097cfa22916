"""The medical consultation on verl (``backend: verl``): a multi-turn agent loop in which the patient answers.

verl 0.9 runs multi-turn rollouts through agent loops (see :mod:`sft2rl.tasks.games.verl_agent`,
the model this one follows): :class:`MedAgentLoop`'s ``async run`` plays one consultation against
the rollout server and returns one sequence (:class:`sft2rl.verl_agent.EpisodeTokens`, shared
with the games' loop): the first prompt, then every doctor reply (mask 1, with the server's
log-probs) and every patient turn between them (mask 0, log-prob 0), the consultation's reward
on its last token. It is listed in the agent-loop file ``prepare-med-rl``
writes (``rollout.agent.agent_loop_config_path``) and chosen by every row of the medical verl
parquet (``agent_name``).

One consultation plays exactly as :func:`sft2rl.tasks.med.consult.consult` and the local RL
task (:class:`~.rl.MedTask`) play it: a :class:`~.consult.Consultation` of the row's case with
the row's turn budget (``extra_info``: the case as JSON and ``max_turns``, fixed at
``med.eval.max_turns`` or drawn per case from ``med.rl.budget_range`` when the rows were
written), replies of at most ``med.eval.max_new_tokens`` tokens, the same parsing, the same
patient (:func:`~.patient.patient_backend` of ``med.patient`` and
``med.eval.patient_threshold``, asked through :func:`~.consult.advance`), the patient's message
(and at the last turn the forced-diagnosis line) as the next user turn. Observation tokens come
from verl's continuous-token builder (the chat template's rendering of the new user message,
appended to the tokens the server generated). A reply cut at the reply limit is followed
directly by the patient's turn, as in local play (:class:`sft2rl.chat_tokens.TokenChat`) and the
games' loop.

One sequence per consultation: the prompt of a doctor turn is the whole consultation so far,
with every earlier reply as generated. After every patient turn the loop checks that the
sequence is, token for token, what local play (evaluation and the local RL task) gives the
doctor at that turn: a :class:`~sft2rl.chat_tokens.TokenChat` of :meth:`Consultation.prompt`
and the same replies, built with this loop's continuous-token builder; it stops the run with an
error naming the case, the turn and the first difference when it is not. With
``med.rl.with_thinking: false`` that prompt shows the earlier replies without their think
blocks (``strip_thinking``, as the SFT rows): the nothink doctor is trained on replies
without any, so its replies hold none, and one that does (or that has whitespace around its
answer, which the same function trims) stops the run rather than training on a context
evaluation never shows. The think doctor's earlier replies are shown as
written.

Reward: DoctorAgent-RL's (:meth:`Consultation.record` with the weights of ``med.rl.reward``),
as the local backend's. GRPO groups the ``rollout.n`` consultations of a case (verl's ``grpo``
estimator); they share the row's budget. The reward terms, success and turns go to verl's
``reward_extra_info`` (its rollout dumps) and, with the weights version the server reported,
to ``episode_log`` (one JSON line per consultation), from which the run's summary and ``rl/*``
curves are made (:func:`sft2rl.verl_export.med_rl_history`).

This module imports verl; only verl's workers import it.
"""
from __future__ import annotations

import json
import threading
from typing import Any

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register

from ...chat_tokens import TokenChat
from ...rows import strip_thinking
from ...verl_agent import EpisodeTokens, append_record
from . import VERL_AGENT_NAME
from .consult import Consultation, advance
from .patient import patient_backend
from .reward import TERMS, weights

#: the fields of a consultation's record (:meth:`Consultation.record`) in the episode log
LOG_FIELDS = ("case", "category", "max_turns", "turns", "questions", "repeated", "invalid", "patient_replies",
              "sorry", "diagnosed", "correct", "reward", "success", *(f"reward_{t}" for t in TERMS))

_PATIENTS: dict[str, Any] = {}
_PATIENTS_LOCK = threading.Lock()


class _OneAtATime:
    """A patient backend that is not safe to call from several threads (a model run in this
    process), called by one at a time."""

    def __init__(self, backend):
        self.backend, self.lock = backend, threading.Lock()

    def answer(self, requests):
        with self.lock:
            return self.backend.answer(requests)

    def describe(self):
        return self.backend.describe()


def shared_patients(spec: Any, threshold: float):
    """The patient backend of ``spec`` for every consultation of this worker process: verl builds
    one agent loop per episode, so the backend (the rule patients' cache, a loaded model) is
    kept here. Calls run in the event loop's threads; a model patient answers one call at a time."""
    key = json.dumps([spec, threshold], sort_keys=True)
    with _PATIENTS_LOCK:
        if key not in _PATIENTS:
            backend = patient_backend(spec, threshold)
            _PATIENTS[key] = _OneAtATime(backend) if backend.describe()["kind"] == "model" else backend
        return _PATIENTS[key]


@register(VERL_AGENT_NAME)
class MedAgentLoop(AgentLoopBase):
    """One consultation per call of :meth:`run` (see the module docstring).

    ``med``: ``eval``, ``patient`` and ``rl`` of the run's ``med:`` config (from the agent loop
    file); ``episode_log``: where finished consultations go (``None``: nowhere). A reply ends
    at the init model's stop ids (the rollout server's generation config) or at the reply limit."""

    def __init__(self, *args, med: Any, episode_log: str | None = None, attempt: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.med = OmegaConf.to_container(med, resolve=True) if isinstance(med, DictConfig) else dict(med)
        ev, rl = self.med["eval"], self.med["rl"]
        self.max_new_tokens = int(ev["max_new_tokens"])
        self.with_thinking = bool(rl["with_thinking"])
        self.w = weights(rl.get("reward"))
        self.patients = shared_patients(self.med.get("patient", "rule"), float(ev["patient_threshold"]))
        self.episode_log = episode_log
        self.attempt = int(attempt)  # this start of the run (a resumed run replays steps; the later start wins)
        self.response_length = self.rollout_config.response_length

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        info = kwargs["extra_info"]
        cons = Consultation(int(info.get("index", 0)), json.loads(info["case"]), int(info["max_turns"]),
                            self.with_thinking)
        seq = await EpisodeTokens.start(self, cons.prompt(), sampling_params, self.max_new_tokens)
        chat = TokenChat(self.tokenizer, self.continuous_token_builder)  # what local play shows the doctor
        await self.loop.run_in_executor(None, chat.prompt, cons.prompt())
        while True:
            reply = await seq.reply()
            self._check_length(cons, seq)
            # the doctor's reply, then the patient's answer (the local backend's step, off the event loop)
            text = self.tokenizer.decode(reply, skip_special_tokens=True)
            chat.reply(reply, text)
            await self.loop.run_in_executor(None, advance, [cons], [text], self.patients)
            if cons.ended:
                break
            await seq.hear(cons.prompt())  # the patient's turn: the chat template's rendering of the user message
            self._check_length(cons, seq)
            await self.loop.run_in_executor(None, self._check_history, cons, seq.ids, chat)
        rec = cons.record(self.w)
        append_record(self.episode_log, {"step": seq.version, "attempt": self.attempt,
                                         **{k: rec[k] for k in LOG_FIELDS}})
        extra = {"success": float(rec["success"]), "turns": float(rec["turns"]), "max_turns": float(cons.max_turns),
                 **{f"reward_{t}": float(rec[f"reward_{t}"]) for t in TERMS}}
        return seq.output(rec["reward"], 1 + len(cons.replies) + len(cons.patient), reward_extra_info=extra)

    def _check_length(self, cons: Consultation, seq: EpisodeTokens) -> None:
        if seq.response_length > self.response_length:
            raise ValueError(f"case {cons.case['id']}: a consultation of {len(cons.replies)} of {cons.max_turns} "
                             f"turns has {seq.response_length} response tokens, more than rollout.response_length = "
                             f"{self.response_length} (computed by prepare-med-rl from the cases, the budgets and "
                             "the patient; consultations are never cut)")

    def _check_history(self, cons: Consultation, runtime: list[int], chat: TokenChat) -> None:
        """The sequence so far must be the tokens local play gives the doctor at this turn."""
        want = chat.prompt(cons.prompt())
        if list(runtime) == want:
            return
        at = next((i for i, (a, b) in enumerate(zip(runtime, want)) if a != b), min(len(runtime), len(want)))

        def text(ids):
            return self.tokenizer.decode(ids[at:at + 20], skip_special_tokens=False, clean_up_tokenization_spaces=False)

        msg = (f"case {cons.case['id']}, before doctor turn {len(cons.replies) + 1}: the consultation's token "
               "sequence is not what local play shows the doctor (Consultation.prompt() with the replies as "
               f"generated); first difference at token {at}: sequence {text(runtime)!r}, local {text(want)!r}")
        changed = [k + 1 for k, r in enumerate(cons.replies) if strip_thinking(r) != r]
        if not self.with_thinking and changed:
            msg += (f". Reply {changed[0]} holds a think block (or whitespace around its answer): with "
                    "med.rl.with_thinking: false evaluation shows the earlier replies without them, as the SFT rows "
                    "do, while verl trains one sequence per consultation in which every reply stays as generated. "
                    "Train the think doctor (med.rl.with_thinking: true) or use backend: local")
        raise ValueError(msg)
