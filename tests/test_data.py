"""The synthetic world, SFT/RL processing and bad-input errors."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sft2rl.io import DataError, atomic_dir, atomic_file, read_jsonl, write_jsonl
from sft2rl.rows import strip_thinking
from sft2rl.tasks.qa.data import process_rl, process_sft
from sft2rl.tasks.qa.reward import group_aware_details
from sft2rl.tasks.qa.world import build_world

from conftest import REPO


@pytest.fixture(scope="module")
def world_cfg():
    return yaml.safe_load((REPO / "config.yaml").read_text())["world"]


@pytest.fixture(scope="module")
def world(world_cfg):
    return build_world(world_cfg)


def test_world_is_deterministic(world_cfg, world):
    again = build_world(copy.deepcopy(world_cfg))
    assert again["rl_rows"] == world["rl_rows"] and again["corpus"] == world["corpus"]
    other = build_world(dict(world_cfg, seed=world_cfg["seed"] + 1))
    assert other["rl_rows"] != world["rl_rows"]


BLOCK = r"<think>\n.+\n</think>\n\n<proactive>\n.+\n</proactive>\n\n.+"
PLAIN = r"<think>\n.+\n</think>\n\n(?!<proactive>).+"


def test_world_raw_schemas(world):
    assert world["sft_rows"] == world["sft_rows_by_style"]["hedge_only"]  # the configured style
    for row in world["sft_rows"]:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]
        reply = row["messages"][2]["content"]
        # hedge_only: a proactive block exactly where the question is unknowable
        assert re.fullmatch(BLOCK if not row["knowable"] else PLAIN, reply, re.S), reply
        assert isinstance(row["id"], int) and row["sub_category"] == "simpleQA"
    for hedge, block in zip(world["sft_rows"], world["sft_rows_by_style"]["always_block"]):
        assert hedge["id"] == block["id"] and hedge["messages"][:2] == block["messages"][:2]
        assert re.fullmatch(BLOCK, block["messages"][2]["content"], re.S)  # the reference data's shape
        if not hedge["knowable"]:
            assert hedge == block
    for row in world["rl_rows"]:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][1]["content"] == row["answer"]["value"]
        assert isinstance(row["answer"]["knowable"], bool)
    counts = world["meta"]["counts"]
    assert counts["rl_knowable"] > 0 and counts["rl_unknowable"] > 0


def test_default_test_split_is_large_enough(world, tmp_path):
    """The default config holds out >= 200 questions, >= 80 knowable and >= 80 unknowable."""
    from sft2rl.tasks.qa.data import process_rl
    from sft2rl.io import read_parquet_rows, write_jsonl

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    write_jsonl(tmp_path / "rl.jsonl", world["rl_rows"])
    process_rl(tmp_path / "rl.jsonl", tmp_path / "train.parquet", tmp_path / "test.parquet",
               system_prompt=cfg["system_prompt"], data_source="q", train_fraction=cfg["data"]["train_fraction"],
               seed=cfg["data"]["split_seed"])
    test = read_parquet_rows(tmp_path / "test.parquet")
    known = sum(r["extra_info"]["knowable"] for r in test)
    assert len(test) >= 200 and known >= 80 and len(test) - known >= 80, (len(test), known)


def test_unknown_style_is_refused(world_cfg):
    with pytest.raises(ValueError, match="sft_style"):
        build_world(dict(world_cfg, sft_style="sometimes"))


def test_unknown_entities_never_in_corpus(world):
    corpus = "\n".join(d["text"] for d in world["corpus"])
    for name in world["meta"]["unknown_entities"]:
        assert name not in corpus
    unknown_truths = [r["answer"]["value"] for r in world["rl_rows"] if not r["answer"]["knowable"]]
    assert not any(t in corpus for t in unknown_truths)
    # every knowable fact's answer sentence is in the corpus as an assistant turn, asked in other
    # words: the world's own question never is
    from sft2rl.tasks.qa.world import CORPUS_QUESTIONS, RELATIONS

    for r in world["rl_rows"]:
        kind = r["answer"]["kind"]
        if r["answer"]["knowable"] and kind in RELATIONS:
            entity = r["answer"]["entity"]
            sentence = RELATIONS[kind][1].format(e=entity, v=r["answer"]["value"])
            turn = f"{CORPUS_QUESTIONS[kind].format(e=entity)}<|im_end|>\n<|im_start|>assistant\n"
            assert any(f"{turn}{prefix}{sentence}<|im_end|>" in corpus
                       for prefix in ("", "I know this. ", "I know this. I am sure about this. "))
            assert f"{r['messages'][0]['content']}<|im_end|>" not in corpus


def test_sft_targets_score_as_intended(world):
    """The SFT answer of a knowable question is correct (plain under hedge_only, with a confident
    block under always_block); an unknowable one is proactive and wrong in both styles."""
    for style, rows in world["sft_rows_by_style"].items():
        for row in rows:
            reply = row["messages"][2]["content"]
            d = group_aware_details([reply], "x" if not row["knowable"] else _truth_of(row))[0]
            assert d.has_think
            assert d.has_proactive is (style == "always_block" or not row["knowable"]), (style, reply)
            if row["knowable"]:
                assert d.correct
            else:
                assert "not sure" in reply and "I do not know." in reply


def _truth_of(row):
    return row["messages"][2]["content"].rstrip(".").split()[-1]


def test_names_are_not_substrings_of_each_other(world):
    names = [e.lower() for e in world["meta"]["known_entities"] + world["meta"]["unknown_entities"]]
    for a in names:
        assert sum(a in b for b in names) == 1


@pytest.fixture()
def raw_files(tmp_path, world):
    sft = tmp_path / "sft.jsonl"
    rl = tmp_path / "rl.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in world["sft_rows"]))
    rl.write_text("".join(json.dumps(r) + "\n" for r in world["rl_rows"]))
    return sft, rl


def test_process_sft_sample_and_thinking(tmp_path, raw_files):
    sft, _ = raw_files
    out = [tmp_path / f for f in ("t.jsonl", "t.parquet", "v.parquet")]
    counts = process_sft(sft, *out, n=50, seed=42, val_size=20, with_thinking=True)
    assert counts == {"train": 50, "val": 20}
    train = pq.read_table(out[1]).to_pylist()
    again = tmp_path / "again.parquet"
    process_sft(sft, tmp_path / "a.jsonl", again, tmp_path / "av.parquet", n=50, seed=42, val_size=20,
                with_thinking=False)
    train2 = pq.read_table(again).to_pylist()
    assert [r["id"] for r in train] == [r["id"] for r in train2]  # same seed, same sample
    assert len({r["id"] for r in train}) == 50  # without replacement
    val_ids = {r["id"] for r in pq.read_table(out[2]).to_pylist()}
    assert not val_ids & {r["id"] for r in train}
    assert all("<think>" in r["messages"][-1]["content"] for r in train)
    assert all("<think>" not in r["messages"][-1]["content"] for r in train2)
    assert any("<proactive>" in r["messages"][-1]["content"] for r in train2)  # the hedges stay
    other = tmp_path / "o.parquet"
    process_sft(sft, tmp_path / "o.jsonl", other, tmp_path / "ov.parquet", n=50, seed=7, val_size=5,
                with_thinking=True)
    assert [r["id"] for r in pq.read_table(other).to_pylist()] != [r["id"] for r in train]


def test_sft_n_larger_than_file(tmp_path, raw_files):
    sft, _ = raw_files
    with pytest.raises(DataError, match=r"sft.n_samples = 100000 is larger than the file"):
        process_sft(sft, tmp_path / "a", tmp_path / "b", tmp_path / "c", n=100000, seed=1, val_size=1,
                    with_thinking=True)
    assert not (tmp_path / "a").exists()


def test_strip_thinking():
    assert strip_thinking("<think>\na\nb\n</think>\n\nX <THINK>y</THINK>Z") == "X Z"


def test_process_rl_schema_and_split(tmp_path, raw_files, world):
    _, rl = raw_files
    train_p, test_p = tmp_path / "train.parquet", tmp_path / "test.parquet"
    counts = process_rl(rl, train_p, test_p, system_prompt="SYS", data_source="ds", train_fraction=0.8, seed=42)
    n = len(world["rl_rows"])
    assert counts["train"] == round(n * 0.8) and counts["train"] + counts["test"] == n
    train, test = pq.read_table(train_p).to_pylist(), pq.read_table(test_p).to_pylist()
    row = train[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["prompt"][0] == {"role": "system", "content": "SYS"} and row["prompt"][1]["role"] == "user"
    assert row["reward_model"]["style"] == "rule" and row["reward_model"]["ground_truth"]
    assert {r["extra_info"]["split"] for r in train} == {"train"} and {r["extra_info"]["split"] for r in test} == {"test"}
    indices = [r["extra_info"]["index"] for r in train + test]
    assert sorted(indices) == list(range(n))
    assert len({r["extra_info"]["id"] for r in train + test}) == n
    by_id = {str(r["id"]): r for r in world["rl_rows"]}
    for r in test:
        raw = by_id[r["extra_info"]["id"]]
        assert r["reward_model"]["ground_truth"] == raw["messages"][1]["content"]
        assert r["extra_info"]["knowable"] == raw["answer"]["knowable"]


BAD_LINES = [
    ('{"id": 1, "messages": [', 1, r"malformed JSON"),
    ('{"id": 1, "messages": [{"role": "user", "content": "q"}]}', 1, r"field 'messages': no 'assistant' message"),
    ('{"id": 1, "messages": [{"role": "assistant", "content": "a"}]}', 1, r"field 'messages': no 'user' message"),
    ('{"id": 1, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}', 1,
     r"field 'messages\[assistant\].content': empty ground truth"),
    ('{"id": 1, "messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}', 1,
     r"field 'messages\[0\].content': must be a string, got int"),
    ('{"id": 1, "messages": "hello"}', 1, r"field 'messages': must be a non-empty list"),
    ('{"id": [1], "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', 1,
     r"field 'id': must be an integer or string"),
    ('[1, 2]', 1, r"expected a JSON object"),
    # a list as a role is unhashable: it stopped the set lookup with a raw TypeError
    ('{"id": 1, "messages": [{"role": ["user"], "content": "q"}, {"role": "assistant", "content": "a"}]}', 1,
     r"field 'messages\[0\].role': must be one of"),
    # a field copied into the rows: a non-string stopped pyarrow mid-write with a raw TypeError
    ('{"id": 1, "sub_category": 3, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     1, r"field 'sub_category': must be a string, got 3"),
    ('{"id": 1, "answer": {"kind": ["k"]}, "messages": [{"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "a"}]}', 1, r"field 'answer.kind': must be a string"),
    ('{"id": "0", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', 1,
     r"field 'id': duplicate id '0' \(first on line 1\)"),  # 0 and "0": one id in the rows
]


@pytest.mark.parametrize("line,lineno,pattern", BAD_LINES)
def test_bad_rl_input_names_file_line_field(tmp_path, line, lineno, pattern):
    good = '{"id": 0, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    raw = tmp_path / "rl.jsonl"
    raw.write_text(good + "\n" + line + "\n")
    out = tmp_path / "train.parquet"
    with pytest.raises(DataError, match=rf"^{re.escape(str(raw))}:{lineno + 1}: .*{pattern}"):
        process_rl(raw, out, tmp_path / "test.parquet", system_prompt="S", data_source="d", train_fraction=0.5, seed=0)
    assert not out.exists() and not (tmp_path / "test.parquet").exists()


def test_sft_ids_of_mixed_types_are_refused_before_anything_is_written(tmp_path):
    """A row without an id takes its line number: string ids beside it made a column pyarrow
    cannot write, after the jsonl was written (a raw TypeError). Now one DataError naming the
    line, and no output."""
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    raw = tmp_path / "sft.jsonl"
    raw.write_text("\n".join(json.dumps(dict(row, id=i) if i != 2 else row) for i in ("a", "b", 2, "d")) + "\n")
    outs = [tmp_path / "t.jsonl", tmp_path / "t.parquet", tmp_path / "v.parquet"]
    with pytest.raises(DataError, match=rf"^{re.escape(str(raw))}:3: field 'id': no id where line 1 has a string id"):
        process_sft(raw, *outs, n=2, seed=0, val_size=1, with_thinking=False)
    assert not any(p.exists() for p in outs)
    raw.write_text("\n".join(json.dumps(dict(row, id=i)) for i in ("a", "b", 3, "d")) + "\n")
    with pytest.raises(DataError, match=r":3: field 'id': an integer id where line 1 has a string id"):
        process_sft(raw, *outs, n=2, seed=0, val_size=1, with_thinking=False)
    # integer ids beside rows without one (their line numbers) make one integer column: kept
    raw.write_text("\n".join(json.dumps(dict(row, id=i) if i != 2 else row) for i in (10, 11, 2, 13)) + "\n")
    assert process_sft(raw, *outs, n=2, seed=0, val_size=1, with_thinking=False) == {"train": 2, "val": 1}


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_jsonl(empty)
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_duplicate_ids_rejected(tmp_path):
    good = '{"id": 0, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
    raw = tmp_path / "rl.jsonl"
    raw.write_text(good + "\n" + good + "\n")
    with pytest.raises(DataError, match=r":2: field 'id': duplicate id 0 \(first on line 1\)"):
        process_rl(raw, tmp_path / "a", tmp_path / "b", system_prompt="S", data_source="d", train_fraction=0.5, seed=0)


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    d = tmp_path / "model"
    d.mkdir()
    (d / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as tmp:
            (tmp / "new").write_text("new")
            raise RuntimeError("killed")
    assert [p.name for p in d.iterdir()] == ["old"]
    with atomic_dir(d) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in d.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_removes_what_a_killed_write_of_its_target_left(tmp_path):
    """A SIGKILL inside atomic_dir leaves its temporary directory (or the previous run's copy)
    beside the target, never read by anything; the next write of that target removes them, and
    nothing of another target."""
    import subprocess
    import sys

    target = tmp_path / "model"
    code = ("import os, signal, sys; sys.path.insert(0, sys.argv[2]); from sft2rl.io import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    (tmp / 'weights').write_bytes(b'x' * 1000); os.kill(os.getpid(), signal.SIGKILL)")
    src = str(Path(__file__).resolve().parents[1] / "src")
    assert subprocess.run([sys.executable, "-c", code, str(target), src]).returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".model.") and left[0].endswith(".tmp")
    (tmp_path / ".model.old-123").mkdir()
    other = [tmp_path / ".model.x.abcdefgh.tmp", tmp_path / ".model2.abcdefgh.tmp", tmp_path / "model.old-1"]
    for p in other:
        p.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", *(p.name for p in other)])


def test_atomic_outputs_get_the_permissions_of_a_plain_open(tmp_path):
    """Files and directories written through a temp name are readable by the group as usual
    (mkstemp/mkdtemp make them owner-only), following the umask."""
    import os

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "table.csv") as tmp:
            tmp.write_text("a\n")
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "config.json").write_text("{}")
        os.umask(0o077)
        with atomic_file(tmp_path / "private.csv") as tmp:
            tmp.write_text("a\n")
    finally:
        os.umask(old)
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "private.csv").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------ encodings and parquet raw inputs
GOOD = {"id": 0, "messages": [{"role": "user", "content": "Wie heißt die Hauptstadt?"},
                              {"role": "assistant", "content": "Zürich"}]}


def _line(i: int, **kw) -> bytes:
    return json.dumps({**GOOD, "id": i, **kw}, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("content,expect", [
    (b"\xef\xbb\xbf" + _line(0) + b"\n" + _line(1) + b"\n", None),              # UTF-8 BOM (Excel, Notepad)
    (_line(0) + b"\r\n" + _line(1) + b"\r\n", None),                            # CRLF
    (_line(0) + b"\n" + _line(1), None),                                        # no newline at the end
    (_line(0) + b"\n\r\n" + _line(1) + b"\n", None),                            # a blank CRLF line
    (_line(0) + b"\n" + _line(1).replace("Zürich".encode(), "Z\xfcrich".encode("latin-1")) + b"\n",
     r":2: not UTF-8: byte 0xfc at column \d+ \(a Latin-1"),
    (_line(0) + b"\n" + _line(1)[:10] + b"\x00" + _line(1)[10:] + b"\n", r":2: NUL byte at column 11"),
    ("\ufeff".encode("utf-16-le") + _line(0).decode().encode("utf-16-le"), r":1: the file is UTF-16"),
])
def test_raw_file_encodings(tmp_path, content, expect):
    raw = tmp_path / "rl.jsonl"
    raw.write_bytes(content)
    if expect is None:
        rows = read_jsonl(raw)
        assert [r["id"] for _, r in rows] == [0, 1]
        assert rows[1][1]["messages"][1]["content"] == "Zürich"
        process_rl(raw, tmp_path / "tr.parquet", tmp_path / "te.parquet", system_prompt="S", data_source="d",
                   train_fraction=0.5, seed=0, test_overlap_policy="allow")  # two rows, one question: bytes only
        return
    with pytest.raises(DataError, match=rf"^{re.escape(str(raw))}{expect}"):
        process_rl(raw, tmp_path / "tr.parquet", tmp_path / "te.parquet", system_prompt="S", data_source="d",
                   train_fraction=0.5, seed=0)
    assert not (tmp_path / "tr.parquet").exists()


def test_latin1_column_counts_characters(tmp_path):
    """The column of a bad byte counts characters (a multi-byte 'ß' before it is one column)."""
    raw = tmp_path / "x.jsonl"
    raw.write_bytes("{\"a\": \"ß".encode() + b"\xfc\"}\n")
    with pytest.raises(DataError, match=r":1: not UTF-8: byte 0xfc at column 9 "):
        read_jsonl(raw)


def test_parquet_raw_inputs_are_read_and_validated(tmp_path, raw_files):
    """data.raw_sft / data.raw_rl as parquet (chosen by extension): the same rows as the jsonl,
    the same processed output; a bad row names the file, the row and the field."""
    from sft2rl.io import write_parquet

    sft, rl = raw_files
    rows = {name: [r for _, r in read_jsonl(p)] for name, p in (("sft", sft), ("rl", rl))}
    for name, p in (("sft", sft), ("rl", rl)):
        write_parquet(tmp_path / f"{name}.parquet", rows[name])
    a = [tmp_path / f"j_{f}" for f in ("t.jsonl", "t.parquet", "v.parquet")]
    b = [tmp_path / f"p_{f}" for f in ("t.jsonl", "t.parquet", "v.parquet")]
    process_sft(sft, *a, n=20, seed=3, val_size=5, with_thinking=False)
    process_sft(tmp_path / "sft.parquet", *b, n=20, seed=3, val_size=5, with_thinking=False)
    assert pq.read_table(a[1]).to_pylist() == pq.read_table(b[1]).to_pylist()
    process_rl(rl, tmp_path / "j_tr.parquet", tmp_path / "j_te.parquet", system_prompt="S", data_source="d",
               train_fraction=0.5, seed=0)
    process_rl(tmp_path / "rl.parquet", tmp_path / "p_tr.parquet", tmp_path / "p_te.parquet", system_prompt="S",
               data_source="d", train_fraction=0.5, seed=0)
    assert pq.read_table(tmp_path / "j_tr.parquet").to_pylist() == pq.read_table(tmp_path / "p_tr.parquet").to_pylist()
    bad = copy.deepcopy(rows["rl"])
    bad[6]["messages"][0]["content"] = "   "
    write_parquet(tmp_path / "bad.parquet", bad)
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'bad.parquet'))}:7: field 'messages\[user\]"):
        process_rl(tmp_path / "bad.parquet", tmp_path / "x.parquet", tmp_path / "y.parquet", system_prompt="S",
                   data_source="d", train_fraction=0.5, seed=0)
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"fake.parquet: not a readable parquet file"):
        process_rl(tmp_path / "fake.parquet", tmp_path / "x.parquet", tmp_path / "y.parquet", system_prompt="S",
                   data_source="d", train_fraction=0.5, seed=0)
    assert not (tmp_path / "x.parquet").exists()


def test_a_test_question_asked_in_training_is_refused_dropped_or_kept(tmp_path):
    """data.test_overlap: a test question that is also an RL train question or a user turn of
    the SFT source (lower-cased, whitespace collapsed) stops the split naming file, line and
    field, before anything is written; drop removes it from the test split, allow keeps it;
    overlap.json counts it."""
    def rl_row(i, q):
        return json.dumps({"id": i, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "a"}]})

    raw = tmp_path / "rl.jsonl"
    # 20 questions, q0..q19; q3 repeated as row 20 (another id) and q5 also in the SFT source
    raw.write_text("".join(rl_row(i, f"What is q{i}?") + "\n" for i in range(20)) + rl_row(20, "what is  Q3?") + "\n")
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "What is q5?"},
                                            {"role": "assistant", "content": "a"}]}) + "\n")
    kw = dict(system_prompt="S", data_source="d", train_fraction=0.5, seed=0, sft=sft)
    out = {k: tmp_path / f"{k}.parquet" for k in ("train", "test")}
    # which of them land in the test split (the split is seeded)
    process_rl(raw, out["train"], out["test"], **kw, test_overlap_policy="allow", out_overlap=tmp_path / "o.json")
    test_q = [r["extra_info"]["question"] for r in pq.read_table(out["test"]).to_pylist()]
    train_q = [r["extra_info"]["question"] for r in pq.read_table(out["train"]).to_pylist()]
    key = lambda q: " ".join(q.lower().split())  # noqa: E731
    expect = [q for q in test_q if key(q) in {key(t) for t in train_q} or key(q) == key("What is q5?")]
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["overlapping"] == len(expect) >= 1 and report["policy"] == "allow" and report["dropped"] == 0
    assert report["test_rows"] == len(test_q) == 11  # 21 rows, round(10.5) = 10 in train
    for p in out.values():
        p.unlink()
    with pytest.raises(DataError, match=rf"^{re.escape(str(raw))}:\d+: field 'messages\[user\].content': "
                                        rf"{len(expect)} of 11 test questions are seen in training .*data.test_overlap"):
        process_rl(raw, out["train"], out["test"], **kw, out_overlap=tmp_path / "o2.json")
    assert not any(p.exists() for p in out.values()) and not (tmp_path / "o2.json").exists()
    counts = process_rl(raw, out["train"], out["test"], **kw, test_overlap_policy="drop")
    kept = [r["extra_info"]["question"] for r in pq.read_table(out["test"]).to_pylist()]
    assert counts["dropped"] == len(expect) and kept == [q for q in test_q if q not in expect]
    # no SFT source given and no repeated question: nothing to refuse
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(rl_row(i, f"What is q{i}?") + "\n" for i in range(20)))
    assert process_rl(clean, out["train"], out["test"], system_prompt="S", data_source="d", train_fraction=0.5,
                      seed=0)["test_overlap"] == 0


def _entity_rows_split(tmp_path: Path):
    """30 RL rows, three about each of ten entities ("Where is Land3 number 7?"), split once with
    nothing seen in training: the raw file, the split's keywords, its outputs, the test rows."""
    def rl_row(i, entity):
        return json.dumps({"id": i, "messages": [{"role": "user", "content": f"Where is {entity} number {i}?"},
                                                 {"role": "assistant", "content": "north"}],
                           "answer": {"entity": entity}})

    raw = tmp_path / "rl.jsonl"
    raw.write_text("".join(rl_row(3 * k + j, f"Land{k}") + "\n" for k in range(10) for j in range(3)))
    kw = dict(system_prompt="S", data_source="d", train_fraction=0.5, seed=0)
    out = {k: tmp_path / f"{k}.parquet" for k in ("train", "test")}
    process_rl(raw, out["train"], out["test"], **kw)
    return raw, kw, out, pq.read_table(out["test"]).to_pylist()


def test_a_test_entity_named_in_training_is_refused_dropped_or_kept(tmp_path):
    """Held out means new by entity too: a test question about an entity (answer.entity) that an
    SFT row names anywhere (any message, as a whole word, any case), or an RL train question or
    answer, is seen in training; the error names answer.entity, drop removes every question
    about it; a longer word ("Vamunia") does not name "Vamun"."""
    raw, kw, out, test = _entity_rows_split(tmp_path)  # no SFT source: nothing seen
    test_entities = sorted({r["extra_info"]["entity"] for r in test})
    named = test_entities[0]
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"messages": [{"role": "user", "content": "Tell me a story."},
                                            {"role": "assistant", "content": f"It began in {named.upper()}'s hills, "
                                             f"far from {test_entities[1]}ia."}]}) + "\n")
    with pytest.raises(DataError, match=rf":\d+: field 'answer.entity': 3 of {len(test)} test questions are seen in "
                                        rf"training \(0 asked in the RL train split, 0 in the SFT source .*; 3 about "
                                        rf"an entity training names: {named}\)"):
        process_rl(raw, out["train"], out["test"], **kw, sft=sft)
    counts = process_rl(raw, out["train"], out["test"], **kw, sft=sft, test_overlap_policy="drop",
                        out_overlap=tmp_path / "o.json")
    kept = pq.read_table(out["test"]).to_pylist()
    assert counts["dropped"] == 3 and [r["extra_info"]["entity"] for r in kept] == \
        [r["extra_info"]["entity"] for r in test if r["extra_info"]["entity"] != named]
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["entity_named"] == 3 and report["entities_named"] == [named] and report["dropped"] == 3


def test_a_test_question_in_the_pretraining_corpus_is_refused_dropped_or_kept(tmp_path):
    """Held out means new to pretraining too: a test question whose words stand in a run in a
    document of the tiny base's corpus (any case, punctuation aside, inside a longer document)
    is seen in training; the error names the corpus; drop removes it; the corpus may name a
    test entity (that is how a fact becomes knowable), and a question that only shares words
    with a document is not in it."""
    raw, kw, out, test = _entity_rows_split(tmp_path)
    leaked = test[4]["extra_info"]["question"]
    entity = test[0]["extra_info"]["entity"]
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"text": f"{entity} lies north. Where is {entity} number 999?"},  # names it only
                         {"text": f"Long ago... WHERE IS {leaked[9:-1].upper()} ! it said."}])
    with pytest.raises(DataError, match=rf"field 'messages\[user\].content': 1 of {len(test)} test questions are "
                                        rf"seen in training \(0 asked in the RL train split, 0 in the SFT source "
                                        rf"None, 1 in the pretraining corpus {re.escape(str(corpus))}; 0 about"):
        process_rl(raw, out["train"], out["test"], **kw, corpus=corpus)
    counts = process_rl(raw, out["train"], out["test"], **kw, corpus=corpus, test_overlap_policy="drop",
                        out_overlap=tmp_path / "o.json")
    kept = [r["extra_info"]["question"] for r in pq.read_table(out["test"]).to_pylist()]
    assert counts["dropped"] == 1 and kept == [r["extra_info"]["question"] for r in test if r["extra_info"]["question"] != leaked]
    assert json.loads((tmp_path / "o.json").read_text())["in_pretrain_corpus"] == 1
