"""Group-aware reward for the "proactive assistant" GRPO recipe.

Each prompt is answered by a *group* of ``n`` sampled responses.  A response may
contain ``<think>…</think>`` blocks (private reasoning) and ``<proactive>…</proactive>``
blocks (a clarifying question / proactive remark).  Everything outside those blocks is
the *formal answer*.  With the default options the reward is exactly::

    formal_i = response_i with every <think>…</think> and <proactive>…</proactive>
               block removed, whitespace collapsed (runs -> one space, stripped)
    c_i      = 1 if ground_truth.strip().lower() in formal_i.lower() else 0
    acc      = mean_i c_i                      (group accuracy over all n responses)
    fb_i     = format_bonus·[has think block] + format_bonus·[has proactive block]
    r_i      = beta·(1 − acc) + fb_i           if response_i has a proactive block
             = c_i + fb_i                      otherwise

so being proactive pays off when the group as a whole tends to get the question wrong
(the question is hard or ambiguous) and costs reward when the group gets it right.

Block conventions (shared by every function in this module):

* Tags are matched case-insensitively (``<THINK>`` counts) and must be spelled exactly
  ``<think>`` / ``</think>`` / ``<proactive>`` / ``</proactive>`` (no attributes or inner
  spaces).  A block is an opening tag followed by the nearest later closing tag of the
  same kind (non-greedy), may span many lines, and may have empty content.  Several
  blocks of the same kind may appear; text between them survives in the formal answer.
* Each kind is searched independently in the raw response, so a proactive block written
  inside a think block still counts as a proactive block (the literal reading of
  "has a <proactive> block").  The formal answer removes the union of all block spans,
  which makes the result independent of any removal order for nested or interleaved tags.
* Blocks are deleted without a separator (``"4<think>x</think>2"`` -> ``"42"``);
  whitespace is collapsed afterwards.
* An unclosed tag (``<think>`` with no later ``</think>``) is **not** a block: it earns
  no format bonus, does not make the response proactive, and stays verbatim in the
  formal answer (so it may still contain, and be credited for, the ground truth).

Variant options (defaults reproduce the formula above):

* ``min_proactive_length``: a proactive block counts only if its stripped content has at
  least that many characters; too-short blocks are still removed from the formal answer.
* ``match="fuzzy"``: lenient correctness, see :func:`is_correct`.
* ``acc_over="non_proactive"``: ``acc`` is the mean of ``c_i`` over non-proactive
  responses only (0.0 if every response is proactive).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ResponseDetails",
    "formal_answer",
    "group_aware_details",
    "group_aware_rewards",
    "has_proactive",
    "has_think",
    "is_correct",
    "summarize",
]

MatchMode = Literal["substring", "fuzzy"]
AccOver = Literal["all", "non_proactive"]

_MATCH_MODES: tuple[str, ...] = ("substring", "fuzzy")
_ACC_OVER_MODES: tuple[str, ...] = ("all", "non_proactive")

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
_PROACTIVE_RE = re.compile(r"<proactive>(.*?)</proactive>", re.IGNORECASE | re.DOTALL)

# Plain decimal numbers: optional sign, digits with optional thousands separators
# ("1,000"), optional fraction ("3.0").  No exponents, no leading-dot fractions.
_NUMBER = r"[-+]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_NUMBER_FULL_RE = re.compile(_NUMBER)
# Inside free text a number must not continue a word or another number ("abc123",
# the "5" of "3.5"), and must not be followed by a digit.
_NUMBER_IN_TEXT_RE = re.compile(rf"(?<![\w.]){_NUMBER}(?![0-9])")
# Punctuation/symbols for fuzzy normalisation: anything that is neither a word
# character nor whitespace, plus the underscore (which ``\w`` includes).
_PUNCT_RE = re.compile(r"[^\w\s]|_")

_FUZZY_RATIO_THRESHOLD = 0.8

# The keyword options of group_aware_rewards, as named in the `reward` config section.
OPTION_KEYS = ("beta", "format_bonus", "min_proactive_length", "match", "acc_over")


def options_from_config(reward_cfg: dict) -> dict:
    """The group_aware_rewards keyword arguments from a `reward` config section."""
    return {k: reward_cfg[k] for k in OPTION_KEYS}


@dataclass(frozen=True)
class ResponseDetails:
    """Per-response breakdown of the group-aware reward.

    Attributes:
        reward: The final reward ``r_i``.
        correct: ``c_i``, whether the formal answer matches the ground truth.
        has_think: Whether the response has a (closed) ``<think>`` block.
        has_proactive: Whether the response has a proactive block that counts
            (closed, and long enough under ``min_proactive_length``).
        format_bonus: ``fb_i``, the format bonus included in ``reward``.
        group_accuracy: ``acc``, the group accuracy used for the proactive branch
            (identical for every response of a group).
        formal: The formal answer text (blocks removed, whitespace collapsed).
    """

    reward: float
    correct: bool
    has_think: bool
    has_proactive: bool
    format_bonus: float
    group_accuracy: float
    formal: str

    @property
    def well_formed(self) -> bool:
        """:func:`well_formed` of the response: a closed think block and a non-empty final answer."""
        return self.has_think and bool(self.formal)


def _collapse_whitespace(text: str) -> str:
    """Replace every run of whitespace with one space and strip the ends."""
    return " ".join(text.split())


def _check_min_length(min_length: int, name: str) -> None:
    """Raise ``ValueError`` unless ``min_length`` is a non-negative int."""
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {min_length!r}")


def _check_match(match: str) -> None:
    """Raise ``ValueError`` unless ``match`` is a supported matching mode."""
    if match not in _MATCH_MODES:
        raise ValueError(f"match must be one of {_MATCH_MODES}, got {match!r}")


def _check_finite(value: float, name: str) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` if it is not a finite real."""
    message = f"{name} must be a finite float, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(message)
    try:
        result = float(value)
    except OverflowError:
        raise ValueError(message) from None
    if not math.isfinite(result):
        raise ValueError(message)
    return result


def _normalised_ground_truth(ground_truth: str) -> str:
    """Return ``ground_truth.strip().lower()``, rejecting empty ground truths."""
    if not isinstance(ground_truth, str):
        raise TypeError(f"ground_truth must be a str, got {type(ground_truth).__name__}")
    target = ground_truth.strip().lower()
    if not target:
        raise ValueError(
            "ground_truth is empty after stripping whitespace; an empty ground truth "
            "would be a substring of every answer"
        )
    return target


def has_think(response: str) -> bool:
    """Return whether ``response`` contains a closed ``<think>…</think>`` block.

    Matching is case-insensitive and multi-line; an unclosed ``<think>`` does not count.
    """
    return _THINK_RE.search(response) is not None


def has_proactive(response: str, min_length: int = 0) -> bool:
    """Return whether ``response`` contains a proactive block that counts.

    A block counts when it is closed (``<proactive>…</proactive>``, case-insensitive,
    possibly multi-line) and its content, stripped, has at least ``min_length``
    characters.  With ``min_length=0`` (default) an empty block counts.

    Raises:
        ValueError: If ``min_length`` is not an integer >= 0.
    """
    _check_min_length(min_length, "min_length")
    return any(len(m.group(1).strip()) >= min_length for m in _PROACTIVE_RE.finditer(response))


def well_formed(response: str) -> bool:
    """The answer format of both SFT styles: a closed ``<think>`` block and a non-empty final
    answer outside the tags (a proactive block is optional: it is the hedge, not the format)."""
    return has_think(response) and bool(formal_answer(response))


def formal_answer(response: str) -> str:
    """Return the formal answer: ``response`` without think/proactive blocks.

    Every closed ``<think>…</think>`` and ``<proactive>…</proactive>`` block is deleted
    (whatever its length), then runs of whitespace become one space and the result is
    stripped.  Each tag kind is located independently in the raw response and the union
    of the matched spans is removed, so nested or interleaved blocks are handled without
    depending on a removal order.  Unclosed tags are left in the text as-is.
    """
    spans = sorted(m.span() for regex in (_THINK_RE, _PROACTIVE_RE) for m in regex.finditer(response))
    pieces: list[str] = []
    position = 0
    for start, end in spans:
        if start > position:
            pieces.append(response[position:start])
        position = max(position, end)
    pieces.append(response[position:])
    return _collapse_whitespace("".join(pieces))


def _fuzzy_normalise(text: str) -> str:
    """Lowercase, replace punctuation/symbols with spaces, and collapse whitespace."""
    return _collapse_whitespace(_PUNCT_RE.sub(" ", text.lower()))


def _parse_number(text: str) -> float:
    """Parse a string matched by ``_NUMBER`` (thousands separators allowed)."""
    return float(text.replace(",", ""))


def is_correct(formal: str, ground_truth: str, match: MatchMode = "substring") -> bool:
    """Return ``c_i``: whether a formal answer matches the ground truth.

    ``match="substring"`` (default): ``ground_truth.strip().lower()`` is a substring of
    ``formal.lower()``.  Internal whitespace of the ground truth is kept as-is, exactly as
    in the published formula.

    ``match="fuzzy"``: true if the substring test passes, or if any of

    * the normalised ground truth is a substring of the normalised formal answer
      (normalise = lowercase, replace punctuation/symbols with a space, collapse
      whitespace; so ``"New-York"`` matches ``"new york"``);
    * ``difflib.SequenceMatcher(None, norm_gt, norm_formal).ratio() >= 0.8``;
    * the stripped ground truth is a plain number (``-12``, ``1,000``, ``3.0``; no
      exponents) and a number appearing in the formal answer is equal to it as a float
      (``math.isclose`` with ``rel_tol=1e-9``; ``"1,000" == 1000``, ``"3.0" == 3``).

    The first two tests are skipped when the normalised ground truth is empty (a
    punctuation-only ground truth such as ``"?!"``), which would otherwise match every
    answer.  Fuzzy matching therefore accepts everything substring matching accepts.

    Raises:
        ValueError: If the ground truth is empty after stripping or ``match`` is unknown.
    """
    _check_match(match)
    target = _normalised_ground_truth(ground_truth)
    if target in formal.lower():
        return True
    if match == "substring":
        return False
    norm_gt = _fuzzy_normalise(target)
    norm_formal = _fuzzy_normalise(formal)
    if norm_gt and (
        norm_gt in norm_formal
        or difflib.SequenceMatcher(None, norm_gt, norm_formal).ratio() >= _FUZZY_RATIO_THRESHOLD
    ):
        return True
    if _NUMBER_FULL_RE.fullmatch(target) is None:
        return False
    expected = _parse_number(target)
    return any(
        math.isclose(_parse_number(m.group(0)), expected, rel_tol=1e-9)
        for m in _NUMBER_IN_TEXT_RE.finditer(formal)
    )


def group_aware_details(
    responses: Sequence[str],
    ground_truth: str,
    beta: float = 0.5,
    *,
    min_proactive_length: int = 0,
    match: MatchMode = "substring",
    acc_over: AccOver = "all",
    format_bonus: float = 0.05,
) -> list[ResponseDetails]:
    """Compute the group-aware reward and its breakdown for one group of responses.

    See the module docstring for the formula and block conventions.

    Args:
        responses: The ``n`` sampled responses to one prompt (order is preserved; the
            result is equivariant under permutations of the group).  An empty group
            yields ``[]``.
        ground_truth: Reference answer; compared after ``strip().lower()``.
        beta: Weight of the proactive reward ``beta·(1 − acc)``; any finite float.
        min_proactive_length: Minimum stripped content length for a proactive block to
            count (0 = any closed block counts).  A response whose proactive blocks are
            all too short is scored as non-proactive, but the blocks are still removed
            from its formal answer.
        match: ``"substring"`` or ``"fuzzy"``; see :func:`is_correct`.
        acc_over: ``"all"`` (mean of ``c_i`` over the whole group) or
            ``"non_proactive"`` (mean over non-proactive responses, 0.0 if none).
        format_bonus: Bonus per present tag kind (think, proactive); finite and >= 0.

    Returns:
        One :class:`ResponseDetails` per response, in input order.

    Raises:
        TypeError: If ``responses`` is a bare string or contains non-strings, or
            ``ground_truth`` is not a string.
        ValueError: If the ground truth is empty after stripping, or an option is
            invalid (the message names the parameter and its allowed values).
    """
    beta = _check_finite(beta, "beta")
    format_bonus = _check_finite(format_bonus, "format_bonus")
    if format_bonus < 0:
        raise ValueError(f"format_bonus must be a finite float >= 0, got {format_bonus!r}")
    _check_min_length(min_proactive_length, "min_proactive_length")
    _check_match(match)
    if acc_over not in _ACC_OVER_MODES:
        raise ValueError(f"acc_over must be one of {_ACC_OVER_MODES}, got {acc_over!r}")
    _normalised_ground_truth(ground_truth)
    if isinstance(responses, str):
        raise TypeError("responses must be a sequence of strings, not a single string")
    for response in responses:
        if not isinstance(response, str):
            raise TypeError(f"every response must be a str, got {type(response).__name__}")

    formals = [formal_answer(response) for response in responses]
    correct = [is_correct(formal, ground_truth, match) for formal in formals]
    thinks = [has_think(response) for response in responses]
    proactives = [has_proactive(response, min_proactive_length) for response in responses]

    if acc_over == "all":
        counted = correct
    else:
        counted = [c for c, proactive in zip(correct, proactives) if not proactive]
    acc = sum(counted) / len(counted) if counted else 0.0

    details: list[ResponseDetails] = []
    for formal, c, think, proactive in zip(formals, correct, thinks, proactives):
        fb = format_bonus * int(think) + format_bonus * int(proactive)
        reward = beta * (1.0 - acc) + fb if proactive else int(c) + fb
        details.append(
            ResponseDetails(
                reward=reward,
                correct=c,
                has_think=think,
                has_proactive=proactive,
                format_bonus=fb,
                group_accuracy=acc,
                formal=formal,
            )
        )
    return details


def group_aware_rewards(
    responses: Sequence[str],
    ground_truth: str,
    beta: float = 0.5,
    *,
    min_proactive_length: int = 0,
    match: MatchMode = "substring",
    acc_over: AccOver = "all",
    format_bonus: float = 0.05,
) -> list[float]:
    """Return the group-aware reward of each response (see :func:`group_aware_details`)."""
    return [
        detail.reward
        for detail in group_aware_details(
            responses,
            ground_truth,
            beta,
            min_proactive_length=min_proactive_length,
            match=match,
            acc_over=acc_over,
            format_bonus=format_bonus,
        )
    ]


def summarize(details: Sequence[ResponseDetails]) -> dict[str, float]:
    """Aggregate per-response details (one or several groups) for evaluation/logging.

    Returns a dict with, as means over all given responses:

    * ``mean_reward``: mean ``reward``;
    * ``accuracy``: fraction with ``correct``;
    * ``format_rate``: fraction well formed (:func:`well_formed`: a closed think block and a
      non-empty final answer), the one definition of the evaluation tables and GRPO's logs;
    * ``proactive_rate``: fraction with a (counting) proactive block;
    * ``mean_group_accuracy``: mean ``group_accuracy`` (per response, so groups are
      weighted by their size).

    An empty input gives ``nan`` for every key.
    """
    n = len(details)
    if n == 0:
        return dict.fromkeys(
            ("mean_reward", "accuracy", "format_rate", "proactive_rate", "mean_group_accuracy"),
            math.nan,
        )
    return {
        "mean_reward": sum(d.reward for d in details) / n,
        "accuracy": sum(d.correct for d in details) / n,
        "format_rate": sum(d.well_formed for d in details) / n,
        "proactive_rate": sum(d.has_proactive for d in details) / n,
        "mean_group_accuracy": sum(d.group_accuracy for d in details) / n,
    }
