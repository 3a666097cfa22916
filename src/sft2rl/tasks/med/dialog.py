"""The consultation protocol of the MTMedDialog format: prompts and the doctor's answers.

A doctor's reply is ``<think> … </think>\\n<answer>Question: …</answer>`` to ask, and
``<think> … </think>\\n<answer>Diagnosis: …\\nRecommendation: …</answer>`` to conclude (the
think block is optional). The prompt of doctor turn k is the system turn, the patient's
description ("Patient's description: …\\nDecide next action:\\n" and a format line), then the
k earlier doctor replies (assistant) and patient replies (user), alternating. At the last
allowed turn the patient's message ends with :data:`FORCE`, the forced final diagnosis.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ...rows import strip_thinking

SYSTEM_PROMPT = (
    "You are a doctor consulting a patient online. Ask one short question per turn to learn the "
    "patient's symptoms, then give a diagnosis and a recommendation. To ask, reply "
    "<answer>Question: your question</answer>. To conclude, reply "
    "<answer>Diagnosis: the disease\nRecommendation: your advice</answer>.")
FORMAT_LINE = "Think briefly inside <think> </think>, then reply inside <answer> </answer>."
FORCE = "This is your last turn: give your diagnosis and recommendation now."
#: the turn budget, stated at the end of the patient's description (DoctorAgent-RL tells the
#: doctor its limit): in the SFT rows, in RL (fixed or drawn per case) and in evaluation
BUDGET = "You have at most {n} turns."
BUDGET_RE = re.compile(r"\nYou have at most \d+ turns\.$")
DONT_KNOW = "Sorry, I do not know."
NOT_UNDERSTOOD = "Sorry, I do not understand."
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
DIAGNOSIS_RE = re.compile(r"^Diagnosis:\s*(.*?)\s*\n\s*Recommendation:\s*(.*)$", re.DOTALL)
#: where a conclusion starts inside an answer: a line beginning "Diagnosis:"
DIAGNOSIS_LINE_RE = re.compile(r"(?:^|\n)\s*(?=Diagnosis:)")


def description(self_report: str) -> str:
    """The first user turn."""
    return f"Patient's description: {self_report}\nDecide next action:\n{FORMAT_LINE}"


def doctor_reply(answer: str, think: str | None) -> str:
    return (f"<think>{think}</think>\n" if think else "") + f"<answer>{answer}</answer>"


def question_answer(question: str) -> str:
    return f"Question: {question}"


def diagnosis_answer(diagnosis: str, recommendation: str) -> str:
    return f"Diagnosis: {diagnosis}\nRecommendation: {recommendation}"


@dataclass(frozen=True)
class Reply:
    """A parsed doctor reply: ``kind`` is question, diagnosis or invalid."""
    kind: str
    question: str = ""
    diagnosis: str = ""
    recommendation: str = ""


def parse_reply(text: str) -> Reply:
    """Exactly one ``<answer>`` (outside think blocks) holding a question or a diagnosis with a
    recommendation; anything else is invalid.

    An answer with a line beginning "Diagnosis:" concludes, whatever comes before that line
    (a question there is not asked): DoctorAgent-RL scores any answer naming a diagnosis as
    the diagnosis turn. The diagnosis part must still be "Diagnosis: …" then a
    "Recommendation: …" line, else the turn is invalid."""
    return _parse_body(strip_thinking(text))


def _parse_body(body: str) -> Reply:
    """:func:`parse_reply` of a reply whose think blocks are gone."""
    answers = ANSWER_RE.findall(body)
    if len(answers) != 1 or body.count("<answer>") != 1:
        return Reply("invalid")
    content = answers[0].strip()
    if (start := DIAGNOSIS_LINE_RE.search(content)) is not None:
        m = DIAGNOSIS_RE.match(content[start.end():])
        if m and m.group(1).strip():
            return Reply("diagnosis", diagnosis=m.group(1).strip(), recommendation=m.group(2).strip())
        return Reply("invalid")
    if content.startswith("Question:"):
        q = content[len("Question:"):].strip()
        return Reply("question", question=q) if q else Reply("invalid")
    return Reply("invalid")


def one_question(question: str) -> bool:
    """A question turn asks exactly one question: one "?" (or the full-width "？"), as
    DoctorAgent-RL counts them."""
    return question.count("?") + question.count("\uff1f") == 1


def parse_turn(text: str) -> Reply:
    """A doctor's turn in a consultation: :func:`parse_reply`, and invalid as well where
    DoctorAgent-RL's environment takes it for one: text after the ``</answer>`` (whitespace
    aside), or a question turn that asks other than one question (:func:`one_question`). The
    patient does not answer an invalid turn, and the reward scores it ``invalid``. (SFT rows are
    checked with :func:`parse_reply`: the format, not the consultation's rules.)"""
    body = strip_thinking(text)
    r = _parse_body(body)
    if r.kind == "invalid":
        return r
    if body[body.index("</answer>") + len("</answer>"):].strip():
        return Reply("invalid")
    if r.kind == "question" and not one_question(r.question):
        return Reply("invalid")
    return r


def with_budget(first: list[dict[str, str]], budget: int | None) -> list[dict[str, str]]:
    """``first`` (system + description) with the budget line ending the description (one
    stated already is replaced); ``budget`` None: without a budget line."""
    msgs = [dict(m) for m in first]
    i = max(k for k, m in enumerate(msgs) if m["role"] == "user")
    text = BUDGET_RE.sub("", msgs[i]["content"])
    msgs[i]["content"] = text + ("\n" + BUDGET.format(n=budget) if budget is not None else "")
    return msgs


def history_messages(first: list[dict[str, str]], replies: list[str], patient: list[str], *,
                     with_thinking: bool = True, force: bool = False, budget: int | None = None
                     ) -> list[dict[str, str]]:
    """The prompt of the next doctor turn: ``first`` (system + description), then the earlier
    doctor replies and patient replies; without thinking the earlier replies lose their think
    blocks (as the training rows do). ``force`` appends :data:`FORCE` to the last user turn;
    ``budget`` states the turn limit at the end of the description (:func:`with_budget`)."""
    msgs = with_budget(first, budget)
    for reply, answer in zip(replies, patient):
        msgs.append({"role": "assistant", "content": reply if with_thinking else strip_thinking(reply)})
        msgs.append({"role": "user", "content": answer})
    if force:
        msgs[-1] = {"role": "user", "content": msgs[-1]["content"] + "\n" + FORCE}
    return msgs
