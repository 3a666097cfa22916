"""Selective-prediction metrics, AUROC ties, empty groups, bootstrap intervals: hand-computed."""
from __future__ import annotations

import numpy as np
import pytest

from sft2rl.stats import auroc, bootstrap_row, question_arrays, risk_coverage, summary_metrics


def rec(index, knowable, correct, block, samples_block, think=True, reward=0.0):
    return {"index": index, "knowable": knowable, "greedy_correct": correct, "greedy_think": think,
            "greedy_proactive": block, "sample_proactive": samples_block,
            "sample_format": [think and b for b in samples_block], "reward": reward}


# 3 knowable, 3 unknowable questions; 4 samples each
RECORDS = [
    rec(0, True, True, False, [False, False, False, False], reward=1.0),
    rec(1, True, False, False, [False, True, False, False], reward=0.0),
    rec(2, True, True, True, [True, True, False, False], reward=0.5),
    rec(3, False, False, True, [True, True, True, True], reward=0.5),
    rec(4, False, False, True, [True, True, False, False], reward=0.5),
    rec(5, False, True, False, [False, False, False, True], reward=1.0),
]


def test_selective_prediction_metrics_hand_computed():
    m = summary_metrics(RECORDS)
    assert m["proactive_block_rate"] == pytest.approx(3 / 6)
    assert m["coverage"] == pytest.approx(3 / 6)  # questions 0, 1, 5 answered plainly
    assert m["selective_accuracy"] == pytest.approx(2 / 3)  # 0 and 5 right, 1 wrong
    assert m["hedge_recall"] == pytest.approx(2 / 3)  # unknowable 3, 4 hedged, 5 not
    assert m["false_hedge_rate"] == pytest.approx(1 / 3)  # knowable 2 hedged
    assert m["sampled_hedge_recall"] == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert m["sampled_false_hedge_rate"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    assert m["accuracy"] == pytest.approx(3 / 6) and m["mean_reward"] == pytest.approx(3.5 / 6)
    # AUROC, score = sampled block rate: knowable (0, .25, .5) vs unknowable (1, .5, .25);
    # pairs (u, k) with u > k: 1>all (3), .5>0,.25 (2), .25>0 (1) = 6; ties .5=.5, .25=.25 count 1/2 -> 7/9
    assert m["hedge_auroc"] == pytest.approx(7 / 9)
    # against wrongness: wrong = 1, 3, 4 (scores .25, 1, .5) vs right = 0, 2, 5 (0, .5, .25)
    # .25>0 (1), 1>all (3), .5>0,.25 (2) = 6; ties .25=.25, .5=.5 -> 7/9
    assert m["hedge_auroc_wrong"] == pytest.approx(7 / 9)


def test_auroc_ties_and_degenerate_cases():
    assert auroc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1, 0, 1, 0])) == pytest.approx(0.5)  # all tied
    assert auroc(np.array([1.0, 0.0]), np.array([1, 0])) == 1.0
    assert auroc(np.array([0.0, 1.0]), np.array([1, 0])) == 0.0
    assert np.isnan(auroc(np.array([0.3, 0.7]), np.array([1, 1])))  # one class: undefined
    from sft2rl.stats import _batched_auroc

    scores = np.array([[0.0, 0.5, 0.5, 1.0], [0.2, 0.2, 0.2, 0.2]])
    labels = np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=float)
    assert _batched_auroc(scores, labels) == pytest.approx([auroc(scores[0], labels[0]), 0.5])


def test_empty_groups_are_none_not_zero():
    all_hedged = [rec(0, True, True, True, [True]), rec(1, True, False, True, [True])]
    m = summary_metrics(all_hedged)
    assert m["coverage"] == 0.0 and m["selective_accuracy"] is None  # no plain answer to score
    assert m["hedge_recall"] is None and m["hedge_auroc"] is None  # no unknowable question
    assert m["false_hedge_rate"] == 1.0


def test_risk_coverage_with_ties():
    cov, risk = risk_coverage(RECORDS)
    # scores: q0 0, q1 .25, q5 .25, q2 .5, q4 .5, q3 1 -> thresholds take ties together
    assert cov == pytest.approx([1 / 6, 3 / 6, 5 / 6, 1.0])
    # wrong: q1, q3, q4; cumulative: {0}: 0; {0,1,5}: 1/3; {0,1,5,2,4}: 2/5; all: 3/6
    assert risk == pytest.approx([0.0, 1 / 3, 2 / 5, 3 / 6])


def test_bootstrap_single_seed_and_paired_difference():
    a = question_arrays(RECORDS)
    row = bootstrap_row([a], ref=a, n_boot=500, seed=0)
    assert row["accuracy_mean"] == pytest.approx(0.5) and np.isnan(row["accuracy_std"])
    assert row["accuracy_ci_low"] < 0.5 < row["accuracy_ci_high"]
    assert 0.0 <= row["accuracy_ci_low"] and row["accuracy_ci_high"] <= 1.0
    # a model against itself: the paired difference is exactly 0 on every draw
    assert row["accuracy_diff"] == 0.0 and row["accuracy_diff_ci_low"] == row["accuracy_diff_ci_high"] == 0.0
    plain = bootstrap_row([a], n_boot=500, seed=0)
    assert not any("_diff" in k for k in plain) and plain["accuracy_ci_low"] == row["accuracy_ci_low"]
    again = bootstrap_row([a], ref=a, n_boot=500, seed=0)
    assert again["accuracy_ci_low"] == row["accuracy_ci_low"]  # seeded: the same interval


def test_bootstrap_seeds_and_constant_metrics():
    right = [rec(i, True, True, False, [False]) for i in range(10)]
    wrong = [rec(i, True, False, False, [False]) for i in range(10)]
    a, b = question_arrays(right), question_arrays(wrong)
    row = bootstrap_row([a, b], ref=b, n_boot=400, seed=1)
    assert row["accuracy_mean"] == 0.5 and row["accuracy_std"] == pytest.approx(np.std([1, 0], ddof=1))
    # questions never change the accuracy here; only the seed draw does: {0, .5, 1} -> interval [0, 1]
    assert row["accuracy_ci_low"] == 0.0 and row["accuracy_ci_high"] == 1.0
    assert row["accuracy_diff"] == 0.5
    # the paired difference to the reference moves with the seed draw too: {0, .5, 1} - 0 -> [0, 1]
    # (a difference of the draws with themselves would give [0, 0]; the first seed as reference [-1, 0])
    assert (row["accuracy_diff_ci_low"], row["accuracy_diff_ci_high"]) == (0.0, 1.0)
    one = bootstrap_row([a], ref=b, n_boot=400, seed=1)  # right on every question the reference misses
    assert one["accuracy_diff"] == 1.0 and (one["accuracy_diff_ci_low"], one["accuracy_diff_ci_high"]) == (1.0, 1.0)
    # a constant metric has a zero-width interval
    assert row["coverage_ci_low"] == row["coverage_ci_high"] == 1.0
    with pytest.raises(ValueError, match="same test questions"):
        bootstrap_row([a, question_arrays([rec(i + 1, True, True, False, [False]) for i in range(10)])])


def kinded(index, kind, knowable, block, samples_block, correct=True):
    return {**rec(index, knowable, correct, block, samples_block), "kind": kind}


# Country questions (both labels) and arithmetic ones (never unknowable): a model that hedges
# on every country question sees only the kind.
KIND_RECORDS = [
    kinded(0, "capital", True, True, [True, True]),
    kinded(1, "capital", False, True, [True, True]),
    kinded(2, "capital", False, True, [True, True]),
    kinded(3, "river", True, True, [True, True]),
    kinded(4, "river", False, True, [True, True]),
    kinded(5, "arithmetic", True, False, [False, False]),
    kinded(6, "arithmetic", True, False, [False, False]),
    kinded(7, "arithmetic", True, False, [False, False], correct=False),
]


def test_kind_only_baselines_hand_computed():
    m = summary_metrics(KIND_RECORDS)
    # over all kinds the kind-blind hedger looks informative: unknowable (1, 1, 1) vs knowable
    # (1, 1, 0, 0, 0): 3 pairs won of 15, the 6 ties half -> (9 + 3) / 15
    assert m["hedge_auroc_all"] == pytest.approx(12 / 15)
    # within the kinds holding both (capital, river) it says nothing
    assert m["hedge_auroc"] == pytest.approx(0.5)
    # the kind-only score (unknowable share: capital 2/3, river 1/2, arithmetic 0) ranks as well
    assert m["kind_only_hedge_auroc_all"] == pytest.approx(
        (3 * 3 + (2 * 1 + 1 * 0.5) + 1 * (0.5 + 0.5)) / 15)  # vs arithmetic; vs knowable capital, river
    assert m["kind_only_hedge_auroc"] == pytest.approx((2 * 0.5 + 2 * 1 + 1 * 0.5 + 1 * 0) / 6)
    # recall 1: the best kind-only policy hedges on capital and river: 2 of 5 knowable
    assert m["hedge_recall"] == 1.0 and m["false_hedge_rate"] == pytest.approx(2 / 5)
    assert m["kind_only_false_hedge_rate"] == pytest.approx(2 / 5)
    # wrongness: only question 7 is wrong; its kind's wrong share 1/3, the others 0
    assert m["kind_only_hedge_auroc_wrong"] == pytest.approx((4 * 1 + 2 * 0.5 + 1 * 1) / 7)


def test_kind_only_false_hedge_rate_interpolates_within_a_kind():
    # one kind: hedging a random share r of it gives false-hedge rate r at recall r
    m = summary_metrics(RECORDS)
    assert m["hedge_recall"] == pytest.approx(2 / 3)
    assert m["kind_only_false_hedge_rate"] == pytest.approx(2 / 3)
    assert m["false_hedge_rate"] == pytest.approx(1 / 3)  # the model beats it
    # two kinds of different unknowable share: capital first (2 of 3 unknowable), then river
    a = question_arrays(KIND_RECORDS)
    from sft2rl.stats import kind_only_false_hedge_rate

    idx = np.arange(8)[None, :].repeat(3, axis=0)
    got = kind_only_false_hedge_rate(a, idx, np.array([2 / 3, 5 / 6, 0.0]))
    # recall 2/3: both capital unknowables -> the capital kind at share 1 -> 1 knowable of 5;
    # 5/6: capital whole plus half of river (0.5 of its 1 unknowable, 0.5 of its knowable)
    assert got == pytest.approx([1 / 5, 1.5 / 5, 0.0])


def test_kind_only_false_hedge_rate_ignores_a_rounding_step_of_the_recall():
    """recall 7/25 times 25 unknowable questions is 7 plus a rounding step: the next kind, which
    holds no unknowable question in this resample, must not be hedged whole for it."""
    from sft2rl.stats import kind_only_false_hedge_rate

    recs, i = [], 0
    for kind, unknowable, knowable in (("a", 7, 1), ("b", 1, 1), ("c", 18, 82)):  # shares 7/8, 1/2, 0.18
        for is_known, n in ((False, unknowable), (True, knowable)):
            for _ in range(n):
                recs.append({"index": i, "kind": kind, "knowable": is_known, "greedy_correct": False,
                             "greedy_think": True, "greedy_proactive": False, "sample_proactive": [False],
                             "reward": 0.0})
                i += 1
    a = question_arrays(recs)
    keep = [j for j, r in enumerate(recs) if not (r["kind"] == "b" and r["knowable"] is False)]
    idx = np.array([keep + keep[-1:]])  # b's unknowable question left out, one c question twice
    assert (7 / 25) * 25 > 7  # the rounding step this guards against
    got = kind_only_false_hedge_rate(a, idx, np.array([7 / 25]))
    assert got == pytest.approx([1 / 85])  # kind a whole: its 1 knowable of 85, not b's as well


def test_masked_batched_auroc_equals_auroc_on_the_subset():
    from sft2rl.stats import _batched_auroc

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(5, 30)).astype(float)
    labels = rng.integers(0, 2, size=(5, 30)).astype(float)
    mask = rng.integers(0, 2, size=(5, 30)).astype(float)
    got = _batched_auroc(scores, labels, mask)
    want = [auroc(s[m > 0], y[m > 0]) for s, y, m in zip(scores, labels, mask)]
    assert got == pytest.approx(want)


# ------------------------------------------------------------------ interval levels and resampling
# A percentile bootstrap of the mean of n items with 0/1 values draws Binomial(n, p)/n exactly:
# its quantiles are scipy's binomial ones. With many draws every interval must sit within one
# item (1/n) of them at the level asked for, and every item must be drawable.
def _exact(n: int, ones: int, level: float) -> tuple[float, float]:
    from scipy.stats import binom

    alpha = (1 - level) / 2
    return binom.ppf(alpha, n, ones / n) / n, binom.ppf(1 - alpha, n, ones / n) / n


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_every_bootstrap_interval_has_the_level_asked_for(level):
    from sft2rl.stats import paired_difference
    from sft2rl.tasks.games.play import level_bootstrap

    n, ones = 40, 20
    values = [1.0] * ones + [0.0] * (n - ones)
    lo, hi = _exact(n, ones, level)
    # the paired difference (games and medical RL - SFT): rl - sft per item
    _, d_lo, d_hi = paired_difference({i: 0.0 for i in range(n)}, dict(enumerate(values)), samples=20000,
                                      level=level, seed=0)
    assert d_lo == pytest.approx(lo, abs=1 / n) and d_hi == pytest.approx(hi, abs=1 / n)
    # the games' success over levels (each level's k episodes together; here k = 2, both alike)
    records = [{"level": i, "won": bool(v)} for i, v in enumerate(values) for _ in range(2)]
    b_lo, b_hi = level_bootstrap(records, samples=20000, level=level, seed=0)
    assert b_lo == pytest.approx(lo, abs=1 / n) and b_hi == pytest.approx(hi, abs=1 / n)
    # the QA tables' intervals (accuracy over questions)
    recs = [rec(i, True, bool(v), False, [False]) for i, v in enumerate(values)]
    row = bootstrap_row([question_arrays(recs)], n_boot=20000, seed=0, level=level)
    assert row["accuracy_ci_low"] == pytest.approx(lo, abs=1 / n)
    assert row["accuracy_ci_high"] == pytest.approx(hi, abs=1 / n)


def test_the_last_item_is_drawn_and_a_level_s_episodes_are_averaged():
    """One success among 10 items, at the last place: the 90% bound is binom.ppf(0.95, 10, 0.1)
    / 10 = 0.3, not 0 (an index range that never draws the last item); a level won in one of
    its two episodes counts 0.5, not its first episode's outcome."""
    from sft2rl.stats import paired_difference
    from sft2rl.tasks.games.play import level_bootstrap

    values = [0.0] * 9 + [1.0]
    lo, hi = _exact(10, 1, 0.9)
    assert hi == pytest.approx(0.3)
    _, d_lo, d_hi = paired_difference({i: 0.0 for i in range(10)}, dict(enumerate(values)), samples=20000,
                                      level=0.9, seed=0)
    assert (d_lo, d_hi) == pytest.approx((lo, hi), abs=0.1)
    recs = [rec(i, True, bool(v), False, [False]) for i, v in enumerate(values)]
    row = bootstrap_row([question_arrays(recs)], n_boot=20000, seed=0, level=0.9)
    assert row["accuracy_ci_high"] == pytest.approx(hi, abs=0.1)
    half = [{"level": i, "won": w} for i in range(10) for w in (i % 2 == 0, i % 2 == 1)]
    assert level_bootstrap(half, samples=500, level=0.9, seed=0) == (0.5, 0.5)


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_wilson_interval_is_the_score_formula_at_the_level_asked_for(level):
    from scipy.stats import norm

    from sft2rl.stats import wilson

    k, n = 30, 100
    z, p = norm.ppf(1 - (1 - level) / 2), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(k, n, level) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_the_format_rate_counts_well_formed_answers_not_think_blocks():
    """``format_rate`` reads ``greedy_format`` (a closed think block and an answer), which an
    answer with a think block but no answer lacks; ``greedy_think`` is the fallback of records
    written before the field existed."""
    recs = [dict(rec(0, True, True, False, [False]), greedy_format=False),
            dict(rec(1, True, True, False, [False]), greedy_format=True)]
    assert summary_metrics(recs)["format_rate"] == pytest.approx(0.5)
    old = [{k: v for k, v in r.items() if k != "greedy_format"} for r in recs]
    assert summary_metrics(old)["format_rate"] == pytest.approx(1.0)
