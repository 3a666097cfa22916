"""MTMedDialog rows: the synthetic clinic's, your own, their validation and processing.

Raw rows (one per doctor turn, the MTMedDialog schema): ``prompt`` (messages: system, the
patient's description, then alternating earlier doctor and patient turns, ending with the
user's), ``response`` (``<think>…</think>\\n<answer>Question: …</answer>``, or the diagnosis
on the last turn), ``reward_model: {ground_truth: {diagnosis, recommendation},
patient_information: [{doctor_question, patient_response}, …]}``, ``extra_info`` (``index``;
the clinic adds ``split``, ``case``, ``turn``, ``category``). Raw files are jsonl or parquet
(by extension); a bad row stops processing with an error naming file, row and field, and
nothing is written. A ``patient_response`` may be null (a recorded question the record
cannot answer: the patient says "Sorry, I do not know." to it); responses that are not a
doctor turn are refused in one error that counts them all and names the first lines.

Processing for SFT (``with_thinking``): ``true`` keeps the rows as they are; ``false``
removes every ``<think>…</think>`` from the target *and* from the earlier doctor turns in
the prompt (the system and patient turns are never touched). The processed rows carry a
``messages`` column (prompt + the response as the last assistant turn; the loss is on that
turn only). Each description states the turn budget (``med.eval.max_turns``), or, for a
dialogue with more doctor turns than that, the dialogue's own length, so that no row asks
on past the limit it states.

Held-out cases for evaluation are the distinct dialogues of the test file: the first
messages (up to the patient's description), the ground truth, ``patient_information`` and
the category (``extra_info.category``, else "all").
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ...rows import check_overlap_policy, check_prompt_response, strip_thinking
from ...errors import DataError
from ...io import read_rows, write_json, write_jsonl, write_parquet
from . import clinic as clinic_mod
from .dialog import SYSTEM_PROMPT, description, history_messages, parse_reply, with_budget

SYNTHETIC_SOURCE = "med_synthetic"


# ------------------------------------------------------------------ the synthetic clinic's rows
def consultation_rows(first: list[dict[str, str]], replies: list[str], patient: list[str],
                      reward_model: dict[str, Any], extra: dict[str, Any], max_turns: int) -> list[dict[str, Any]]:
    """One raw row per doctor turn of a consultation (think blocks kept); the row of turn
    ``max_turns`` (the last allowed) carries the forced-diagnosis line, as in the evaluation."""
    rows = []
    for k, reply in enumerate(replies):
        rows.append({"data_source": SYNTHETIC_SOURCE,
                     "prompt": history_messages(first, replies[:k], patient[:k], with_thinking=True,
                                                force=k == max_turns - 1, budget=max_turns),
                     "response": reply, "ability": "medical_consultation", "reward_model": reward_model,
                     "extra_info": {**extra, "turn": k}})
    return rows


def clinic_case(clinic: dict[str, Any], case: dict[str, Any]) -> dict[str, Any]:
    """A clinic case as an evaluation case (what :func:`consult.consult` takes)."""
    return {"id": f"{case['split']}-{case['index']}" if "split" in case else "draw", "category": case["category"],
            "exact": True,
            "first": [{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": description(clinic_mod.self_report(case))}],
            "truth": {"diagnosis": case["disease"], "recommendation": case["recommendation"]},
            "patient_information": clinic_mod.patient_information(clinic, case)}


def scripted_consultation(clinic: dict[str, Any], ev: dict[str, Any], *, confidence: float, max_turns: int
                          ) -> tuple[list[str], list[str]]:
    """The scripted doctor's replies and the patient's answers on a clinic case (the clinic's
    patient is asked its recorded questions verbatim, and nothing else is recorded: an exact
    lookup gives what :class:`patient.Patient` answers)."""
    from .dialog import DONT_KNOW
    from .doctor import scripted_reply

    facts = {q: r for e in ev["patient_information"] for q, r in zip(e["doctor_question"], e["patient_response"])}
    replies: list[str] = []
    patient: list[str] = []
    while True:
        reply = scripted_reply(clinic, ev["first"][-1]["content"], replies, patient, confidence=confidence,
                               force=len(replies) == max_turns - 1)
        replies.append(reply)
        r = parse_reply(reply)
        if r.kind != "question" or len(replies) >= max_turns:
            return replies, patient
        patient.append(facts.get(r.question, DONT_KNOW))


def mask_numbers(text: str) -> str:
    return re.sub(r"\d+", "N", text)


def prompt_key(prompt: list[dict[str, str]]) -> str:
    """A prompt with every number masked (the "for N days" of a description), as one string."""
    return mask_numbers(json.dumps([[m["role"], m["content"]] for m in prompt]))


def overlap(train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]], with_rows: bool = False
            ) -> dict[str, Any]:
    """How many test prompts (numbers masked) are also train prompts: the diagnosis prompts
    (the whole consultation, then "Diagnosis: …") and every doctor turn's prompt. ``with_rows``:
    also the indices of the test diagnosis rows whose prompt is a train prompt (``rows``)."""
    seen = {prompt_key(r["prompt"]) for r in train_rows}
    in_train = [prompt_key(r["prompt"]) in seen for r in test_rows]  # each test row keyed once
    diag = [i for i, r in enumerate(test_rows) if parse_reply(r["response"]).kind == "diagnosis"]
    leaked = [i for i in diag if in_train[i]]
    n_turn = sum(in_train)
    report = {"test_diagnosis_prompts": len(diag), "in_train": len(leaked),
              "share_in_train": len(leaked) / len(diag) if diag else float("nan"),
              "test_turn_prompts": len(test_rows), "turns_in_train": n_turn,
              "turn_share_in_train": n_turn / len(test_rows) if test_rows else float("nan")}
    return dict(report, rows=leaked) if with_rows else report


def write_clinic_data(world: dict[str, Any], out_dir: str | Path, corpus_out: str | Path, max_turns: int
                      ) -> dict[str, Any]:
    """world.json, the raw {train,val,test}.jsonl (scripted consultations in the MTMedDialog
    schema), overlap.json (test prompts seen in training, numbers masked) and the base
    model's pretraining corpus. The scripted doctor consults within ``max_turns`` doctor
    turns (``med.eval.max_turns``, the evaluation's limit), the last of them forced; the
    splits are disjoint by consultation (:func:`clinic.generate_cases`)."""
    out = Path(out_dir)
    clinic = clinic_mod.build_clinic(world)

    def key(case: dict[str, Any]) -> str:
        ev = clinic_case(clinic, case)
        replies, patient = scripted_consultation(clinic, ev, confidence=world["confidence"], max_turns=max_turns)
        # the diagnosis prompt: the whole consultation (the scripted doctor is deterministic)
        return prompt_key(history_messages(ev["first"], replies[:-1], patient, force=len(replies) == max_turns,
                                           budget=max_turns))

    cases = clinic_mod.generate_cases(clinic, world, key)
    counts: dict[str, Any] = {}
    split_rows = {}
    for split in ("train", "val", "test"):
        rows = []
        for case in (c for c in cases if c["split"] == split):
            ev = clinic_case(clinic, case)
            replies, patient = scripted_consultation(clinic, ev, confidence=world["confidence"], max_turns=max_turns)
            rm = {"ground_truth": dict(ev["truth"]), "patient_information": ev["patient_information"]}
            rows += consultation_rows(ev["first"], replies, patient, rm,
                                      {"split": split, "case": case["index"], "category": case["category"]},
                                      max_turns)
        for i, row in enumerate(rows):
            row["extra_info"]["index"] = i
        write_jsonl(out / f"{split}.jsonl", rows)
        counts[split] = len(rows)
        split_rows[split] = rows
    report = {"test": overlap(split_rows["train"], split_rows["test"]),
              "val": overlap(split_rows["train"], split_rows["val"]),
              "redrawn": {s: sum(c["redrawn"] for c in cases if c["split"] == s) for s in clinic_mod.SPLITS}}
    write_json(out / "overlap.json", report)
    write_json(out / "world.json", {**clinic, "cases": cases})
    docs = clinic_mod.corpus_texts(clinic, world["corpus_repeats"], world["seed"])
    write_jsonl(corpus_out, [{"text": d} for d in docs])
    counts["overlap"] = report["test"]
    return counts


# ------------------------------------------------------------------ validation
#: how many line numbers an error about several rows names
SHOWN_LINES = 5


def _strings(v: Any, null_ok: bool = False) -> bool:
    return ((null_ok and v is None) or isinstance(v, str)
            or (isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)))


def _lines(lines: list[int]) -> str:
    """The text "lines 3, 7 and 9", or the first :data:`SHOWN_LINES` lines and how many more."""
    shown = ", ".join(map(str, lines[:SHOWN_LINES]))
    more = len(lines) - SHOWN_LINES
    return f"line{'s' if len(lines) > 1 else ''} {shown}" + (f" and {more} more" if more > 0 else "")


def check_row(path: Path, n: int, row: dict[str, Any], need_patient: bool) -> None:
    """Raise a DataError (file, row, field) for a row that is not in the MTMedDialog schema
    (the response's protocol is checked over the whole file by :func:`load_raw`).

    A ``patient_response`` may be null: the record holds the question but not its answer (the
    reference's own files have such entries, the last of a dialogue the patient left), so the
    entry records nothing (:func:`patient.recorded_pairs`)."""
    check_prompt_response(path, n, row, user="the patient's (role user)")
    extra = row.get("extra_info")
    if extra is not None and not isinstance(extra, dict):
        raise DataError(path, n, "extra_info", f"must be an object, got {type(extra).__name__}")
    rm = row.get("reward_model")
    if not isinstance(rm, dict):
        raise DataError(path, n, "reward_model", f"must be an object, got {type(rm).__name__}")
    gt = rm.get("ground_truth")
    if not isinstance(gt, dict):
        raise DataError(path, n, "reward_model.ground_truth", "must be {diagnosis, recommendation}")
    for key in ("diagnosis", "recommendation"):
        if not isinstance(gt.get(key), str) or not gt[key].strip():
            raise DataError(path, n, f"reward_model.ground_truth.{key}", "must be a non-empty string")
    info = rm.get("patient_information")
    if info is None and not need_patient:
        return
    if not isinstance(info, list) or not info:
        raise DataError(path, n, "reward_model.patient_information",
                        "must be a non-empty list of {doctor_question, patient_response} (the simulated "
                        "patient answers from it)")
    for j, entry in enumerate(info):
        if not isinstance(entry, dict):
            raise DataError(path, n, f"reward_model.patient_information[{j}]",
                            f"must be {{doctor_question, patient_response}}, got {type(entry).__name__}")
        if not _strings(entry.get("doctor_question")):
            raise DataError(path, n, f"reward_model.patient_information[{j}].doctor_question",
                            "must be a string or a non-empty list of strings")
        if "patient_response" not in entry or not _strings(entry["patient_response"], null_ok=True):
            raise DataError(path, n, f"reward_model.patient_information[{j}].patient_response",
                            "must be a string, a non-empty list of strings, or null (no recorded answer)")


def load_raw(path: str | Path, need_patient: bool = False, lines: list[int] | None = None) -> list[dict[str, Any]]:
    """Validated raw MTMedDialog rows of a jsonl or parquet file.

    A row outside the schema stops at once (:func:`check_row`). A response that is not a
    doctor turn (:func:`dialog.parse_reply`: exactly one ``<answer>`` holding "Question: …" or
    "Diagnosis: …\\nRecommendation: …") is refused too, since it would be a training target,
    but only once the whole file is read: one error counts every such row and names the
    first lines (the reference's own train file has 9 of 5,516). ``lines``, where given, gets
    each row's line (jsonl) or row number (parquet)."""
    path = Path(path)
    rows = []
    bad: list[int] = []
    for n, row in read_rows(path):
        if not isinstance(row, dict):
            raise DataError(path, n, None, f"must be an object, got {type(row).__name__}")
        check_row(path, n, row, need_patient)
        if parse_reply(row["response"]).kind == "invalid":
            bad.append(n)
        rows.append(row)
        if lines is not None:
            lines.append(n)
    if bad:
        raise DataError(path, bad[0], "response",
                        f"{len(bad)} of {len(rows)} rows ({_lines(bad)}) are not a doctor turn: each must hold "
                        "exactly one <answer> with 'Question: …' or 'Diagnosis: …\\nRecommendation: …' "
                        "(fix or remove these rows)")
    return rows


# ------------------------------------------------------------------ processing
def _first_user(prompt: list[dict[str, str]]) -> int:
    return next(i for i, m in enumerate(prompt) if m["role"] == "user")


def state_budget(prompt: list[dict[str, str]], budget: int | None) -> list[dict[str, str]]:
    """``prompt`` with the turn budget stated at the end of the patient's description (the first
    user turn), as every consultation states it (:func:`dialog.with_budget`)."""
    k = _first_user(prompt) + 1
    return with_budget(prompt[:k], budget) + [dict(m) for m in prompt[k:]]


def dialogue_turns(rows: list[dict[str, Any]]) -> list[int]:
    """Per raw row, the doctor turns of its dialogue: of the longest row whose history
    continues it (its prompt and response, message for message), the doctor turns of the
    prompt plus its own. A row no other row continues is its dialogue's last. (Two dialogues
    that share their first turns give those shared rows the longer one's length; MTMedDialog's
    descriptions are unique, so its dialogues share none.)"""
    turns = [_turn_keys(row["prompt"] + [{"role": "assistant", "content": row["response"]}]) for row in rows]
    longest: dict[str, int] = {}
    for keys in turns:
        for key in keys:
            longest[key] = max(longest.get(key, 0), len(keys))
    return [longest[keys[-1]] for keys in turns]


def sft_row(row: dict[str, Any], with_thinking: bool, budget: int | None = None) -> dict[str, Any]:
    """prompt, response and messages of one raw row; without thinking every think block leaves
    the target and the earlier doctor turns. ``budget``: the turn limit the description states
    (the clinic's rows state it already; your own rows get it, as the consultations do;
    :func:`write_sft_data` raises it to the length of a longer dialogue)."""
    def keep(text: str) -> str:
        return text if with_thinking else strip_thinking(text)

    raw = state_budget(row["prompt"], budget) if budget is not None else row["prompt"]
    prompt = [{"role": m["role"], "content": keep(m["content"]) if m["role"] == "assistant" else m["content"]}
              for m in raw]
    response = keep(row["response"])
    return {"prompt": prompt, "response": response,
            "messages": prompt + [{"role": "assistant", "content": response}]}


#: what ``med.sft_rows`` allows: one SFT row per doctor turn (the loss on that turn), or one per
#: consultation (the loss on every doctor turn; :func:`pack_consultations`)
SFT_ROWS = ("turn", "consultation")


def _key(messages: list[dict[str, str]]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def _turn_keys(messages: list[dict[str, str]]) -> list[str]:
    """The key of every prefix of ``messages`` that ends at a doctor turn (the last: the row's own)."""
    return [_key(messages[:i + 1]) for i, m in enumerate(messages) if m["role"] == "assistant"]


def pack_consultations(path: str | Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The processed per-turn rows of ``path`` as one row per consultation: the row of its last
    doctor turn, whose ``messages`` hold every earlier turn. Trained on every doctor turn (the
    SFT's ``loss_turns: all``), each turn is the target it is in its own row, with the same
    tokens before it, so the loss is the per-turn rows' with each consultation's context
    encoded once (about 2.5x fewer tokens on the embedded clinic).

    Packing must train exactly the rows' targets, each once: every doctor turn in a row's
    history has a row of its own ending there. A row that breaks this (a file of only some
    turns) stops with an error naming it; ``med.sft_rows: turn`` trains such files."""
    turns = [_turn_keys(r["messages"]) for r in rows]
    own = Counter(keys[-1] for keys in turns)
    inner = {k for keys in turns for k in keys[:-1]}  # histories continued by a longer row
    leaves = [n for n, keys in enumerate(turns) if keys[-1] not in inner]  # each consultation's last turn
    trained = Counter(k for n in leaves for k in turns[n])
    for n, keys in enumerate(turns):
        missing = next((i for i, k in enumerate(keys[:-1]) if k not in own), None)
        if missing is not None:
            at = [i for i, m in enumerate(rows[n]["messages"]) if m["role"] == "assistant"][missing]
            raise DataError(path, n + 1, "prompt", f"its doctor turn at message {at + 1} has no row of its own, so "
                                                   "one row per consultation would train it; set med.sft_rows: turn")
        if trained[keys[-1]] != own[keys[-1]]:
            raise DataError(path, n + 1, "prompt", f"packed, this doctor turn would train {trained[keys[-1]]} times "
                                                   f"(it has {own[keys[-1]]} rows); set med.sft_rows: turn")
    return [rows[n] for n in leaves]


def write_sft_data(train: str, val: str, with_thinking: bool, out_dir: str | Path, budget: int | None = None,
                   rows: str = "turn") -> dict[str, int]:
    """Validate both raw files, then write the processed {train,val}.parquet: one row per doctor
    turn, or (``rows: consultation``) per consultation (:func:`pack_consultations`).

    ``budget`` (``med.eval.max_turns``) is the turn limit each row's description states, but a
    dialogue with more doctor turns states its own length (:func:`dialogue_turns`), so no row
    asks on past the limit it states (the reference's train file at 10 turns: 200 rows of
    dialogues of 11 to 14 turns)."""
    if rows not in SFT_ROWS:
        raise ValueError(f"med.sft_rows = {rows!r}: expected one of {SFT_ROWS}")
    paths = {"train": train, "val": val}
    out = {}
    for split, path in paths.items():  # everything is checked before anything is written
        raw = load_raw(path)
        budgets = [None if budget is None else max(budget, n) for n in dialogue_turns(raw)]
        done = [sft_row(r, with_thinking, b) for r, b in zip(raw, budgets)]
        out[split] = pack_consultations(path, done) if rows == "consultation" else done
    for split, done in out.items():
        write_parquet(Path(out_dir) / f"{split}.parquet", done)
    return {k: len(v) for k, v in out.items()}


def _description(prompt: list[dict[str, str]]) -> list[dict[str, str]]:
    """The description without its budget line: a consultation states its own budget."""
    return with_budget([{"role": m["role"], "content": m["content"]} for m in prompt[: _first_user(prompt) + 1]],
                       None)


def _case_key(row: dict[str, Any]) -> tuple[str, str]:
    """Which dialogue a row belongs to: the clinic numbers its cases (``extra_info.case``);
    MTMedDialog rows of one dialogue share description and truth."""
    extra = row.get("extra_info") or {}
    if extra.get("case") is not None:
        return ("case", str(extra["case"]))
    return (json.dumps(_description(row["prompt"])), row["reward_model"]["ground_truth"]["diagnosis"])


def cases_from_rows(rows: list[dict[str, Any]], source: str | Path | None = None,
                    lines: list[int] | None = None) -> list[dict[str, Any]]:
    """The distinct dialogues of the test rows, in order of first appearance. A row's
    ``extra_info.case`` (where not null) names its case; rows that name one case with another
    description or truth are refused (``source`` and ``lines`` name the row)."""
    cases: dict[tuple[str, str], dict[str, Any]] = {}
    first_line: dict[tuple[str, str], int | None] = {}
    for i, row in enumerate(rows):
        first = _description(row["prompt"])
        truth = row["reward_model"]["ground_truth"]
        extra = row.get("extra_info") or {}
        named = extra.get("case") is not None
        key = _case_key(row)
        line = lines[i] if lines is not None else i + 1
        if named and key in cases and (cases[key]["first"] != first or cases[key]["truth"]["diagnosis"] !=
                                       truth["diagnosis"] or cases[key]["truth"]["recommendation"] !=
                                       truth["recommendation"]):
            raise DataError(source or "rows", line, "extra_info.case",
                            f"case {extra['case']!r} has another description or ground truth than on "
                            f"{'line' if lines is not None else 'row'} {first_line[key]}: one case id per dialogue")
        if key not in cases:
            first_line[key] = line
            cases[key] = {"id": str(len(cases)), "category": str(extra.get("category") or "all"),
                          "exact": row.get("data_source") == SYNTHETIC_SOURCE, "first": first,
                          "truth": {"diagnosis": truth["diagnosis"], "recommendation": truth["recommendation"]},
                          "patient_information": row["reward_model"]["patient_information"]}
    return list(cases.values())


def write_cases(rows: str, out: str | Path, *, training: dict[str, str] | None = None, policy: str = "refuse",
                overlap_out: str | Path | None = None) -> int:
    """The distinct dialogues of a raw file (the test file: the held-out cases; train and val:
    the RL cases) as cases.

    ``training`` (the held-out cases: ``{"train": path, "val": path}``): a test consultation whose
    diagnosis prompt (the whole dialogue, numbers masked: :func:`overlap`) is a prompt of those
    files is refused (``policy`` "refuse": a DataError naming the test file, the line of the first
    and the counts, before anything is written), its dialogue dropped from the cases ("drop") or
    kept ("allow"); ``overlap_out`` gets the counts (JSON)."""
    check_overlap_policy("med.test_overlap", policy)
    lines: list[int] = []
    test_rows = load_raw(rows, need_patient=True, lines=lines)
    report: dict[str, Any] | None = None
    if training is not None:
        train_rows = [r for path in training.values() for r in load_raw(path)]
        report = overlap(train_rows, test_rows, with_rows=True)
        leaked = report.pop("rows")
        report.update(policy=policy, training=sorted(training.values()), lines=[lines[i] for i in leaked], dropped=0)
        if leaked and policy == "refuse":
            raise DataError(rows, lines[leaked[0]], "prompt",
                            f"{len(leaked)} of {report['test_diagnosis_prompts']} test consultations are consultations "
                            f"of the training files {report['training']} (the whole dialogue, numbers masked). Held "
                            "out means new: set med.test_overlap: drop (remove them from the held-out cases) or "
                            "allow (keep them, and the tables score consultations seen in training)")
        if leaked and policy == "drop":  # every row of a leaked consultation's dialogue
            gone = {_case_key(test_rows[i]) for i in leaked}
            keep = [i for i, r in enumerate(test_rows) if _case_key(r) not in gone]
            report["dropped"] = len(gone)
            if not keep:
                raise DataError(rows, None, None, "med.test_overlap: drop leaves no held-out consultation")
            test_rows, lines = [test_rows[i] for i in keep], [lines[i] for i in keep]
    cases = cases_from_rows(test_rows, rows, lines)
    write_jsonl(out, cases)
    if overlap_out is not None and report is not None:
        write_json(overlap_out, report)
    return len(cases)


def corpus_from_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The tiny base's corpus from your own train rows: each dialogue once (its longest row, in
    the chat format, think blocks kept)."""
    from ...text import chat_text

    longest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (json.dumps(row["prompt"][:2]), row["reward_model"]["ground_truth"]["diagnosis"])
        if key not in longest or len(row["prompt"]) > len(longest[key]["prompt"]):
            longest[key] = row
    return [chat_text(r["prompt"] + [{"role": "assistant", "content": r["response"]}]) for r in longest.values()]


def read_cases(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
