"""Held out means new by content (QA task): on the default config's world and split, no test
country is named in an SFT row or an RL training prompt, no unknown test country and no test
context question is in the pretraining corpus; the known facts and the sums that make a
test question knowable are (by design)."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import yaml

from sft2rl.io import read_parquet_rows, write_jsonl
from sft2rl.tasks.qa.data import grouped_split, process_rl
from sft2rl.tasks.qa.world import build_world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default_split(tmp_path_factory):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    world = build_world(cfg["world"])
    d = tmp_path_factory.mktemp("heldout")
    write_jsonl(d / "rl.jsonl", world["rl_rows"])
    process_rl(d / "rl.jsonl", d / "train.parquet", d / "test.parquet", system_prompt=cfg["system_prompt"],
               data_source="x", train_fraction=cfg["data"]["train_fraction"], seed=cfg["data"]["split_seed"])
    return world, read_parquet_rows(d / "train.parquet"), read_parquet_rows(d / "test.parquet")


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text))


def test_no_test_country_in_training_rows(default_split):
    world, train, test = default_split
    test_countries = {r["extra_info"]["entity"] for r in test if r["extra_info"].get("entity")}
    assert len(test_countries) >= 40  # enough known and unknown countries to measure on
    sft_words = set().union(*(_words(m["content"]) for r in world["sft_rows"] for m in r["messages"]))
    train_words = set().union(*(_words(r["extra_info"]["question"]) for r in train))
    assert not test_countries & sft_words, "a test country is named in an SFT row"
    assert not test_countries & train_words, "a test country is named in an RL training prompt"
    # every unknowable test question is about such a country
    assert all(r["extra_info"].get("entity") for r in test if r["extra_info"]["knowable"] is False)


def test_corpus_holds_no_unknowable_test_item(default_split):
    world, _, test = default_split
    corpus_words = set().union(*(_words(d["text"]) for d in world["corpus"]))
    corpus_text = "\n".join(d["text"] for d in world["corpus"])
    unknown = {r["extra_info"]["entity"] for r in test if r["extra_info"]["knowable"] is False}
    assert unknown and not unknown & corpus_words
    context = [r["extra_info"]["question"] for r in test if r["extra_info"]["kind"] == "context"]
    assert len(context) >= 20 and not [q for q in context if q in corpus_text]
    # what makes the knowable country and sum questions knowable is in the corpus, on purpose
    known = [r for r in test if r["extra_info"]["knowable"] and r["extra_info"]["kind"] != "context"]
    assert known and all(r["reward_model"]["ground_truth"] in corpus_text for r in known)


def test_no_test_question_is_in_the_corpus(default_split):
    """Held out means new to pretraining: no test question, of any kind, stands in the corpus
    (the corpus asks its facts in other words); the facts themselves are there (above)."""
    from sft2rl.tasks.qa.data import phrases_in

    world, _, test = default_split
    questions = {r["extra_info"]["question"] for r in test}
    assert len(questions) == len(test) and not phrases_in([d["text"] for d in world["corpus"]], questions)
    # the check can find one: a corpus document that asks a test question
    asked = test[0]["extra_info"]["question"]
    assert phrases_in([world["corpus"][0]["text"] + " " + asked.lower()], questions) == {asked}


def test_grouped_split_keeps_groups_and_is_the_plain_shuffle_without_them():
    groups = ["a", "a", "a", None, "b", "b", None, None, "c", "c", "c", None]
    first, rest = grouped_split(groups, 6, seed=3)
    assert len(first) == 6 and sorted(first + rest) == list(range(12))
    for g in "abc":
        members = {i for i, x in enumerate(groups) if x == g}
        assert members <= set(first) or members <= set(rest)
    order = list(range(12))
    random.Random(3).shuffle(order)
    assert grouped_split([None] * 12, 5, seed=3) == (order[:5], order[5:])  # user data: as before
