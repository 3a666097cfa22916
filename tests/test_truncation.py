"""No silent truncation (issue 20, part 5): an SFT row longer than sft.max_length, the model's
positions or the tiny base's pretraining window stops the job before anything is written, with a
DataError naming the file, the row, its length and the limit; ``sft.overlong: drop`` leaves such
rows out, logged and counted. The tiny bases record their pretraining window."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from sft2rl.errors import DataError
from sft2rl.io import write_jsonl, write_parquet
from sft2rl.sft import check_lengths, encode_conversation, length_limit, pretrain_window, train_sft

from conftest import TINY_ARCH

CFG = dict(seed=0, epochs=1, lr=1e-2, lr_scheduler="constant", warmup_ratio=0.0, weight_decay=0.0, train_batch=4,
           micro_batch=2, max_length=256, grad_clip=1.0, gradient_checkpointing=False,
           lora=dict(r=4, alpha=8, dropout=0.0, target_modules="all-linear"), train_tokens=["<|im_end|>"])


def convo(question: str, answer: str = "The answer is 12.") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def lengths(base, rows):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    return [encode_conversation(tok, r["messages"], 10**6)["length"] for r in rows]


@pytest.fixture()
def data(tmp_path, tiny_world):
    """8 short train rows and 4 val rows of the world, as parquet."""
    rows = [{"messages": r["messages"]} for r in tiny_world["sft_rows"]]
    write_parquet(tmp_path / "train.parquet", rows[:8])
    write_parquet(tmp_path / "val.parquet", rows[8:12])
    return tmp_path, rows[:8], rows[8:12]


def nothing_written(run):
    return not run.exists() or not any(run.iterdir())


def test_row_over_max_length_stops_sft_before_anything_is_written(tiny_base, data):
    d, train, val = data
    short = max(lengths(tiny_base, train + val))
    long_row = convo("What is 3 plus 9? " * 20)
    (n,) = lengths(tiny_base, [long_row])
    limit = short + 5
    assert n <= TINY_ARCH["max_position_embeddings"]
    assert n > limit
    write_parquet(d / "train.parquet", train[:4] + [long_row] + train[4:])  # row 5 (1-based) of 9
    run = d / "run"
    with pytest.raises(DataError) as info:
        train_sft(str(tiny_base), str(d / "train.parquet"), str(d / "val.parquet"), str(run),
                  dict(CFG, max_length=limit))
    msg = str(info.value)
    assert msg.startswith(f"{d / 'train.parquet'}:5: field 'messages': row 5 is {n} tokens, longer than "
                          f"sft.max_length = {limit}"), msg
    assert "1 of 9 rows are over the limit" in msg and "overlong: drop" in msg and "\n" not in msg
    assert nothing_written(run)  # no checkpoint, no metrics.json, no resume state
    # the same row under the limit trains (the check is about the length, nothing else)
    metrics = train_sft(str(tiny_base), str(d / "train.parquet"), str(d / "val.parquet"), str(run),
                        dict(CFG, max_length=n))
    assert metrics["train_rows"] == 9 and metrics["overlong_rows"] == {"train": 0, "val": 0}
    assert metrics["length_limit"] == n and metrics["longest_row"] == n


def test_val_row_over_the_model_positions_stops_sft(tiny_base, data):
    d, train, val = data
    long_row = convo("What is 3 plus 9? " * 60)
    (n,) = lengths(tiny_base, [long_row])
    positions = TINY_ARCH["max_position_embeddings"]
    assert n > positions
    write_parquet(d / "val.parquet", [long_row] + val)
    run = d / "run"
    with pytest.raises(DataError, match=rf"val.parquet:1: field 'messages': row 1 is {n} tokens, longer than the "
                                        rf"model's positions \(max_position_embeddings = {positions} of "):
        train_sft(str(tiny_base), str(d / "train.parquet"), str(d / "val.parquet"), str(run),
                  dict(CFG, max_length=4096))  # max_length alone would let it through
    assert nothing_written(run)


def test_row_over_the_pretraining_window_stops_sft(tiny_base, data, tmp_path):
    d, train, val = data
    base = tmp_path / "base_with_window"
    shutil.copytree(tiny_base, base)
    lens = lengths(tiny_base, train)
    window = sorted(lens)[-2]  # the longest train row is over the window, the others fit
    (base / "pretrain_metrics.json").write_text(json.dumps({"final_loss": 1.0, "seq_len": window}))
    assert pretrain_window(str(base)) == window and pretrain_window(str(tiny_base)) is None
    run = d / "run"
    row = lens.index(max(lens)) + 1
    with pytest.raises(DataError, match=rf"train.parquet:{row}: field 'messages': row {row} is {max(lens)} tokens, "
                                        rf"longer than the base's pretraining window \(seq_len = {window} in "
                                        rf".*pretrain_metrics.json\)"):
        train_sft(str(base), str(d / "train.parquet"), str(d / "val.parquet"), str(run), CFG)
    assert nothing_written(run)


def test_overlong_drop_leaves_rows_out_logged_and_counted(tiny_base, data, caplog):
    d, train, val = data
    long_row = convo("What is 3 plus 9? " * 20)
    short = max(lengths(tiny_base, train + val))
    write_parquet(d / "train.parquet", train + [long_row, long_row])
    write_parquet(d / "val.parquet", [long_row] + val)
    run = d / "run"
    with caplog.at_level(logging.WARNING, logger="sft2rl"):
        metrics = train_sft(str(tiny_base), str(d / "train.parquet"), str(d / "val.parquet"), str(run),
                            dict(CFG, max_length=short, overlong="drop"))
    assert metrics["overlong_rows"] == {"train": 2, "val": 1} and metrics["train_rows"] == 8
    assert metrics["steps"] == 2  # 8 rows, batch 4: the dropped rows are not trained
    assert json.loads((run / "metrics.json").read_text())["overlong_rows"] == {"train": 2, "val": 1}
    assert json.loads((run / "run_log.json").read_text())["overlong_rows"] == {"train": 2, "val": 1}
    assert "2 of 10 rows are longer than sft.max_length" in caplog.text and "rows [9, 10]" in caplog.text
    assert "1 of 5 rows are longer than sft.max_length" in caplog.text


def test_length_limit_is_the_smallest_and_says_which():
    assert length_limit(512, 1024, 256, "b") == (256, "the base's pretraining window (seq_len = 256 in "
                                                      "b/pretrain_metrics.json)")
    assert length_limit(512, 256, None, "b")[0] == 256 and "max_position_embeddings = 256 of b" in \
        length_limit(512, 256, None, "b")[1]
    assert length_limit(128, 1024, 256, "b") == (128, "sft.max_length = 128")
    rows = [{"length": 10}, {"length": 30}]
    with pytest.raises(DataError, match="every row is longer"):
        check_lengths("f.parquet", rows, 5, "x", "drop")
    with pytest.raises(ValueError, match="'sft.overlong' = 'cut'"):
        check_lengths("f.parquet", rows, 50, "x", "cut")


def test_build_base_records_its_pretraining_window(tmp_path, tiny_world):
    from sft2rl.model import build_base

    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, tiny_world["corpus"][:200])
    arch = dict(TINY_ARCH, vocab_size=400)
    pre = dict(seed=0, steps=2, batch_size=2, seq_len=48, lr=1e-3, warmup_steps=0, weight_decay=0.0)
    build_base(str(corpus), str(tmp_path / "base"), arch, pre)
    assert pretrain_window(str(tmp_path / "base")) == 48


def test_verl_sft_refuses_an_over_long_row(tiny_base, data):
    """The verl backend: data.truncation = error, so verl's own SFT dataset refuses the row
    (verl 0.9.1 raises on the item) instead of cutting it."""
    pytest.importorskip("verl")
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from verl.trainer.sft_trainer import create_sft_dataset
    from verl.utils.config import omega_conf_to_dataclass

    from sft2rl import verl_launch

    d, train, val = data
    long_row = convo("What is 3 plus 9? " * 20)
    (n,) = lengths(tiny_base, [long_row])
    limit = max(lengths(tiny_base, train + val))
    write_parquet(d / "train.parquet", [long_row] + train)
    sft = dict(CFG, max_length=limit, train_batch=4, micro_batch=2)
    overrides = verl_launch.sft_overrides(base=str(tiny_base), train=str(d / "train.parquet"),
                                          val=str(d / "val.parquet"), run_dir=str(d / "run"), run_name="sft-x",
                                          sft=sft, seed=0, nnodes=1, gpus_per_node=1)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        cfg = compose(config_name="sft_trainer_engine", overrides=overrides)
    assert cfg.data.truncation == "error" and cfg.data.max_length == limit
    tokenizer = omega_conf_to_dataclass(cfg.model).tokenizer
    ds = create_sft_dataset(cfg.data.train_files, cfg.data, tokenizer, None)
    assert len(ds[1]["input_ids"]) <= limit  # a row that fits
    with pytest.raises(ValueError, match=rf"row 0: {n} tokens, more than data.max_length = {limit} \(rows are never cut\)"):
        ds[0]  # our dataset class (sft2rl.verl_sft_data), which verl's SFT trainer loads
