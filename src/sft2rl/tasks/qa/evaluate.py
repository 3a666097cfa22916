"""Evaluation of any model directory on the RL test set.

Per question: the greedy answer and k sampled answers (the workflow passes k = ``rl.n``, the
training group size). Metrics: accuracy of the formal answer, format rate (well formed),
proactive rate on knowable and unknowable questions (the world labels each; unlabeled data
is split into easy/hard by a reference model's sampled group accuracy), the hedging
metrics beside their kind-only baselines (:mod:`sft2rl.stats`), and the mean group-aware
reward at the configured beta, computed on the sampled group exactly as in training.

Accuracy and reward stand beside what a policy that sees only the question's kind scores on
the same questions (:func:`kind_only_policy`); its format rate is 1 (its replies are fixed
and well formed).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ...generation import generate
from ...io import read_parquet_rows, write_json, write_jsonl
from ...model import load_model, pick_device
from .baselines import kind_only_policy, mean_or_nan
from .reward import group_aware_details, options_from_config, well_formed


def evaluate_model(model_path: str, test_file: str, answers_out: str, metrics_out: str, *, reward: dict[str, Any],
                   max_new_tokens: int, batch_size: int, k_samples: int, temperature: float, seed: int,
                   top_p: float = 1.0, difficulty_ref: str | None = None,
                   max_prompt_length: int | None = None) -> dict[str, Any]:
    """``max_prompt_length``: the training limit (``rl.max_prompt_length``); a longer test prompt
    is an error, never cut (GRPO leaves such prompts out of training). The ``k_samples``
    sampled answers per question draw at ``temperature`` from the ``top_p`` nucleus."""
    device = pick_device()
    model, tokenizer = load_model(model_path, device)
    rows = read_parquet_rows(test_file)
    rkw = options_from_config(reward)
    records: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(rows), batch_size), desc="eval", mininterval=5):
        chunk = rows[start:start + batch_size]
        prompts = [r["prompt"] for r in chunk]
        gen = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False,
                       max_prompt_length=max_prompt_length)
        greedy, greedy_cut = gen.texts, gen.cut.tolist()
        sampled: list[list[str]] = [[] for _ in chunk]
        sampled_cut: list[list[bool]] = [[] for _ in chunk]
        if k_samples:
            gen = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                           max_prompt_length=max_prompt_length,
                           temperature=temperature, top_p=top_p, num_return_sequences=k_samples,
                           seed=seed + start)
            texts, cut = gen.texts, gen.cut.tolist()
            sampled = [texts[i * k_samples:(i + 1) * k_samples] for i in range(len(chunk))]
            sampled_cut = [cut[i * k_samples:(i + 1) * k_samples] for i in range(len(chunk))]
        for row, g, s, gc, sc in zip(chunk, greedy, sampled, greedy_cut, sampled_cut):
            truth = row["reward_model"]["ground_truth"]
            gd = group_aware_details([g], truth, **rkw)[0]
            sd = group_aware_details(s, truth, **rkw) if s else []
            info = row["extra_info"]
            records.append({
                "index": info["index"], "id": info.get("id"), "question": row["prompt"][-1]["content"],
                "ground_truth": truth, "knowable": info.get("knowable"), "kind": info.get("kind"),
                "greedy": g, "greedy_correct": gd.correct, "greedy_think": gd.has_think,
                "greedy_format": well_formed(g),
                "greedy_proactive": gd.has_proactive, "greedy_cut": gc,
                "samples": s, "sample_correct": [d.correct for d in sd], "sample_cut": sc,
                "sample_format": [well_formed(x) for x in s],
                "sample_proactive": [d.has_proactive for d in sd],
                "sample_rewards": [d.reward for d in sd],
                "group_accuracy": sd[0].group_accuracy if sd else float(gd.correct),
                "reward": mean_or_nan([d.reward for d in sd]) if sd else gd.reward,
            })
    _assign_difficulty(records, difficulty_ref)
    kind_only_policy(records, reward, k_samples)
    metrics = summarize_records(records)
    metrics.update({"model": str(model_path), "k_samples": k_samples, "temperature": temperature, "top_p": top_p,
                    "beta": reward["beta"]})
    write_jsonl(answers_out, records)
    write_json(metrics_out, metrics)
    return metrics


def _assign_difficulty(records: list[dict], difficulty_ref: str | None) -> None:
    """knowable/unknowable from the world's labels, else easy/hard from a reference model."""
    if all(r["knowable"] is not None for r in records):
        for r in records:
            r["difficulty"] = "knowable" if r["knowable"] else "unknowable"
        return
    ref = {}
    if difficulty_ref:
        for line in Path(difficulty_ref).read_text().splitlines():
            rec = json.loads(line)
            ref[rec["index"]] = rec["group_accuracy"]
    for r in records:
        acc = ref.get(r["index"], r["group_accuracy"])
        r["difficulty"] = "easy" if acc >= 0.5 else "hard"


def summarize_records(records: list[dict]) -> dict[str, Any]:
    """metrics.json of one evaluation: the table metrics of :mod:`sft2rl.stats` (selective
    prediction: coverage, selective accuracy, hedge recall, false-hedge rate, AUROCs), sampled
    rates, accuracy per question kind, and every rate per difficulty group."""
    from ...stats import summary_metrics

    def rate(sel: list[dict], key: str) -> float:
        return mean_or_nan([float(r[key]) for r in sel])

    def sample_rate(sel: list[dict], key: str) -> float:
        return mean_or_nan([float(x) for r in sel for x in r[key]])

    m: dict[str, Any] = {
        "n_questions": len(records),
        **(summary_metrics(records) if records else {}),
        "sampled_accuracy": sample_rate(records, "sample_correct"),
        "sampled_proactive_block_rate": sample_rate(records, "sample_proactive"),
        # answers cut at max_new_tokens (no stop id): scored as they stand, counted here
        "cut_rate": rate(records, "greedy_cut") if records and "greedy_cut" in records[0] else None,
        "sampled_cut_rate": sample_rate(records, "sample_cut") if records and "sample_cut" in records[0] else None,
    }
    for kind in sorted({str(r["kind"]) for r in records}):  # per question kind, by knowability
        for label, known in (("knowable", True), ("unknowable", False)):
            sel = [r for r in records if str(r["kind"]) == kind and r["knowable"] is known]
            if sel:
                m[f"accuracy_{label}_{kind}"] = rate(sel, "greedy_correct")
    for group in sorted({r["difficulty"] for r in records}):
        sel = [r for r in records if r["difficulty"] == group]
        m[f"n_{group}"] = len(sel)
        m[f"accuracy_{group}"] = rate(sel, "greedy_correct")
        m[f"proactive_block_rate_{group}"] = rate(sel, "greedy_proactive")
        m[f"sampled_proactive_block_rate_{group}"] = sample_rate(sel, "sample_proactive")
        m[f"mean_reward_{group}"] = mean_or_nan([r["reward"] for r in sel])
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}


def write_samples(model_path: str, test_file: str, out: str, *, n: int, max_new_tokens: int, seed: int,
                  reward: dict[str, Any] | None = None) -> float:
    """Greedy generations for the first ``n`` test prompts; returns the well-formed rate
    (a closed ``<think>`` block and a final answer; see :func:`sft2rl.tasks.qa.reward.well_formed`)."""
    torch.manual_seed(seed)
    model, tokenizer = load_model(model_path, pick_device())
    rows = read_parquet_rows(test_file)[:n]
    texts = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens,
                     do_sample=False).texts
    recs = []
    for r, t in zip(rows, texts):
        d = group_aware_details([t], r["reward_model"]["ground_truth"], **(options_from_config(reward) if reward else {}))[0]
        recs.append({"question": r["prompt"][-1]["content"], "ground_truth": r["reward_model"]["ground_truth"],
                     "knowable": r["extra_info"].get("knowable"), "response": t,
                     "well_formed": well_formed(t), "proactive_block": d.has_proactive, "correct": d.correct})
    write_jsonl(out, recs)
    return mean_or_nan([float(r["well_formed"]) for r in recs])
