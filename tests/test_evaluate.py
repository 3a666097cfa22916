"""Evaluation metrics from per-question records (hand-computed)."""
from __future__ import annotations

import pytest

from sft2rl.tasks.qa.evaluate import _assign_difficulty, summarize_records


def rec(kind, knowable, correct, think, proactive, samples_proactive, reward, group_acc=0.0, index=0):
    return {"index": index, "kind": kind, "knowable": knowable, "greedy_correct": correct, "greedy_think": think,
            "greedy_format": think,  # well-formed: a closed <think> block and an answer (all answers here have one)
            "greedy_proactive": proactive, "sample_correct": [correct] * len(samples_proactive),
            "sample_format": [think and p for p in samples_proactive], "sample_proactive": samples_proactive,
            "reward": reward, "group_accuracy": group_acc}


def test_summary_splits_by_knowability_and_kind():
    records = [
        rec("capital", True, True, True, False, [False, True], 1.05),
        rec("capital", True, False, True, True, [True, True], 0.6),
        rec("arithmetic", True, True, False, False, [False, False], 1.0),
        rec("capital", False, False, True, True, [True, False], 0.6),
    ]
    _assign_difficulty(records, None)
    m = summarize_records(records)
    assert m["n_questions"] == 4 and m["n_knowable"] == 3 and m["n_unknowable"] == 1
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["accuracy_knowable"] == pytest.approx(2 / 3) and m["accuracy_unknowable"] == 0.0
    assert m["format_rate"] == pytest.approx(3 / 4)  # well-formed (<think> + answer): records 1, 2 and 4
    assert m["proactive_block_rate_knowable"] == pytest.approx(1 / 3) and m["proactive_block_rate_unknowable"] == 1.0
    assert m["false_hedge_rate"] == pytest.approx(1 / 3) and m["hedge_recall"] == 1.0  # the same, by their names
    assert m["sampled_proactive_block_rate_knowable"] == pytest.approx(3 / 6)
    assert m["sampled_proactive_block_rate_unknowable"] == pytest.approx(1 / 2)
    assert m["coverage"] == pytest.approx(2 / 4) and m["selective_accuracy"] == 1.0  # records 1 and 3 answer plainly
    assert m["mean_reward"] == pytest.approx((1.05 + 0.6 + 1.0 + 0.6) / 4)
    assert m["accuracy_knowable_capital"] == pytest.approx(0.5) and m["accuracy_knowable_arithmetic"] == 1.0
    assert m["accuracy_unknowable_capital"] == 0.0 and "accuracy_unknowable_arithmetic" not in m


def test_unlabeled_data_split_easy_hard_by_reference_group_accuracy(tmp_path):
    import json

    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"index": i, "group_accuracy": a}) + "\n" for i, a in [(0, 0.75), (1, 0.25)]))
    records = [rec("unknown", None, True, True, False, [], 1.0, index=0),
               rec("unknown", None, False, True, True, [], 0.5, index=1)]
    _assign_difficulty(records, str(ref))
    assert [r["difficulty"] for r in records] == ["easy", "hard"]
    m = summarize_records(records)
    assert m["proactive_block_rate_easy"] == 0.0 and m["proactive_block_rate_hard"] == 1.0
    # no knowability labels: the AUROC against "unknowable" is undefined, against wrongness it is not
    assert m["hedge_auroc"] is None and m["hedge_auroc_wrong"] == 1.0


def test_sampled_answers_draw_from_the_eval_nucleus(tmp_path, tiny_base, tiny_world):
    """``eval.top_p`` reaches the sampler: a nucleus too small to hold more than the top token
    samples the greedy answer every time, while the full distribution (top_p 1) does not."""
    import json

    import pandas as pd

    from sft2rl.io import read_jsonl, write_jsonl
    from sft2rl.tasks.qa.data import process_rl
    from sft2rl.tasks.qa.evaluate import evaluate_model

    write_jsonl(tmp_path / "rl.jsonl", tiny_world["rl_rows"])
    process_rl(tmp_path / "rl.jsonl", tmp_path / "train.parquet", tmp_path / "all.parquet", system_prompt="Answer.",
               data_source="world", train_fraction=0.5, seed=0)
    pd.read_parquet(tmp_path / "all.parquet").head(6).to_parquet(tmp_path / "test.parquet")
    reward = {"beta": 0.5, "format_bonus": 0.05, "min_proactive_length": 0, "match": "substring", "acc_over": "all"}
    same = {}
    for top_p in (1e-6, 1.0):
        out = tmp_path / f"p{top_p}"
        evaluate_model(str(tiny_base), str(tmp_path / "test.parquet"), str(out / "a.jsonl"), str(out / "m.json"),
                       reward=reward, max_new_tokens=8, batch_size=4, k_samples=4, temperature=1.0, seed=0,
                       top_p=top_p)
        recs = [r for _, r in read_jsonl(out / "a.jsonl")]
        same[top_p] = sum(s == r["greedy"] for r in recs for s in r["samples"])
        assert json.loads((out / "m.json").read_text())["top_p"] == top_p
    assert same[1e-6] == 6 * 4  # every sample is the greedy answer
    assert same[1.0] < 6 * 4    # the untrained model's full distribution draws other answers


def test_kind_only_policy_hand_computed():
    """The no-information baselines beside accuracy and reward: each kind's most frequent answer
    (ties: sorted first), and per kind the best-paying of three fixed replies, scored as a group
    of identical replies by the reward itself (beta 0.5, format bonus 0.05)."""
    from sft2rl.tasks.qa.baselines import kind_only_policy

    def q(index, kind, truth, knowable):
        return {"index": index, "kind": kind, "ground_truth": truth, "knowable": knowable, "greedy_correct": False,
                "greedy_think": True, "greedy_proactive": False, "sample_proactive": [], "sample_correct": [],
                "reward": 0.0}

    reward = {"beta": 0.5, "format_bonus": 0.05, "min_proactive_length": 0, "match": "substring", "acc_over": "all"}
    records = [q(0, "capital", "Paris", True), q(1, "capital", "Paris", True), q(2, "capital", "Rome", False),
               q(3, "sum", "7", True), q(4, "sum", "12", True)]
    kind_only_policy(records, reward, 8)
    # capital answers "Paris": plainly 1.05, 1.05, 0.05 (mean 0.717) beats a hedge with the
    # answer (0.1, 0.1, 0.6) and a hedge with "unknown" (0.6 each)
    assert [r["kind_only_correct"] for r in records] == [True, True, False, False, True]
    assert [r["kind_only_reward"] for r in records][:3] == pytest.approx([1.05, 1.05, 0.05])
    # sum answers "12" (a tie, "12" sorts first): plainly 0.05, 1.05 (mean 0.55) loses to a hedge
    # with "unknown": beta·(1 − 0) + 2·0.05 = 0.6 on each
    assert [r["kind_only_reward"] for r in records][3:] == pytest.approx([0.6, 0.6])
    _assign_difficulty(records, None)
    m = summarize_records(records)
    assert m["kind_only_accuracy"] == pytest.approx(3 / 5) and m["kind_only_accuracy_knowable"] == pytest.approx(3 / 4)
    assert m["kind_only_mean_reward"] == pytest.approx((1.05 + 1.05 + 0.05 + 0.6 + 0.6) / 5)
    # at beta 0.9 the hedge with "unknown" (1.0) beats answering "Paris" (0.717) too
    kind_only_policy(records, dict(reward, beta=0.9), 8)
    assert [r["kind_only_reward"] for r in records] == pytest.approx([1.0] * 5)
    # a minimum block length: the policy's block is lengthened to count, still 0.6 on the sums
    kind_only_policy(records, dict(reward, min_proactive_length=120), 8)
    assert [r["kind_only_reward"] for r in records][3:] == pytest.approx([0.6, 0.6])
    # without the fields (older records) the baselines are undefined, never 0
    for r in records:
        del r["kind_only_correct"], r["kind_only_reward"]
    m = summarize_records(records)
    assert m["kind_only_accuracy"] is None and m["kind_only_mean_reward"] is None and m["accuracy"] == 0.0
