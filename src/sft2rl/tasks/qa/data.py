"""Raw jsonl or parquet (chosen by extension) -> processed SFT and RL data (SPEC section A schemas).

SFT: a seeded sample of N conversations, written as jsonl and as parquet with a
``messages`` column (what verl's SFT trainer reads), plus validation rows drawn from the
rows not sampled. RL: verl's RL schema (``data_source``, ``prompt``, ``ability``,
``reward_model``, ``extra_info``) split into train and test.

Every malformed row stops processing with a DataError naming file, line and field,
before anything is written.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...io import DataError, iter_rows, read_rows, write_json, write_jsonl, write_parquet, write_parquet_records
from ...rows import ROLES, check_overlap_policy, load_corpus, strip_thinking


def _check_messages(path: Path, lineno: int, row: dict, need: tuple[str, ...]) -> list[dict[str, str]]:
    msgs = row.get("messages")
    if msgs is None:
        raise DataError(path, lineno, "messages", "missing")
    if not isinstance(msgs, list) or not msgs:
        raise DataError(path, lineno, "messages", f"must be a non-empty list, got {type(msgs).__name__}")
    for j, m in enumerate(msgs):
        field = f"messages[{j}]"
        if not isinstance(m, dict):
            raise DataError(path, lineno, field, f"must be an object, got {type(m).__name__}")
        if not isinstance(m.get("role"), str) or m["role"] not in ROLES:  # a list is unhashable
            raise DataError(path, lineno, f"{field}.role", f"must be one of {sorted(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), str):
            raise DataError(path, lineno, f"{field}.content",
                            f"must be a string, got {type(m.get('content')).__name__}")
    roles = [m["role"] for m in msgs]
    for role in need:
        if role not in roles:
            raise DataError(path, lineno, "messages", f"no '{role}' message")
    return msgs


def load_sft_rows(path: str | Path) -> list[dict[str, Any]]:
    """Validate the SFT source: each row a conversation with user and assistant turns."""
    path = Path(path)
    rows = []
    id_type: tuple[str, int] | None = None  # the first row's kind of id ("none", "int", "str") and its line
    for lineno, row in read_rows(path):
        msgs = _check_messages(path, lineno, row, ("user", "assistant"))
        for j, m in enumerate(msgs):
            if m["role"] == "assistant" and not m["content"].strip():
                raise DataError(path, lineno, f"messages[{j}].content", "empty assistant message")
        rid = row.get("id")
        if rid is not None and (not isinstance(rid, (int, str)) or isinstance(rid, bool)):
            raise DataError(path, lineno, "id", f"must be an integer or string, got {type(rid).__name__}")
        kind = "no id" if rid is None else "an integer id" if isinstance(rid, int) else "a string id"
        if id_type is None:
            id_type = (kind, lineno)
        elif (kind == "a string id") != (id_type[0] == "a string id"):
            # a row without id takes its line number: string ids beside integers make a column
            # of two types, which the parquet output cannot hold
            raise DataError(path, lineno, "id", f"{kind} where line {id_type[1]} has {id_type[0]}: give every row "
                            "a string id, or none a string id")
        rows.append({**row, "_line": lineno})
    return rows


def load_rl_rows(path: str | Path) -> list[dict[str, Any]]:
    """Validate the RL source: a user question and an assistant ground truth per row."""
    path = Path(path)
    rows = []
    seen: dict[str, int] = {}
    for lineno, row in iter_rows(path):
        msgs = _check_messages(path, lineno, row, ("user", "assistant"))
        if "id" not in row:
            raise DataError(path, lineno, "id", "missing")
        if not isinstance(row["id"], (int, str)) or isinstance(row["id"], bool):
            raise DataError(path, lineno, "id", f"must be an integer or string, got {type(row['id']).__name__}")
        key = str(row["id"])  # the id the rows carry (1 and "1" are one id)
        if key in seen:
            raise DataError(path, lineno, "id", f"duplicate id {row['id']!r} (first on line {seen[key]})")
        seen[key] = lineno
        question = next(m["content"] for m in msgs if m["role"] == "user")
        truth = next(m["content"] for m in msgs if m["role"] == "assistant")
        if not question.strip():
            raise DataError(path, lineno, "messages[user].content", "empty question")
        if not truth.strip():
            raise DataError(path, lineno, "messages[assistant].content", "empty ground truth")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, dict):
            raise DataError(path, lineno, "answer", f"must be an object, got {type(answer).__name__}")
        knowable = (answer or {}).get("knowable")
        if knowable is not None and not isinstance(knowable, bool):
            raise DataError(path, lineno, "answer.knowable", f"must be true or false, got {knowable!r}")
        entity = (answer or {}).get("entity")
        if entity is not None and (not isinstance(entity, str) or not entity.strip()):
            raise DataError(path, lineno, "answer.entity", f"must be a non-empty string, got {entity!r}")
        for field, value in (("answer.kind", (answer or {}).get("kind")), ("sub_category", row.get("sub_category"))):
            if value is not None and not isinstance(value, str):  # empty: the default ("qa", "unknown")
                raise DataError(path, lineno, field, f"must be a string, got {value!r}")
        rows.append({"id": row["id"], "question": question, "ground_truth": truth, "knowable": knowable,
                     "kind": (answer or {}).get("kind"), "entity": entity, "sub_category": row.get("sub_category"),
                     "_line": lineno})
    return rows


def sample_sft(rows: list[dict], n: int, seed: int, val_size: int, source: str | Path = "raw_sft") -> tuple[list, list]:
    """Seeded sample of ``n`` rows without replacement, and validation rows from the rest."""
    if n > len(rows):
        raise DataError(source, None, None, f"sft.n_samples = {n} is larger than the file ({len(rows)} rows)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    train_idx, rest = order[:n], order[n:]
    if not rest:
        raise DataError(source, None, None, f"no rows left for SFT validation after sampling {n} of {len(rows)}")
    return [rows[i] for i in train_idx], [rows[i] for i in rest[:val_size]]


def _sft_record(row: dict, with_thinking: bool) -> dict[str, Any]:
    msgs = [
        {"role": m["role"],
         "content": m["content"] if with_thinking or m["role"] != "assistant" else strip_thinking(m["content"])}
        for m in row["messages"]
    ]
    return {"messages": msgs, "id": row.get("id", row["_line"]), "source_line": row["_line"]}


def process_sft(raw: str | Path, out_train_jsonl: str | Path, out_train: str | Path, out_val: str | Path, *,
                n: int, seed: int, val_size: int, with_thinking: bool) -> dict[str, int]:
    rows = load_sft_rows(raw)
    train, val = sample_sft(rows, n, seed, val_size, raw)
    train = [_sft_record(r, with_thinking) for r in train]
    val = [_sft_record(r, with_thinking) for r in val]
    write_jsonl(out_train_jsonl, train)
    write_parquet(out_train, train)
    write_parquet(out_val, val)
    return {"train": len(train), "val": len(val)}


def grouped_split(groups: list[Any], n_first: int, seed: int | None = None) -> tuple[list[int], list[int]]:
    """Split row indices into a first part of at most ``n_first`` rows and the rest, keeping
    rows of one group together (``groups[i]``: row ``i``'s group key; ``None``: a group of its
    own). Groups are taken in a seeded shuffled order (``seed`` None: the given order); a
    group that no longer fits the first part goes to the rest, and later groups may still fill
    it, so with enough single rows the first part has exactly ``n_first`` rows. Without group
    keys this is the plain seeded shuffle split (the first ``n_first`` shuffled rows)."""
    order = list(range(len(groups)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    members: dict[Any, list[int]] = {}  # groups in the order of their first shuffled row
    for i in order:
        members.setdefault(("row", i) if groups[i] is None else ("group", groups[i]), []).append(i)
    first: list[int] = []
    rest: list[int] = []
    for rows in members.values():
        (first if len(first) + len(rows) <= n_first else rest).extend(rows)
    return first, rest


def rl_record(row: dict, index: int, split: str, system_prompt: str, data_source: str) -> dict[str, Any]:
    return {
        "data_source": data_source,
        "prompt": [{"role": "system", "content": system_prompt}, {"role": "user", "content": row["question"]}],
        "ability": row["sub_category"] or "qa",
        "reward_model": {"style": "rule", "ground_truth": row["ground_truth"]},
        "extra_info": {"split": split, "index": index, "id": str(row["id"]), "knowable": row["knowable"],
                       "kind": row["kind"] or "unknown", "question": row["question"],
                       **({"entity": row["entity"]} if row["entity"] is not None else {})},
    }


_WORD = re.compile(r"\w+")


def question_key(text: str) -> str:
    """A question as the overlap check compares it: lower-cased, whitespace collapsed."""
    return " ".join(text.lower().split())


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def phrases_in(texts: Iterable[str], phrases: Iterable[str]) -> set[str]:
    """The ``phrases`` (entities, questions) that ``texts`` hold: as a run of whole words,
    case-insensitive, punctuation aside ("Vamun's" names Vamun, "Vamunia" does not; "what is
    the capital of Vamun" holds "What is the capital of Vamun?"). One pass over each text per
    phrase length, so a large pretraining corpus is read once."""
    keys = {w: e for e in phrases if (w := _words(e))}
    lengths = sorted({len(k) for k in keys})
    found: set[str] = set()
    for text in texts:
        w = _words(text)
        for n in lengths:
            found.update(keys[k] for k in (w[j:j + n] for j in range(len(w) - n + 1)) if k in keys)
    return found


def overlap_with_training(rows: list[dict[str, Any]], train_idx: list[int], test_idx: list[int],
                          sft: str | Path | None, corpus: str | Path | None = None) -> dict[str, Any]:
    """The test questions seen in training: asked as an RL train question, or as a user turn of
    any conversation of the SFT source (``sft``; every row, whatever N SFT samples), compared by
    :func:`question_key`; or about an entity (``answer.entity``) that training names
    (:func:`phrases_in`: in an RL train question or its answer, or in any message of the
    SFT source); or held in a document of the base's pretraining corpus (``corpus``: the
    question's words in a run, :func:`phrases_in`). The corpus may name a test entity: a
    knowable question is knowable because its fact was pretrained. Returns the counts and the
    overlapping test row indices."""
    train_q = {question_key(rows[i]["question"]) for i in train_idx}
    sft_rows = [] if sft is None else load_sft_rows(sft)
    sft_q = {question_key(m["content"]) for r in sft_rows for m in r["messages"] if m["role"] == "user"}
    in_train = {i for i in test_idx if question_key(rows[i]["question"]) in train_q}
    in_sft = {i for i in test_idx if question_key(rows[i]["question"]) in sft_q}
    test_entities = {rows[i]["entity"] for i in test_idx if rows[i]["entity"] is not None}
    texts = [t for i in train_idx for t in (rows[i]["question"], rows[i]["ground_truth"])]
    texts += [m["content"] for r in sft_rows for m in r["messages"]]
    named = phrases_in(texts, test_entities)
    by_entity = {i for i in test_idx if rows[i]["entity"] in named}
    pretrained = set() if corpus is None else phrases_in(load_corpus(corpus), {rows[i]["question"] for i in test_idx})
    in_corpus = {i for i in test_idx if rows[i]["question"] in pretrained}
    asked = in_train | in_sft | in_corpus
    both = [i for i in test_idx if i in asked or i in by_entity]  # in test-split order
    return {"test_rows": len(test_idx), "in_rl_train": len(in_train), "in_sft_source": len(in_sft),
            "in_pretrain_corpus": len(in_corpus), "entity_named": len(by_entity),
            "entities_named": sorted(named)[:100], "overlapping": len(both), "rows": both, "asked": asked}


def process_rl(raw: str | Path, out_train: str | Path, out_test: str | Path, *, system_prompt: str,
               data_source: str, train_fraction: float, seed: int, sft: str | Path | None = None,
               test_overlap_policy: str = "refuse", out_overlap: str | Path | None = None,
               corpus: str | Path | None = None) -> dict[str, int]:
    """Split the RL rows into train and test (entity groups kept together) and write them.
    A test question also seen in training (:func:`overlap_with_training`; ``sft``: the SFT source,
    ``corpus``: the tiny base's pretraining corpus, None for a base pretrained elsewhere) is
    refused (``test_overlap_policy`` "refuse": a DataError naming the first one, before
    anything is written), dropped from the test split ("drop") or kept ("allow");
    ``out_overlap`` gets the counts (JSON)."""
    check_overlap_policy("data.test_overlap", test_overlap_policy)
    rows = load_rl_rows(raw)
    n_train = int(round(len(rows) * train_fraction))
    if not 0 < n_train < len(rows):
        raise DataError(raw, None, None,
                        f"data.train_fraction = {train_fraction} leaves an empty split for {len(rows)} rows")
    # questions about one entity (answer.entity) stay in one split: a test entity is new
    train_idx, test_idx = grouped_split([r["entity"] for r in rows], n_train, seed)
    if not train_idx or not test_idx:
        raise DataError(raw, None, "answer.entity", f"the entity groups leave an empty split for {len(rows)} rows")
    overlap = overlap_with_training(rows, train_idx, test_idx, sft, corpus)
    if overlap["overlapping"] and test_overlap_policy == "refuse":
        # the first question asked in training, else the first about an entity training names
        asked = [i for i in overlap["rows"] if i in overlap["asked"]]
        first = rows[(asked or overlap["rows"])[0]]
        raise DataError(raw, first["_line"], "messages[user].content" if asked else "answer.entity",
                        f"{overlap['overlapping']} of {overlap['test_rows']} test questions are seen in training "
                        f"({overlap['in_rl_train']} asked in the RL train split, {overlap['in_sft_source']} in the SFT "
                        f"source {sft}"
                        + ("" if corpus is None else f", {overlap['in_pretrain_corpus']} in the pretraining corpus {corpus}")
                        + f"; {overlap['entity_named']} about an entity training names: "
                        f"{', '.join(overlap['entities_named'][:5])}); the first: {first['question']!r}. Held out "
                        "means new: set data.test_overlap: drop (remove them from the test split) or allow (keep "
                        "them, and the tables score questions seen in training)")
    dropped = overlap["rows"] if test_overlap_policy == "drop" else []
    if dropped:
        gone = set(dropped)
        test_idx = [i for i in test_idx if i not in gone]
        if not test_idx:
            raise DataError(raw, None, None, f"data.test_overlap: drop leaves no test question of {len(rows)} rows")
    # records are built while they are written (a million rows stay Arrow, not Python dicts)
    n_tr = write_parquet_records(out_train, (rl_record(rows[i], k, "train", system_prompt, data_source)
                                             for k, i in enumerate(train_idx)))
    n_te = write_parquet_records(out_test, (rl_record(rows[i], len(train_idx) + k, "test", system_prompt,
                                                       data_source) for k, i in enumerate(test_idx)))
    if out_overlap is not None:
        write_json(out_overlap, {k: v for k, v in overlap.items() if k not in ("rows", "asked")} |
                   {"policy": test_overlap_policy, "dropped": len(dropped),
                    "lines": [rows[i]["_line"] for i in overlap["rows"]]})
    return {"train": n_tr, "test": n_te, "test_overlap": overlap["overlapping"], "dropped": len(dropped)}


def user_corpus(raw_sft: str | Path, rl_train: str | Path) -> list[str]:
    """The tiny base's pretraining corpus for your own data (``data.pretrain_corpus`` unset):
    every SFT conversation and every RL *train* question with its ground truth, in the chat
    format of the tiny model. The RL test split never enters it (its answers are what the
    evaluation scores)."""
    from ...io import read_parquet_rows
    from ...text import chat_text

    docs = [chat_text([{"role": m["role"], "content": m["content"]} for m in row["messages"]])
            for row in load_sft_rows(raw_sft)]
    for row in read_parquet_rows(rl_train):
        docs.append(chat_text([*row["prompt"], {"role": "assistant", "content": row["reward_model"]["ground_truth"]}]))
    return docs
