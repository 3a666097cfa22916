"""The no-information baselines of QA's accuracy and reward: a policy that sees only the
question's kind (:func:`kind_only_policy`), beside every evaluation
(:mod:`sft2rl.tasks.qa.evaluate`) and the training reward curves (:mod:`sft2rl.plots`).
Light: no torch, so the figures job stays light."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ...io import read_parquet_rows
from .reward import group_aware_details, options_from_config


def mean_or_nan(xs: list[float]) -> float:
    """The mean; NaN for no values (a metric with no items is not 0)."""
    return float(sum(xs) / len(xs)) if xs else float("nan")


#: The kind-only policy's replies: a fixed think block, the answer, and for the hedging replies
#: a fixed proactive block (lengthened to ``reward.min_proactive_length`` where that is longer).
KIND_ONLY_THINK = "<think>Only the kind of question is known.</think>"
KIND_ONLY_HEDGE = "I may be wrong here; please verify this answer."
KIND_ONLY_UNKNOWN = "unknown"


def kind_only_policy(records: list[dict[str, Any]], reward: dict[str, Any], group_size: int) -> None:
    """Add the no-information baselines of accuracy and reward to each record.

    The kind-only policy sees only the question's kind (``kind``). ``kind_only_correct``: its
    reply is the most frequent ground truth among the evaluated questions of that kind (ties:
    the first in sorted order), scored by the reward's correctness (``reward.match``).
    ``kind_only_reward``: per kind, the best of three fixed replies, chosen for the highest mean
    reward over the kind's evaluated questions: that answer plainly, that answer with a
    proactive block, or a proactive block with the answer "unknown". Each reply is scored as a
    group of ``group_size`` identical replies (the model's sampled group), so the proactive
    branch pays ``beta·(1 − acc)`` on the policy's own group accuracy. Both are what the best
    such policy scores on these questions, as the kind-only hedging baselines are
    (:mod:`sft2rl.stats`)."""
    rkw = options_from_config(reward)
    hedge = KIND_ONLY_HEDGE
    while len(hedge) < int(reward.get("min_proactive_length", 0)):
        hedge += " " + KIND_ONLY_HEDGE
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_kind.setdefault(str(rec.get("kind")), []).append(rec)
    for recs in by_kind.values():
        counts: dict[str, int] = {}
        for rec in recs:
            t = str(rec["ground_truth"]).strip()
            counts[t] = counts.get(t, 0) + 1
        answer = min(counts, key=lambda t: (-counts[t], t))
        replies = [f"{KIND_ONLY_THINK}{answer}", f"{KIND_ONLY_THINK}<proactive>{hedge}</proactive>{answer}",
                   f"{KIND_ONLY_THINK}<proactive>{hedge}</proactive>{KIND_ONLY_UNKNOWN}"]
        scored = [[group_aware_details([reply] * max(group_size, 1), str(rec["ground_truth"]), **rkw)[0]
                   for rec in recs] for reply in replies]
        best = max(range(len(replies)), key=lambda j: (mean_or_nan([d.reward for d in scored[j]]), -j))
        for i, rec in enumerate(recs):
            rec["kind_only_correct"] = scored[0][i].correct
            rec["kind_only_reward"] = scored[best][i].reward


def kind_only_reward(rows_file: str | Path, reward: dict[str, Any], group_size: int) -> float:
    """The kind-only policy's mean reward (:func:`kind_only_policy`) over the RL rows of
    ``rows_file`` (parquet): the no-information value of the training reward curves, whose
    batches draw these rows."""
    records = [{"kind": r["extra_info"].get("kind"), "ground_truth": r["reward_model"]["ground_truth"]}
               for r in read_parquet_rows(rows_file)]
    kind_only_policy(records, reward, group_size)
    return mean_or_nan([r["kind_only_reward"] for r in records])
