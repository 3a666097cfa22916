"""Tests for ``sft2rl.tasks.qa.reward`` (group-aware proactive reward)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sft2rl.tasks.qa.reward import (
    ResponseDetails,
    formal_answer,
    group_aware_details,
    group_aware_rewards,
    has_proactive,
    has_think,
    is_correct,
    summarize,
    well_formed,
)

# Mixed group used by several tests (ground truth "42", defaults beta=0.5, bonus 0.05).
MIXED_GROUP = [
    "<think>6*7</think> The answer is 42.",  # plain, correct, think
    "The answer is 41.",  # plain, wrong, no tags
    "<think>ambiguous</think><proactive>Do you mean base 10?</proactive>",  # proactive, formal ""
    "<proactive>Assuming base 10:</proactive> 42",  # proactive, formal "42"
]


# --------------------------------------------------------------------------- helpers


def test_formal_answer_removes_blocks_and_collapses_whitespace() -> None:
    response = "  <think>a\nb</think>\n The   answer\t\nis <proactive>ok?</proactive> 42 \n"
    assert formal_answer(response) == "The answer is 42"


def test_formal_answer_deletes_blocks_without_separator() -> None:
    assert formal_answer("4<think>x</think>2") == "42"


def test_formal_answer_nested_and_interleaved_blocks() -> None:
    assert formal_answer("<think>draft <proactive>ask?</proactive></think> 42") == "42"
    assert formal_answer("<proactive>x <think>y</proactive> z</think> 42") == "42"


def test_has_think_and_has_proactive_helpers() -> None:
    assert has_think("<think></think>")
    assert not has_think("<think> never closed")
    assert not has_think("</think> closing before <think>")
    assert has_proactive("<proactive></proactive>")
    assert not has_proactive("<proactive></proactive>", min_length=1)
    # A proactive block inside a think block is still a proactive block.
    assert has_proactive("<think><proactive>q</proactive></think>")


def test_has_proactive_min_length_boundary() -> None:
    assert has_proactive("<proactive>  0123456789  </proactive>", min_length=10)
    assert not has_proactive("<proactive>  012345678  </proactive>", min_length=10)
    # Any qualifying block is enough.
    assert has_proactive("<proactive>a</proactive><proactive>0123456789</proactive>", min_length=10)


def test_has_proactive_rejects_negative_min_length() -> None:
    with pytest.raises(ValueError, match="min_length"):
        has_proactive("<proactive>x</proactive>", min_length=-1)


def test_is_correct_substring() -> None:
    assert is_correct("The answer is 42.", "42")
    assert is_correct("the capital is PARIS", "  Paris\n")
    assert not is_correct("The answer is 41.", "42")


# --------------------------------------------------------------- hand-computed groups


def test_all_correct_group() -> None:
    responses = ["<think>x</think> The answer is 42", "42", "<think></think>42"]
    # acc = 1; no proactive: r = c + fb = 1 + 0.05 (think) / 1 + 0 / 1 + 0.05 (empty think).
    assert group_aware_rewards(responses, "42") == pytest.approx([1.05, 1.0, 1.05])


def test_all_wrong_group() -> None:
    responses = ["41", "<think>hmm</think> 40"]
    # acc = 0; r = 0 + fb.
    assert group_aware_rewards(responses, "42") == pytest.approx([0.0, 0.05])


def test_all_wrong_group_with_proactive() -> None:
    responses = ["<proactive>Which base?</proactive>", "41"]
    # acc = 0 -> proactive: 0.5*(1-0) + 0.05 = 0.55; plain wrong: 0.
    assert group_aware_rewards(responses, "42") == pytest.approx([0.55, 0.0])
    # beta = 1: 1*(1-0) + 0.05 = 1.05.
    assert group_aware_rewards(responses, "42", beta=1.0) == pytest.approx([1.05, 0.0])
    # Negative beta is allowed: -0.5*(1-0) + 0.05 = -0.45.
    assert group_aware_rewards(responses, "42", beta=-0.5) == pytest.approx([-0.45, 0.0])


def test_mixed_group_with_proactive_responses() -> None:
    # c = [1, 0, 0, 1] -> acc = 2/4 = 0.5
    # r1 = c1 + fb1 = 1 + 0.05                    = 1.05
    # r2 = c2 + fb2 = 0 + 0                       = 0.0
    # r3 = 0.5*(1-0.5) + (0.05 + 0.05)            = 0.35
    # r4 = 0.5*(1-0.5) + 0.05                     = 0.30
    assert group_aware_rewards(MIXED_GROUP, "42") == pytest.approx([1.05, 0.0, 0.35, 0.30])
    details = group_aware_details(MIXED_GROUP, "42")
    assert [d.correct for d in details] == [True, False, False, True]
    assert [d.has_think for d in details] == [True, False, True, False]
    assert [d.has_proactive for d in details] == [False, False, True, True]
    assert [d.format_bonus for d in details] == pytest.approx([0.05, 0.0, 0.10, 0.05])
    assert [d.group_accuracy for d in details] == pytest.approx([0.5] * 4)
    assert [d.formal for d in details] == ["The answer is 42.", "The answer is 41.", "", "42"]


def test_mixed_group_with_custom_format_bonus() -> None:
    # Same c and acc as above, bonus 0: [1, 0, 0.25, 0.25]; bonus 0.1: [1.1, 0, 0.45, 0.35].
    assert group_aware_rewards(MIXED_GROUP, "42", format_bonus=0.0) == pytest.approx([1.0, 0.0, 0.25, 0.25])
    assert group_aware_rewards(MIXED_GROUP, "42", format_bonus=0.1) == pytest.approx([1.1, 0.0, 0.45, 0.35])


def test_details_are_frozen() -> None:
    detail = group_aware_details(["42"], "42")[0]
    assert isinstance(detail, ResponseDetails)
    with pytest.raises(AttributeError):
        detail.reward = 2.0  # type: ignore[misc]


def test_tags_in_any_case() -> None:
    response = "<THINK>hmm</Think><Proactive>Which base?</PROACTIVE> 42"
    detail = group_aware_details([response], "42")[0]
    assert detail.has_think and detail.has_proactive
    assert detail.formal == "42"
    # acc = 1 -> 0.5*(1-1) + 0.05 + 0.05 = 0.10
    assert detail.reward == pytest.approx(0.10)


def test_multi_line_blocks() -> None:
    response = "<think>\nline one\nline two says 42\n</think>\n\nThe answer\nis\t 41"
    detail = group_aware_details([response], "42")[0]
    assert detail.formal == "The answer is 41"
    assert detail.has_think and not detail.correct
    assert detail.reward == pytest.approx(0.05)


def test_several_blocks_keep_text_between_them() -> None:
    response = "<think>a</think>The<think>b</think> answer <proactive>q?</proactive>is <think>c</think>42"
    detail = group_aware_details([response], "42")[0]
    assert detail.formal == "The answer is 42"
    assert detail.has_think and detail.has_proactive and detail.correct
    # acc = 1 -> 0 + 0.05 + 0.05
    assert detail.reward == pytest.approx(0.10)


def test_unclosed_tags_are_not_blocks() -> None:
    responses = ["<think> The answer is 42", "<proactive> Which base? 41"]
    details = group_aware_details(responses, "42")
    assert [d.formal for d in details] == ["<think> The answer is 42", "<proactive> Which base? 41"]
    assert not any(d.has_think or d.has_proactive for d in details)
    # Both scored as plain responses without bonus: c = [1, 0].
    assert [d.reward for d in details] == pytest.approx([1.0, 0.0])


def test_empty_group() -> None:
    assert group_aware_rewards([], "42") == []
    assert group_aware_details([], "42") == []


def test_ground_truth_whitespace_and_case() -> None:
    assert group_aware_rewards(["The capital is PARIS."], "  Paris \n") == pytest.approx([1.0])


def test_ground_truth_only_inside_think_is_not_correct() -> None:
    assert group_aware_rewards(["<think>It is 42.</think> It is 41."], "42") == pytest.approx([0.05])


def test_ground_truth_only_inside_proactive_is_not_correct() -> None:
    details = group_aware_details(["<proactive>Is it 42?</proactive>"], "42")
    assert not details[0].correct


@pytest.mark.parametrize("ground_truth", ["", "   ", " \n\t "])
def test_empty_ground_truth_raises(ground_truth: str) -> None:
    with pytest.raises(ValueError, match="ground_truth"):
        group_aware_rewards(["42"], ground_truth)
    with pytest.raises(ValueError, match="ground_truth"):
        group_aware_rewards([], ground_truth)
    with pytest.raises(ValueError, match="ground_truth"):
        is_correct("42", ground_truth)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"match": "exact"}, "match"),
        ({"acc_over": "proactive"}, "acc_over"),
        ({"beta": math.nan}, "beta"),
        ({"beta": math.inf}, "beta"),
        ({"beta": "0.5"}, "beta"),
        ({"beta": 10**400}, "beta"),
        ({"min_proactive_length": -1}, "min_proactive_length"),
        ({"min_proactive_length": 2.5}, "min_proactive_length"),
        ({"format_bonus": -0.1}, "format_bonus"),
        ({"format_bonus": math.nan}, "format_bonus"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        group_aware_rewards(["42"], "42", **kwargs)
    with pytest.raises(ValueError, match=parameter):
        group_aware_details([], "42", **kwargs)


def test_bad_option_messages_list_allowed_values() -> None:
    with pytest.raises(ValueError, match="substring.*fuzzy"):
        group_aware_rewards(["42"], "42", match="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all.*non_proactive"):
        group_aware_rewards(["42"], "42", acc_over="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="match"):
        is_correct("42", "42", match="exact")  # type: ignore[arg-type]


def test_bad_types_raise() -> None:
    with pytest.raises(TypeError, match="responses"):
        group_aware_rewards("42", "42")
    with pytest.raises(TypeError, match="response"):
        group_aware_rewards([42], "42")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="ground_truth"):
        group_aware_rewards(["42"], 42)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- variants


def test_min_proactive_length_variant() -> None:
    responses = [
        "<proactive>Units?</proactive> 42",  # 6 chars: too short with min 10
        "<proactive>Do you want the answer in base 10?</proactive>",  # 33 chars
        "41",
    ]
    # min 10: r1 is plain and correct (formal "42" - short block still removed), no bonus.
    # c = [1, 0, 0], acc = 1/3; r2 = 0.5*(2/3) + 0.05; r3 = 0.
    details = group_aware_details(responses, "42", min_proactive_length=10)
    assert [d.has_proactive for d in details] == [False, True, False]
    assert details[0].formal == "42"
    assert [d.reward for d in details] == pytest.approx([1.0, 0.5 * (2 / 3) + 0.05, 0.0])
    # Default (min 0): both r1 and r2 are proactive, acc = 1/3 still.
    assert group_aware_rewards(responses, "42") == pytest.approx(
        [0.5 * (2 / 3) + 0.05, 0.5 * (2 / 3) + 0.05, 0.0]
    )


def test_min_proactive_length_short_block_with_think() -> None:
    # Too-short proactive block: only the think bonus remains, scored as plain wrong answer.
    details = group_aware_details(["<think>t</think><proactive>?</proactive> 41"], "42", min_proactive_length=10)
    assert details[0].formal == "41"
    assert not details[0].has_proactive and details[0].has_think
    assert details[0].reward == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("formal", "ground_truth"),
    [
        ("New-York City", "new york"),  # punctuation normalised away
        ("Tchaikovski", "Tchaikovsky"),  # SequenceMatcher ratio 20/22 >= 0.8
        ("The total is 1,000 dollars", "1000"),  # thousands separator
        ("It is 3.", "3.0"),  # 3.0 == 3
        ("1000 apples", "1,000"),  # ground truth with separator
        ("t is -2 K", "-2.0"),  # signed number
        ("parxs", "paris"),  # ratio exactly 0.8: the bound is inclusive
        ("new_york_city", "new york"),  # the underscore is punctuation too
    ],
)
def test_fuzzy_match_accepts(formal: str, ground_truth: str) -> None:
    assert not is_correct(formal, ground_truth)
    assert is_correct(formal, ground_truth, match="fuzzy")


@pytest.mark.parametrize(
    ("formal", "ground_truth"),
    [
        ("The answer is 8", "7"),
        ("london", "paris"),
        ("yes", "?!"),  # punctuation-only ground truth must not match everything
        ("abc1000", "1000.5"),  # number glued to a word is not extracted
        ("madrd x", "madrid"),  # ratio 10/13 = 0.77 < 0.8
        ("It is 1001", "1000"),  # a number 0.1% off is another number
        ("Seat a5", "5.0"),  # the 5 continues a word
        ("it is 1,0001", "1000"),  # "1,000" followed by a digit is not 1000
    ],
)
def test_fuzzy_match_rejects(formal: str, ground_truth: str) -> None:
    assert not is_correct(formal, ground_truth, match="fuzzy")


def test_fuzzy_match_in_group() -> None:
    responses = ["Tchaikovski", "<proactive>Which composer?</proactive>"]
    # substring: c = [0, 0], acc = 0 -> [0, 0.5 + 0.05]
    assert group_aware_rewards(responses, "Tchaikovsky") == pytest.approx([0.0, 0.55])
    # fuzzy: c = [1, 0], acc = 0.5 -> [1, 0.25 + 0.05]
    assert group_aware_rewards(responses, "Tchaikovsky", match="fuzzy") == pytest.approx([1.0, 0.30])


def test_acc_over_non_proactive_variant() -> None:
    responses = ["42", "42", "42", "<proactive>Which unit?</proactive> 41"]
    # all: acc = 3/4 -> r4 = 0.5*0.25 + 0.05 = 0.175
    assert group_aware_rewards(responses, "42") == pytest.approx([1.0, 1.0, 1.0, 0.175])
    # non_proactive: acc = 3/3 = 1 -> r4 = 0 + 0.05
    details = group_aware_details(responses, "42", acc_over="non_proactive")
    assert [d.reward for d in details] == pytest.approx([1.0, 1.0, 1.0, 0.05])
    assert details[0].group_accuracy == pytest.approx(1.0)


def test_acc_over_non_proactive_all_proactive_group() -> None:
    responses = ["<proactive>a?</proactive> 42", "<proactive>b?</proactive>"]
    # non_proactive: no plain responses -> acc = 0 -> 0.5 + 0.05 each.
    assert group_aware_rewards(responses, "42", acc_over="non_proactive") == pytest.approx([0.55, 0.55])
    # all: acc = 1/2 -> 0.25 + 0.05 each.
    assert group_aware_rewards(responses, "42") == pytest.approx([0.30, 0.30])


# ------------------------------------------------------------------------- summarize


def test_summarize_mixed_group() -> None:
    summary = summarize(group_aware_details(MIXED_GROUP, "42"))
    assert summary == pytest.approx(
        {
            "mean_reward": (1.05 + 0.0 + 0.35 + 0.30) / 4,
            "accuracy": 0.5,
            "format_rate": 0.25,  # well formed: only response 1 (response 3's final answer is empty)
            "proactive_rate": 0.5,
            "mean_group_accuracy": 0.5,
        }
    )


def test_one_format_rate_definition() -> None:
    """The details' format, summarize's format_rate and the tables' well_formed agree."""
    details = group_aware_details(MIXED_GROUP, "42")
    assert [d.well_formed for d in details] == [well_formed(r) for r in MIXED_GROUP] == [True, False, False, False]
    assert summarize(details)["format_rate"] == sum(map(well_formed, MIXED_GROUP)) / len(MIXED_GROUP)


def test_summarize_empty() -> None:
    summary = summarize([])
    assert set(summary) == {"mean_reward", "accuracy", "format_rate", "proactive_rate", "mean_group_accuracy"}
    assert all(math.isnan(value) for value in summary.values())


# ------------------------------------------------------------------ property tests

FRAGMENTS = [
    "<think>",
    "</think>",
    "<THINK>",
    "</Think>",
    "<proactive>",
    "</proactive>",
    "<Proactive>",
    "</PROACTIVE>",
    "42",
    "41",
    "1,000",
    "Paris",
    "new-york",
    " ",
    "\n",
    "answer",
    "is",
]
GROUND_TRUTHS = ["42", "Paris", "1000", "3.0", "New York", "  answer "]

responses_strategy = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=10
).map("".join)
groups_strategy = st.lists(responses_strategy, max_size=6)
options_strategy = st.fixed_dictionaries(
    {
        "min_proactive_length": st.integers(min_value=0, max_value=12),
        "match": st.sampled_from(["substring", "fuzzy"]),
        "acc_over": st.sampled_from(["all", "non_proactive"]),
        "format_bonus": st.floats(min_value=0.0, max_value=1.0),
    }
)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


@PROPERTY_SETTINGS
@given(
    responses=groups_strategy,
    ground_truth=st.sampled_from(GROUND_TRUTHS),
    beta=st.floats(min_value=0.0, max_value=2.0),
    options=options_strategy,
)
def test_rewards_within_formula_bounds(
    responses: list[str], ground_truth: str, beta: float, options: dict[str, Any]
) -> None:
    fb = options["format_bonus"]
    details = group_aware_details(responses, ground_truth, beta, **options)
    assert len(details) == len(responses)
    for detail in details:
        assert 0.0 <= detail.group_accuracy <= 1.0
        upper = (beta if detail.has_proactive else 1.0) + 2 * fb
        assert -1e-12 <= detail.reward <= upper + 1e-12
        expected_fb = fb * detail.has_think + fb * detail.has_proactive
        assert detail.format_bonus == pytest.approx(expected_fb)


@PROPERTY_SETTINGS
@given(
    responses=groups_strategy,
    ground_truth=st.sampled_from(GROUND_TRUTHS),
    beta=st.floats(min_value=-2.0, max_value=2.0),
    options=options_strategy,
    data=st.data(),
)
def test_rewards_are_permutation_equivariant(
    responses: list[str], ground_truth: str, beta: float, options: dict[str, Any], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(responses))))
    rewards = group_aware_rewards(responses, ground_truth, beta, **options)
    permuted = group_aware_rewards([responses[i] for i in order], ground_truth, beta, **options)
    assert permuted == pytest.approx([rewards[i] for i in order])


@PROPERTY_SETTINGS
@given(
    responses=groups_strategy,
    ground_truth=st.sampled_from(GROUND_TRUTHS),
    beta=st.floats(min_value=-2.0, max_value=2.0),
    options=options_strategy,
)
def test_rewards_wrapper_matches_details(
    responses: list[str], ground_truth: str, beta: float, options: dict[str, Any]
) -> None:
    details = group_aware_details(responses, ground_truth, beta, **options)
    assert group_aware_rewards(responses, ground_truth, beta, **options) == [d.reward for d in details]


@PROPERTY_SETTINGS
@given(responses=groups_strategy, ground_truth=st.sampled_from(GROUND_TRUTHS))
def test_default_group_accuracy_is_mean_correctness(responses: list[str], ground_truth: str) -> None:
    details = group_aware_details(responses, ground_truth)
    if details:
        mean_correct = sum(d.correct for d in details) / len(details)
        assert all(d.group_accuracy == pytest.approx(mean_correct) for d in details)
    for response, detail in zip(responses, details):
        assert detail.formal == formal_answer(response)
        assert detail.correct == is_correct(detail.formal, ground_truth)


@PROPERTY_SETTINGS
@given(formal=responses_strategy.map(formal_answer), ground_truth=st.sampled_from(GROUND_TRUTHS))
def test_fuzzy_accepts_everything_substring_accepts(formal: str, ground_truth: str) -> None:
    if is_correct(formal, ground_truth):
        assert is_correct(formal, ground_truth, match="fuzzy")


def test_well_formed_is_the_format_of_both_sft_styles():
    from sft2rl.tasks.qa.reward import well_formed

    assert well_formed("<think>\nI know this.\n</think>\n\nThe capital of Bora is Lin.")  # hedge_only, knowable
    assert well_formed("<think>a</think>\n\n<proactive>\nI am not sure.\n</proactive>\n\nI do not know.")
    assert not well_formed("The capital of Bora is Lin.")  # no think block
    assert not well_formed("<think>a</think><proactive>b</proactive>")  # tags but no answer
    assert not well_formed("<think>unclosed The capital is Lin.")
