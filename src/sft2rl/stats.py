"""What the evaluation numbers mean: selective-prediction metrics and bootstrap intervals.

A *proactive block* (``<proactive>…</proactive>``) is the model's hedge: it admits it may be
wrong and asks the user to verify. Read as selective prediction (answer or abstain):

* ``format_rate``: share of well-formed answers (a closed ``<think>`` block and a final answer;
  :func:`sft2rl.tasks.qa.reward.well_formed`), the format of both SFT styles;
* ``proactive_block_rate``: share of answers with a block (a block is present, whatever it says);
* ``coverage``: share of answers *without* a block (answered plainly);
* ``selective_accuracy``: accuracy of those plain answers;
* ``hedge_recall``: share of *unknowable* questions answered with a block;
* ``false_hedge_rate``: share of *knowable* questions answered with a block;
* ``hedge_auroc``: AUROC of the per-question sampled block rate as a score for "this question
  is unknowable", *within the question kinds that hold both knowable and unknowable
  questions* (in the embedded world: the country questions; arithmetic and context questions
  are never unknowable, so over all kinds the wording alone would separate a part of them);
  ``hedge_auroc_all``: the same over every question; ``hedge_auroc_wrong``: the same score
  against "the greedy answer is wrong" (needs no labels).

The no-information baselines beside them (``kind_only_*``): a policy that sees only the
question's kind. Its score is the kind's share of the label (unknowable; wrong) on the
evaluated questions, the best any kind-only score can rank them: ``kind_only_hedge_auroc``,
``kind_only_hedge_auroc_all``, ``kind_only_hedge_auroc_wrong``; and
``kind_only_false_hedge_rate`` (``kind_only_sampled_false_hedge_rate``): the lowest
false-hedge rate a kind-only policy (hedging whole kinds, most unknowable first, and a
random share of the last one) has at the model's own hedge recall (sampled hedge recall).
Within kinds that hold both, the kind-only AUROC is near 0.5. Beside the reward and the
accuracy: ``kind_only_mean_reward``, ``kind_only_accuracy`` and ``kind_only_accuracy_knowable``,
the same policy's best reward and its accuracy answering each kind's most frequent answer
(per question, :func:`sft2rl.tasks.qa.baselines.kind_only_policy`; NaN for records without them).

Every table metric is a ratio over test questions (``sum(value·mask) / sum(mask)``), so it is
recomputed on bootstrap resamples of the questions cheaply. Intervals: percentile bootstrap,
resampling test questions (the same draw for every seed and for the reference model: paired)
and, for rows with several seeds, the seeds as well (hierarchical: seeds, then questions).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Table metrics as (per-question value, per-question mask) fields of :func:`question_arrays`.
RATIO_METRICS: dict[str, tuple[str, str]] = {
    "mean_reward": ("reward", "all"),
    "accuracy": ("correct", "all"),
    "accuracy_knowable": ("correct", "knowable"),
    "accuracy_unknowable": ("correct", "unknowable"),
    "format_rate": ("format", "all"),
    "sampled_format_rate": ("sampled_format", "all"),
    "proactive_block_rate": ("block", "all"),
    "coverage": ("plain", "all"),
    "selective_accuracy": ("correct", "plain"),
    "hedge_recall": ("block", "unknowable"),
    "false_hedge_rate": ("block", "knowable"),
    "sampled_hedge_recall": ("sampled_block", "unknowable"),
    "sampled_false_hedge_rate": ("sampled_block", "knowable"),
    "kind_only_mean_reward": ("kind_only_reward", "all"),
    "kind_only_accuracy": ("kind_only_correct", "all"),
    "kind_only_accuracy_knowable": ("kind_only_correct", "knowable"),
}
#: AUROC metrics as (score, positive label, mask) fields of :func:`question_arrays`.
AUROC_METRICS: dict[str, tuple[str, str, str]] = {
    "hedge_auroc": ("sampled_block", "unknowable", "mixed"),
    "hedge_auroc_all": ("sampled_block", "unknowable", "all"),
    "hedge_auroc_wrong": ("sampled_block", "wrong", "all"),
    "kind_only_hedge_auroc": ("kind_unknowable", "unknowable", "mixed"),
    "kind_only_hedge_auroc_all": ("kind_unknowable", "unknowable", "all"),
    "kind_only_hedge_auroc_wrong": ("kind_wrong", "wrong", "all"),
}
#: Kind-only false-hedge rates: the kind-only policy's at the recall of a ratio metric.
KIND_ONLY_FHR = {"kind_only_false_hedge_rate": "hedge_recall",
                 "kind_only_sampled_false_hedge_rate": "sampled_hedge_recall"}
TABLE_METRICS = [*RATIO_METRICS, *AUROC_METRICS, *KIND_ONLY_FHR]


def _rate(values: Sequence[Any]) -> float:
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else float("nan")


def question_arrays(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-question arrays (float; NaN-free but for the kind-only fields of records without
    them) from evaluation records (answers.jsonl rows), in index order.

    ``sampled_block`` is the share of the k sampled answers with a block (the greedy answer's
    block when k = 0): the hedging score of the AUROC metrics.
    """
    recs = sorted(records, key=lambda r: r["index"])
    known = np.array([r.get("knowable") is True for r in recs], dtype=float)
    unknown = np.array([r.get("knowable") is False for r in recs], dtype=float)
    block = np.array([float(bool(r["greedy_proactive"])) for r in recs])
    correct = np.array([float(bool(r["greedy_correct"])) for r in recs])
    kind_names = sorted({str(r.get("kind")) for r in recs})
    kind = np.array([kind_names.index(str(r.get("kind"))) for r in recs], dtype=int)
    sampled_block = np.array([_rate(r["sample_proactive"]) if r.get("sample_proactive") else float(r["greedy_proactive"])
                              for r in recs])
    fmt = np.array([float(bool(r.get("greedy_format", r["greedy_think"]))) for r in recs])
    sampled_format = np.array([_rate(r["sample_format"]) if r.get("sample_format") else f
                               for r, f in zip(recs, fmt)])
    kind_unknowable = _kind_share(kind, unknown)
    nan = float("nan")
    labelled_share = _kind_share(kind, unknown, known + unknown)
    return {
        "index": np.array([r["index"] for r in recs]),
        "all": np.ones(len(recs)),
        "knowable": known,
        "unknowable": unknown,
        "kind": kind,
        # kinds that hold both knowable and unknowable questions (of the labelled ones)
        "mixed": ((labelled_share > 0) & (labelled_share < 1)).astype(float),
        "kind_unknowable": kind_unknowable,
        "kind_wrong": _kind_share(kind, 1.0 - correct),
        "wrong": 1.0 - correct,
        "reward": np.array([float(r["reward"]) for r in recs]),
        "correct": correct,
        "format": fmt,
        "sampled_format": sampled_format,
        "block": block,
        "plain": 1.0 - block,
        "sampled_block": sampled_block,
        # the kind-only policy's (NaN for every question when the records lack them)
        "kind_only_correct": np.array([float(r.get("kind_only_correct", nan)) for r in recs]),
        "kind_only_reward": np.array([float(r.get("kind_only_reward", nan)) for r in recs]),
    }


def _kind_share(kind: np.ndarray, label: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Per question: the share of ``label`` among the questions of its kind (``among``: only
    those count; NaN-free, 0 for a kind with none)."""
    among = np.ones_like(label) if among is None else among
    n = np.bincount(kind, weights=among, minlength=kind.max(initial=0) + 1)
    k = np.bincount(kind, weights=label * among, minlength=len(n))
    share = np.divide(k, n, out=np.zeros_like(k), where=n > 0)
    return share[kind]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the 0/1 labels ``positive``; ties count one half
    (the Mann-Whitney statistic). NaN when one class is empty."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=float)
    n_pos, n_neg = positive.sum(), (1 - positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive.astype(int), scores))


def _batched_auroc(scores: np.ndarray, positive: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """AUROC of each row of (B, N) score/label matrices (Mann-Whitney U on average ranks),
    over the entries where ``mask`` (B, N) is 1 (all when None)."""
    from scipy.stats import rankdata

    if mask is not None:  # left-out entries rank above every kept one: kept ranks are unchanged
        scores = np.where(mask > 0, scores, np.inf)
        positive = positive * (mask > 0)
    ranks = rankdata(scores, axis=1)  # average ranks: ties count one half
    n_pos = positive.sum(axis=1)
    n_neg = (positive.shape[1] if mask is None else (mask > 0).sum(axis=1)) - n_pos
    u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out = u / (n_pos * n_neg)
    out[(n_pos == 0) | (n_neg == 0)] = np.nan
    return out


def metric_values(arrays: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every table metric; ``idx`` (B, N) question indices gives B resampled values per metric.
    Without ``idx``, plain values (as arrays of one). Empty groups give NaN."""
    if idx is None:
        idx = np.arange(len(arrays["all"]))[None, :]
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, (value, mask) in RATIO_METRICS.items():
            v, m = arrays[value][idx], arrays[mask][idx]
            out[name] = (v * m).sum(axis=1) / m.sum(axis=1)
    for name, (score, label, mask) in AUROC_METRICS.items():
        out[name] = _batched_auroc(arrays[score][idx], arrays[label][idx],
                                   None if mask == "all" else arrays[mask][idx])
    for name, recall in KIND_ONLY_FHR.items():
        out[name] = kind_only_false_hedge_rate(arrays, idx, out[recall])
    return out


#: a hedge-recall shortfall (in questions) below this is rounding, not a question left to hedge
RECALL_TOL = 1e-9


def kind_only_false_hedge_rate(arrays: dict[str, np.ndarray], idx: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """The lowest false-hedge rate of a policy that sees only the question's kind, at hedge
    recall ``recall`` (B,), on each resample ``idx`` (B, N): it hedges on whole kinds, those
    with the largest unknowable share first (kinds of equal share as one), and on a random
    share of the next one (the kind-only ROC curve, interpolated)."""
    levels, group = np.unique(-arrays["kind_unknowable"], return_inverse=True)  # 0: most unknowable
    g = group[idx]
    n_groups = len(levels)
    unk = np.stack([((g == j) * arrays["unknowable"][idx]).sum(axis=1) for j in range(n_groups)], axis=1)
    kno = np.stack([((g == j) * arrays["knowable"][idx]).sum(axis=1) for j in range(n_groups)], axis=1)
    tot_u, tot_k = unk.sum(axis=1), kno.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        need = recall * tot_u  # unknowable questions the policy must hedge on
        cu = np.cumsum(unk, axis=1) - unk  # hedged before each group
        # share of each group hedged: 0 once the recall is reached; a group without an
        # unknowable question is passed through whole while the recall is still short.
        # recall * tot_u may land a rounding step above the count it came from (7/25 * 25):
        # a shortfall below RECALL_TOL questions is none
        short = need[:, None] - cu
        frac = np.where(unk > 0, np.clip(short / unk, 0.0, 1.0), 1.0) * (short > RECALL_TOL)
        hedged_k = (frac * kno).sum(axis=1)
        out = hedged_k / tot_k
    out[(tot_k == 0) | (tot_u == 0) | np.isnan(recall)] = np.nan
    return out


def summary_metrics(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """The table metrics of one evaluation (NaN -> None, for metrics.json)."""
    vals = metric_values(question_arrays(records))
    return {k: (None if np.isnan(v[0]) else float(v[0])) for k, v in vals.items()}


def _aligned(seed_arrays: list[dict[str, np.ndarray]], ref: dict[str, np.ndarray] | None) -> None:
    first = seed_arrays[0]["index"]
    for a in seed_arrays[1:] + ([ref] if ref is not None else []):
        if not np.array_equal(a["index"], first):
            raise ValueError("evaluations of one table row must answer the same test questions")


def bootstrap_row(seed_arrays: list[dict[str, np.ndarray]], ref: dict[str, np.ndarray] | None = None, *,
                  n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean over seeds, std over seeds, and the percentile bootstrap interval of every table
    metric for one table row; with ``ref`` (the row's init model), the paired difference
    row − ref and its interval, as ``<metric>_diff``, ``<metric>_diff_ci_low|high``.

    Draw b: seeds resampled with replacement (when there are several), one resample of the
    test questions shared by those seeds and by ``ref``; the row's value is the mean over
    the drawn seeds. Draws where a metric is undefined (an empty group, an AUROC with one
    class left) are dropped; an interval is NaN when more than 5% of the draws are.
    """
    _aligned(seed_arrays, ref)
    rng = np.random.default_rng(seed)
    n_q, n_s = len(seed_arrays[0]["all"]), len(seed_arrays)
    q_idx = rng.integers(0, n_q, size=(n_boot, n_q))
    s_idx = rng.integers(0, n_s, size=(n_boot, n_s)) if n_s > 1 else np.zeros((n_boot, 1), dtype=int)
    point = [metric_values(a) for a in seed_arrays]
    boot = [metric_values(a, q_idx) for a in seed_arrays]  # per seed: {metric: (B,)}
    ref_point = metric_values(ref) if ref is not None else None
    ref_boot = metric_values(ref, q_idx) if ref is not None else None
    alpha = (1 - level) / 2
    out: dict[str, float] = {}

    def interval(draws: np.ndarray) -> tuple[float, float]:
        # draws where the metric is undefined (an empty group) are left out, up to 5% of them
        if np.isnan(draws).mean() > 0.05:
            return float("nan"), float("nan")
        lo, hi = np.nanquantile(draws, [alpha, 1 - alpha])
        return float(lo), float(hi)

    for m in TABLE_METRICS:
        per_seed = np.array([p[m][0] for p in point])
        stacked = np.stack([b[m] for b in boot])  # (S, B)
        draws = stacked[s_idx.T, np.arange(n_boot)].mean(axis=0)  # mean over the drawn seeds
        out[f"{m}_mean"] = float(np.mean(per_seed))
        out[f"{m}_std"] = float(np.std(per_seed, ddof=1)) if n_s > 1 else float("nan")
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = interval(draws)
        if ref is not None:
            out[f"{m}_diff"] = float(np.mean(per_seed) - ref_point[m][0])
            out[f"{m}_diff_ci_low"], out[f"{m}_diff_ci_high"] = interval(draws - ref_boot[m])
    return out


def risk_coverage(records: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Risk–coverage curve: answer the questions the model hedges least on first (score:
    per-question sampled block rate); at each threshold, coverage = share answered and
    risk = error rate of the greedy answers among them. Ties enter together."""
    a = question_arrays(records)
    order = np.argsort(a["sampled_block"], kind="stable")
    scores, wrong = a["sampled_block"][order], a["wrong"][order]
    n = len(scores)
    cov, risk = [], []
    i = 0
    while i < n:
        j = i
        while j + 1 < n and scores[j + 1] == scores[i]:
            j += 1
        k = j + 1
        cov.append(k / n)
        risk.append(float(wrong[:k].mean()))
        i = k
    return cov, risk


def ci_label(level: float, *, latex: bool = False) -> str:
    """An interval's level as tables, figures and captions print it: 0.95 -> "95%", 0.975 ->
    "97.5%" (``latex``: "95\\%")."""
    text = f"{round(100 * float(level), 2):g}%"
    return text.replace("%", r"\%") if latex else text


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy); (nan, nan) for n = 0."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference(sft: dict[Any, float], rl: dict[Any, float], *, samples: int, level: float,
                      seed: int) -> tuple[float, float, float]:
    """Mean per-item value of RL minus SFT on the same items (levels, cases), with a percentile
    bootstrap interval over items (each item's episodes stay together)."""
    if set(sft) != set(rl):
        raise ValueError(f"SFT and RL were evaluated on different items ({len(set(sft) ^ set(rl))} differ)")
    d = np.array([rl[k] - sft[k] for k in sorted(sft)])
    rng = np.random.default_rng(seed)
    draws = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(d.mean()), float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))
