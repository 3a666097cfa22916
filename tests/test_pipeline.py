"""The real workflow end to end on the reduced config (tests/config/reduced.yaml).

One finished workflow per test session (``finished``): a copy of this checkout (Snakefile,
workflow/, src/, config) in a temporary directory, run to the three tables, the figures and
the samples. Tests that only read results use it as it is; tests that change something
(config, code, the checkout's location) work on their own copy of it (``clone``), so the
jobs they trigger run the copy's own code (the workflow puts its src/ first on PYTHONPATH).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.integration
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
REDUCED = REPO / "tests" / "config" / "reduced.yaml"
TABLES = ["results/ablation_beta.csv", "results/ablation_sft_samples.csv", "results/ablation_sft.csv",
          "results/ablation_sft_style.csv"]
BUILT = [*TABLES, "figures", "samples", "results/tables/stage_times.csv"]
CHECKOUT = ["Snakefile", "workflow", "src", "envs", "config.yaml", "paper"]
SFT = "sft16_seed42"
RL_RUN = "rl-sft16_seed42-beta0.3-seed1"


def smk(project: Path, *targets: str, extra_config: Path | None = None, dry: bool = False):
    cmd = [SNAKEMAKE, "--snakefile", str(project / "Snakefile"), "--directory", str(project), "--cores", "2",
           *(["-n"] if dry else []), *targets, "--configfile", str(project / "config.yaml"), str(REDUCED)]
    if extra_config:
        cmd.append(str(extra_config))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=project)


def planned_jobs(output: str) -> dict[str, int]:
    m = re.search(r"Job stats:\njob\s+count\n-+\s+-+\n(.*?)\ntotal", output, re.S)
    if not m:
        return {}
    return {rule: int(n) for rule, n in (line.split() for line in m.group(1).strip().splitlines())}


def copy_checkout(dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in CHECKOUT:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "main.pdf"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def finished_copy(tmp_path_factory, name: str, *targets: str) -> Path:
    """A fresh copy of the checkout with ``targets`` built on the reduced config (one per session)."""
    work = copy_checkout(tmp_path_factory.mktemp(name) / "project")
    proc = smk(work, *targets)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


# ``finished`` (conftest.py): the reduced QA workflow, BUILT, once per session (test_slurm's local run too)


@pytest.fixture()
def clone(finished, tmp_path):
    """A copy of the finished project (code, config, results, Snakemake's records; times kept)."""
    dst = tmp_path / "clone"
    shutil.copytree(finished, dst, symlinks=True)
    return dst


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ablation_tables_contents(finished):
    cfg = yaml.safe_load(REDUCED.read_text())
    beta = pd.read_csv(finished / "results/ablation_beta.csv")
    assert list(beta["variant"]) == ["sft-only"] + [f"beta={b:g}" for b in cfg["ablations"]["beta"]]
    assert list(beta["kind"]) == ["sft-only", "rl", "rl"]
    assert list(beta["n_seeds"]) == [1, 1, 1]
    assert beta.loc[1:, "beta"].tolist() == cfg["ablations"]["beta"]
    for col in ["accuracy_mean", "format_rate_mean", "hedge_recall_mean", "false_hedge_rate_mean", "coverage_mean"]:
        assert beta[col].between(0, 1).all(), col
    assert beta["mean_reward_mean"].between(0, 1.1).all()
    # the RL stage trained: every exported policy differs from the SFT model it started from
    import torch
    from safetensors.torch import load_file

    init = load_file(str(finished / f"results/models/{SFT}/merged/model.safetensors"))
    for final in sorted((finished / "results/rl").glob(f"rl-{SFT}-*/final/model.safetensors")):
        w = load_file(str(final))
        assert any(not torch.equal(w[k], init[k]) for k in w), final
    # every hedging metric has its kind-only baseline beside it
    for col in ["hedge_auroc", "hedge_auroc_all", "hedge_auroc_wrong", "false_hedge_rate",
                "sampled_false_hedge_rate"]:
        baseline = f"kind_only_{col}_mean"
        assert beta[baseline].dropna().between(0, 1).all(), baseline
        # defined wherever the model's metric is (an AUROC against "wrong" is not when every
        # answer is wrong)
        assert (beta[baseline].isna() == beta[f"{col}_mean"].isna()).all(), baseline
    assert beta["kind_only_hedge_auroc_mean"].notna().all() and beta["kind_only_false_hedge_rate_mean"].notna().all()
    # ... and so have the reward and the accuracy: the kind-only policy's depend on the test
    # questions and the evaluation's reward only, so every row has the same, and they are
    # what that policy scores when computed here from the test split
    import numpy as np

    from sft2rl.tasks.qa.baselines import kind_only_policy

    recs = [json.loads(x) for x in (finished / "results/eval/sft16_seed42/answers.jsonl").read_text().splitlines()]
    for r in recs:
        del r["kind_only_correct"], r["kind_only_reward"]
    reward = {**yaml.safe_load((REPO / "config.yaml").read_text())["reward"], **cfg.get("reward", {})}
    kind_only_policy(recs, reward, cfg["rl"]["n"])
    expect = {"kind_only_mean_reward": np.mean([r["kind_only_reward"] for r in recs]),
              "kind_only_accuracy": np.mean([r["kind_only_correct"] for r in recs]),
              "kind_only_accuracy_knowable": np.mean([r["kind_only_correct"] for r in recs if r["knowable"]])}
    for col, value in expect.items():
        assert beta[f"{col}_mean"].tolist() == pytest.approx([value] * len(beta), abs=1e-4), col
    # a block on every question earns beta + two format bonuses (acc 0): no kind-only policy less
    assert expect["kind_only_mean_reward"] >= reward["beta"] + 2 * reward["format_bonus"] - 1e-9
    # the reward is estimated on groups of rl.n samples, as in training
    answers = [json.loads(x) for x in (finished / "results/eval/sft16_seed42/answers.jsonl").read_text().splitlines()]
    assert {len(r["samples"]) for r in answers} == {cfg["rl"]["n"]}
    # one seed: the std is undefined, not zero; the bootstrap interval (over questions) is defined
    assert beta["mean_reward_std"].isna().all()
    assert (beta["accuracy_ci_low"] <= beta["accuracy_mean"]).all()
    assert (beta["accuracy_mean"] <= beta["accuracy_ci_high"]).all()
    assert beta["ci"].str.contains("percentile bootstrap").all()
    # GRPO rows carry the paired difference to their init model (the sft-only row)
    assert beta.loc[1:, "mean_reward_diff"].tolist() == pytest.approx(
        (beta.loc[1:, "mean_reward_mean"] - beta.loc[0, "mean_reward_mean"]).tolist(), abs=1e-3)
    assert beta.loc[0, ["mean_reward_diff"]].isna().all()
    # the test split holds both kinds of question
    test = pd.read_parquet(finished / "data/processed/rl/test.parquet")
    known = [e["knowable"] for e in test["extra_info"]]
    assert sum(known) > 0 and len(known) - sum(known) > 0
    style = pd.read_csv(finished / "results/ablation_sft_style.csv")
    assert list(style["variant"]) == ["hedge_only sft-only", "hedge_only", "always_block sft-only", "always_block"]
    assert list(style["init"]) == ["sft16_seed42", "sft16_seed42", "sft16_seed42_always_block",
                                   "sft16_seed42_always_block"]
    hedge_rows = [json.loads(x) for x in (finished / "data/processed/sft/n16_seed42/train.jsonl").read_text().splitlines()]
    block_rows = [json.loads(x) for x in
                  (finished / "data/processed/sft/n16_seed42_always_block/train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in hedge_rows] == [r["id"] for r in block_rows]  # same questions, other targets
    assert all("<proactive>" in r["messages"][-1]["content"] for r in block_rows)
    assert any("<proactive>" not in r["messages"][-1]["content"] for r in hedge_rows)
    samples = pd.read_csv(finished / "results/ablation_sft_samples.csv")
    assert list(samples["variant"]) == ["N=16 sft-only", "N=16"]
    assert samples["sft_samples"].tolist() == [16, 16]
    sft = pd.read_csv(finished / "results/ablation_sft.csv")
    assert list(sft["variant"]) == ["base-only", "sft-only", "RL from base", "RL from SFT"]
    assert list(sft["init"]) == ["base", "sft16_seed42", "base", "sft16_seed42"]
    # rows are the evaluations they claim to be
    sft_metrics = json.loads((finished / "results/eval/sft16_seed42/metrics.json").read_text())
    assert beta.loc[0, "accuracy_mean"] == pytest.approx(sft_metrics["accuracy"], abs=1e-4)
    rl_run = f"rl-sft16_seed42-beta{cfg['ablations']['beta'][0]:g}-seed1"
    rl_metrics = json.loads((finished / f"results/eval/{rl_run}/metrics.json").read_text())
    assert beta.loc[1, "mean_reward_mean"] == pytest.approx(rl_metrics["mean_reward"], abs=1e-4)
    assert (finished / "results/tables/ablation_beta.tex").read_text().count(r"\\") == 1 + 3
    assert "[" in (finished / "results/tables/ablation_beta.tex").read_text()  # intervals in the paper table
    # every training stage left its artefacts
    assert (finished / f"results/rl/{rl_run}/final/config.json").is_file()
    assert list((finished / f"results/rl/{rl_run}/tensorboard").glob("events.out.tfevents.*"))
    assert (finished / "results/models/sft16_seed42/merged/merge_report.json").is_file()


def test_stage_times_table(finished):
    """Every compute stage of the QA pipeline wrote its benchmark file, and the per-stage table
    holds them: one GRPO job per RL run, wall and CPU time, peak memory of the model stages."""
    cfg = yaml.safe_load(REDUCED.read_text())
    table = pd.read_csv(finished / "results/tables/stage_times.csv").set_index("stage")
    for stage in ("world", "rl_data", "sft_data", "base_model", "sft", "merge", "grpo", "eval", "tables", "figures"):
        assert stage in table.index, stage
    n_rl = len(list((finished / "results/rl").glob("rl-*/summary.json")))
    assert n_rl >= len(cfg["ablations"]["beta"]) and table.loc["grpo", "jobs"] == n_rl
    assert (table["total_s"] >= table["max_job_s"]).all() and (table["total_s"] > 0).all()
    for stage in ("base_model", "sft", "grpo"):
        assert table.loc[stage, "peak_rss_mb"] > 100, stage  # a model in memory
    md = (finished / "results/tables/stage_times.md").read_text()
    assert md.startswith("| stage |") and "| grpo |" in md


def test_finished_workflow_plans_nothing(finished):
    proc = smk(finished, *BUILT, dry=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_editing_one_beta_reruns_only_that_run(finished, tmp_path):
    cfg = yaml.safe_load(REDUCED.read_text())
    old = cfg["ablations"]["beta"]
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump({"ablations": {"beta": [old[0], 0.9]}}))
    proc = smk(finished, "results/ablation_beta.csv", extra_config=edited, dry=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs == {"grpo": 1, "evaluate": 1, "ablation_table": 1}, jobs
    assert "rl-sft16_seed42-beta0.9-seed1" in proc.stdout


def test_the_sft_term_refuses_the_rl_from_base_rows_even_of_a_finished_workflow(clone, tmp_path):
    """``rl.sft_coef`` > 0 (PPO-ptx) trains on the init model's SFT rows; the base model has none.
    Where the RL-from-base runs exist, Snakemake takes them as built and drops the planning error,
    so ``ablation_sft.csv`` refuses their row when it runs: the table goes, rather than showing
    runs trained without the term under a config that names it. Where they do not exist, the
    plan itself is refused."""
    extra = write_config(tmp_path / "ptx.yaml", {"rl": {"sft_coef": 0.5}})
    beta = yaml.safe_load((clone / "config.yaml").read_text())["reward"]["beta"]  # the table's beta
    base_run, sft_run = f"rl-base-beta{beta:g}-seed1", f"rl-{SFT}-beta{beta:g}-seed1"
    proc = smk(clone, "results/ablation_sft.csv", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = set(re.findall(r"output: results/rl/([^/]+)/final", proc.stdout))
    assert planned == {sft_run}, planned  # RL from SFT trains again with the term; RL from base not
    # the table's own job, on the runs as they are (no retraining here)
    proc = smk(clone, "results/ablation_sft.csv", "--allowed-rules", "ablation_table", extra_config=extra)
    assert proc.returncode != 0
    log = (clone / "results/logs/tables/sft.log").read_text()
    assert f"row 'RL from base': config key 'rl.sft_coef' = 0.5: RL run {base_run} starts from the base" in log
    assert not (clone / "results/ablation_sft.csv").exists()
    assert not (clone / "results/tables/ablation_sft.tex").exists()
    # the other tables have no such row: their plan is the usual rerun
    proc = smk(clone, "results/ablation_beta.csv", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # with the term off again, the table is built from the runs that are there
    proc = smk(clone, "results/ablation_sft.csv", "--allowed-rules", "ablation_table")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(pd.read_csv(clone / "results/ablation_sft.csv")["variant"]) == [
        "base-only", "sft-only", "RL from base", "RL from SFT"]
    # without the RL-from-base run and its evaluation (a fresh workflow), planning refuses it
    shutil.rmtree(clone / "results/rl" / base_run)
    shutil.rmtree(clone / "results/eval" / base_run)
    proc = smk(clone, "results/ablation_sft.csv", extra_config=extra, dry=True)
    assert proc.returncode != 0
    assert f"RL run {base_run} starts from the base model" in proc.stdout + proc.stderr


def test_editing_the_test_split_reevaluates_and_never_retrains(clone):
    """GRPO never reads the test split: a changed test file reruns evaluations and tables only."""
    test = clone / "data/processed/rl/test.parquet"
    table = pq.read_table(test)
    pq.write_table(table.slice(0, table.num_rows - 1), test)
    proc = smk(clone, "results/ablation_beta.csv", dry=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs.get("evaluate", 0) >= 2 and jobs.get("ablation_table") == 1, jobs
    assert "grpo" not in jobs and "sft" not in jobs, jobs


def test_the_split_is_searched_against_the_pretraining_corpus_it_reads(clone):
    """rl_data reads the tiny base's corpus (it refuses a test question pretrained): a new
    corpus reruns the split with the base, not the world that wrote it."""
    corpus = clone / "data/raw/world_corpus.jsonl"
    with corpus.open("a") as f:  # one more document
        f.write(json.dumps({"text": "Glimmer is a word of no country."}) + "\n")
    proc = smk(clone, "data/processed/rl/test.parquet", "results/models/base", dry=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert planned_jobs(proc.stdout + proc.stderr) == {"rl_data": 1, "base_model": 1}


# ------------------------------------------------------------------ reruns are real reruns
def _rl_state(project: Path, run: str = RL_RUN) -> tuple[dict, bytes]:
    summary = json.loads((project / f"results/rl/{run}/summary.json").read_text())
    return summary, (project / f"results/rl/{run}/final/model.safetensors").read_bytes()


def _assert_retrained(project: Path, before: tuple[dict, bytes], proc, new_weights: bool = True) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary, weights = _rl_state(project)
    planned = yaml.safe_load(REDUCED.read_text())["rl"]["total_steps"]
    # trained from step 0 by this job: every planned optimizer step, nothing resumed
    assert summary["resumed_from_step"] is None, summary["start"]
    assert summary["steps_trained"] == summary["steps"] == summary["total_steps"] == planned
    assert summary["run_key"] != before[0]["run_key"]  # every caller changes an input of the run
    if new_weights:
        assert weights != before[1], "the rerun exported the old policy"
    tb = read_steps(project / f"results/rl/{RL_RUN}/tensorboard")
    assert tb == list(range(1, planned + 1))
    return summary


def read_steps(tb_dir: Path) -> list[int]:
    from sft2rl.tblog import read_scalars

    assert len(list(tb_dir.glob("events.out.tfevents.*"))) == 1  # the old run's events are gone
    return [s for s, _ in read_scalars(tb_dir)["rl/reward_mean"]]


def test_retrained_sft_retrains_rl_from_step_zero(clone, tmp_path):
    before = _rl_state(clone)
    cfg = yaml.safe_load(REDUCED.read_text())
    extra = write_config(tmp_path / "epochs.yaml", {"sft": {"epochs": cfg["sft"]["epochs"] + 1}})
    proc = smk(clone, f"results/rl/{RL_RUN}/summary.json", extra_config=extra)
    _assert_retrained(clone, before, proc)
    sft = json.loads((clone / f"results/sft/{SFT}/metrics.json").read_text())
    assert len(sft["epochs"]) == cfg["sft"]["epochs"] + 1


def test_switching_merge_checkpoint_retrains_rl(clone, tmp_path):
    before = _rl_state(clone)
    extra = write_config(tmp_path / "merge.yaml", {"sft": {"merge_checkpoint": 1}})  # epoch 1 instead of the last
    proc = smk(clone, f"results/rl/{RL_RUN}/summary.json", extra_config=extra)
    _assert_retrained(clone, before, proc)
    report = json.loads((clone / f"results/models/{SFT}/merged/merge_report.json").read_text())
    assert report["adapter"].endswith("epoch_1")


def test_editing_reward_code_retrains_rl(clone):
    before = _rl_state(clone)
    reward = clone / "src/sft2rl/tasks/qa/reward.py"
    # a real change of the reward: rollouts later in a group earn a little more
    reward.write_text(reward.read_text() + (
        "\n\n_group_aware_details = group_aware_details\n\n\n"
        "def group_aware_details(responses, ground_truth, *args, **kwargs):  # edited\n"
        "    import dataclasses\n\n"
        "    details = _group_aware_details(responses, ground_truth, *args, **kwargs)\n"
        "    return [dataclasses.replace(d, reward=d.reward + 0.1 * i) for i, d in enumerate(details)]\n"))
    plan = smk(clone, *TABLES, dry=True)
    jobs = planned_jobs(plan.stdout + plan.stderr)
    # every RL run, every evaluation (they compute the reward) and the tables; nothing upstream
    assert set(jobs) == {"grpo", "evaluate", "ablation_table"}, jobs
    proc = smk(clone, f"results/rl/{RL_RUN}/summary.json")
    _assert_retrained(clone, before, proc)


def test_changing_format_bonus_retrains_rl(clone, tmp_path):
    before = _rl_state(clone)
    extra = write_config(tmp_path / "bonus.yaml", {"reward": {"format_bonus": 0.3}})
    proc = smk(clone, f"results/rl/{RL_RUN}/summary.json", extra_config=extra)
    # The reduced model (30 pretraining steps) never closes a tag within 24 tokens: every
    # rollout earns 0 under either bonus, so no advantage, no update, and the same export is
    # the right result. What the old bug broke is asserted: a new key, all steps trained anew.
    summary = _assert_retrained(clone, before, proc, new_weights=False)
    assert summary["run_key"] != before[0]["run_key"]
    assert "finished" in summary["start"]  # the guard saw a finished run and retrained it


def test_sample_prompts_rerun_only_samples(clone, tmp_path):
    extra = write_config(tmp_path / "samples.yaml", {"eval": {"sample_prompts": 3}})
    proc = smk(clone, *BUILT, extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert planned_jobs(proc.stdout + proc.stderr) == {"samples_model": 2, "samples": 1}


def test_plot_style_reruns_only_figures(clone):
    plots = clone / "src/sft2rl/plots.py"
    plots.write_text(plots.read_text().replace("DPI = 150", "DPI = 120"))
    proc = smk(clone, *BUILT, dry=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # and the stage table, which is read after the figures
    assert planned_jobs(proc.stdout + proc.stderr) == {"figures": 1, "stage_times": 1}


def test_moved_checkout_plans_nothing(finished, tmp_path):
    """A renamed folder or another mount point with its results: nothing to redo."""
    moved = tmp_path / "elsewhere" / "renamed-project"
    shutil.copytree(finished, moved, symlinks=True)  # what `mv` or `cp -a` gives (times kept)
    proc = smk(moved, *BUILT, dry=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_snakemake_report_builds(clone):
    """`snakemake --report results/report.html`: the figures and tables of the finished workflow."""
    proc = smk(clone, *BUILT, "--report", "results/report.html")
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (clone / "results/report.html").read_text(errors="replace")
    assert len(html) > 50_000
    for name in ("ablation_beta.csv", "ablation_sft_style.csv", "hedging_vs_beta.png", "risk_coverage.png",
                 "reward_curves.png", "stage_times.csv"):
        assert name in html, name


def test_real_data_on_the_tiny_base_runs_end_to_end(tmp_path):
    """model.base: tiny with data.synthetic_world: false (docs/qa.md's way to try real data on a
    laptop): the tiny base pretrains on the user's own SFT conversations and RL train rows, then
    SFT, merge and evaluation run. The user files arrive as Windows tools write them (UTF-8 with
    a byte-order mark, CRLF) and as parquet."""
    from sft2rl.io import read_jsonl, write_parquet
    from sft2rl.tasks.qa.world import build_world

    work = copy_checkout(tmp_path / "project")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    reduced = yaml.safe_load(REDUCED.read_text())
    world = build_world(dict(cfg["world"], **reduced["world"], seed=99), cfg["system_prompt"])
    user = work / "user"
    user.mkdir()
    lines = [json.dumps(r, ensure_ascii=False) for r in world["sft_rows"]]
    (user / "sft.jsonl").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    # a user's own rows carry no knowable label: evaluation splits easy/hard by the SFT model
    rl_rows = [dict(r, answer={k: v for k, v in r["answer"].items() if k != "knowable"}) for r in world["rl_rows"]]
    write_parquet(user / "rl.parquet", rl_rows)
    extra = write_config(tmp_path / "user.yaml", {"data": {
        "synthetic_world": False, "raw_sft": "user/sft.jsonl", "raw_rl": "user/rl.parquet"}})
    sft_run = SFT
    proc = smk(work, f"results/eval/{sft_run}/metrics.json", "results/eval/base/metrics.json", extra_config=extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # every other model's easy/hard groups are the SFT model's (its sampled group accuracy)
    ref = {r["index"]: r["group_accuracy"] for _, r in read_jsonl(work / f"results/eval/{sft_run}/answers.jsonl")}
    base = [r for _, r in read_jsonl(work / "results/eval/base/answers.jsonl")]
    assert [r["difficulty"] for r in base] == ["easy" if ref[r["index"]] >= 0.5 else "hard" for r in base]
    assert not (work / "data/raw/world_corpus.jsonl").exists()
    corpus = [r["text"] for _, r in read_jsonl(work / "data/processed/user_corpus.jsonl")]
    train = pq.read_table(work / "data/processed/rl/train.parquet").to_pylist()
    test = pq.read_table(work / "data/processed/rl/test.parquet").to_pylist()
    assert len(corpus) == len(world["sft_rows"]) + len(train)
    text = "\n".join(corpus)
    assert all(r["reward_model"]["ground_truth"] in text for r in train)
    # the RL test split's questions never enter pretraining
    assert not any(r["extra_info"]["question"] in text for r in test)
    metrics = json.loads((work / f"results/eval/{sft_run}/metrics.json").read_text())
    assert metrics["n_questions"] == len(test)
    # the paper describes the embedded world: refused on your own data before any job runs
    proc = smk(work, "paper/main.pdf", extra_config=extra, dry=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "paper/main.pdf describes the embedded synthetic world" in out, out[-3000:]
    pretrain = json.loads((work / "results/models/base/pretrain_metrics.json").read_text())
    assert pretrain["final_loss"] < pretrain["first_loss"]
    overlap = json.loads((work / "data/processed/rl/overlap.json").read_text())
    assert overlap["overlapping"] == 0 and overlap["test_rows"] == len(test) and overlap["policy"] == "refuse"
    # a test question also in the SFT file (it would reach SFT and the corpus): rl_data stops,
    # naming the RL file and the question, and leaves no split; drop removes it from the test
    # split, and every test question about an entity it names
    from sft2rl.tasks.qa.data import phrases_in

    asked = test[3]["extra_info"]["question"]
    named = phrases_in([asked], {r["extra_info"].get("entity") for r in test} - {None})
    leaked = [r["extra_info"]["question"] for r in test
              if r["extra_info"]["question"] == asked or r["extra_info"].get("entity") in named]
    with (user / "sft.jsonl").open("ab") as f:
        f.write(json.dumps({"messages": [{"role": "user", "content": f"  {asked.upper()} "},
                                         {"role": "assistant", "content": "x"}]}).encode() + b"\r\n")
    proc = smk(work, "data/processed/rl/test.parquet", extra_config=extra)
    assert proc.returncode != 0
    assert f"{len(leaked)} of {len(test)} test questions are seen in training (0 asked in the RL train split, 1 in " \
        f"the SFT source" in proc.stderr and asked in proc.stderr and "data.test_overlap" in proc.stderr, \
        proc.stderr[-3000:]
    by_entity = sum(r["extra_info"].get("entity") in named for r in test)
    assert f"; {by_entity} about an entity training names" in proc.stderr, proc.stderr[-3000:]
    assert not (work / "data/processed/rl/test.parquet").exists()
    drop = write_config(tmp_path / "drop.yaml", {"data": {
        "synthetic_world": False, "raw_sft": "user/sft.jsonl", "raw_rl": "user/rl.parquet", "test_overlap": "drop"}})
    proc = smk(work, "data/processed/rl/test.parquet", extra_config=drop)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = [r["extra_info"]["question"] for r in pq.read_table(work / "data/processed/rl/test.parquet").to_pylist()]
    assert kept == [r["extra_info"]["question"] for r in test if r["extra_info"]["question"] not in leaked]


#: Kill points of the interrupted run, in the order the workflow reaches them: the file whose
#: appearance triggers the kill, and the signals sent to the whole process group (Snakemake and
#: its jobs). SIGKILL is what the OOM killer sends; SIGTERM, then SIGKILL shortly after, is what
#: SLURM sends at a time limit. A job's log file appears when the job starts; the SFT and GRPO
#: points fall between two of their checkpoints, so those jobs must resume, not restart.
KILL_POINTS = [
    ("data (the world)", "results/logs/world.log", ("SIGKILL",)),
    ("base-model pretraining", "results/logs/base_model.log", ("SIGTERM", "SIGKILL")),
    ("SFT, after its first epoch", f"results/sft/{SFT}/resume/checkpoints/epoch_1/training_state.pt", ("SIGKILL",)),
    ("merge", f"results/logs/merge/{SFT}.log", ("SIGTERM", "SIGKILL")),
    ("GRPO, after step 2 of 4", f"results/rl/{RL_RUN}/checkpoints/step_2/trainer_state.json", ("SIGKILL",)),
    ("evaluation", f"results/logs/eval/{RL_RUN}.log", ("SIGTERM", "SIGKILL")),
    ("table writing", "results/logs/tables/beta.log", ("SIGKILL",)),
]


def test_killed_anywhere_and_rerun_gives_the_same_tables(finished, tmp_path):
    """Kill the running reduced workflow at each kill point, rerun it each time (`snakemake
    --unlock`, then the same command with --rerun-incomplete), and finish: the tables, every
    metrics.json and every trained policy equal the uninterrupted run's byte for byte, nothing
    under a finished name is partial, and the killed SFT and GRPO jobs resumed from their
    checkpoints. It is also the determinism check: every job here runs again, in another
    directory, so two runs of one config give the same tables (no separate clean rerun)."""
    import os
    import signal
    import time

    work = copy_checkout(tmp_path / "killed")
    base = [SNAKEMAKE, "--snakefile", str(work / "Snakefile"), "--directory", str(work), "--cores", "2"]
    conf = ["--configfile", str(work / "config.yaml"), str(REDUCED)]
    unlock, run = [*base, "--unlock", *conf], [*base, *TABLES, "--rerun-incomplete", *conf]
    survived = []
    for name, marker, signals in KILL_POINTS:
        subprocess.run(unlock, capture_output=True, cwd=work, check=True)
        # stderr to a file, not a pipe: nobody reads a pipe while the workflow runs, and a full
        # pipe blocks every job that writes to it (the marker would then never appear)
        err = tmp_path / f"killed-{len(survived)}.stderr"
        with open(err, "w") as err_f:
            proc = subprocess.Popen(run, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=err_f, text=True)
        deadline = time.time() + 900
        while not (work / marker).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, f"kill point '{name}': the workflow ended first: {err.read_text()[-3000:]}"
        assert (work / marker).exists(), f"kill point '{name}': no {marker} after 900 s: {err.read_text()[-3000:]}"
        for sig in signals:
            os.killpg(proc.pid, getattr(signal, sig))
            time.sleep(0.3)
        proc.wait()
        survived.append(name)
    subprocess.run(unlock, capture_output=True, cwd=work, check=True)
    final = subprocess.run(run, capture_output=True, text=True, cwd=work)
    assert final.returncode == 0, final.stderr[-4000:]
    assert survived == [k[0] for k in KILL_POINTS]
    outputs = sorted(p.relative_to(work) for p in (work / "results").rglob("*")
                     if p.suffix == ".csv" or p.name == "metrics.json")
    assert len([p for p in outputs if p.suffix == ".csv"]) >= len(TABLES)
    differ = [str(p) for p in outputs if (work / p).read_bytes() != (finished / p).read_bytes()]
    assert not differ, differ
    # resumed, not restarted: the steps each job ran after its kill
    sft_log = json.loads((work / f"results/sft/{SFT}/run_log.json").read_text())
    assert sft_log["resumed_after_epoch"] >= 1 and sft_log["steps_trained"] < sft_log["steps"]
    summary = json.loads((work / f"results/rl/{RL_RUN}/summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps_trained"] == 2, summary
    # the resumed GRPO run ends on the uninterrupted run's weights, bit for bit, as does every other
    finals = sorted(p.relative_to(work) for p in (work / "results/rl").glob("*/final/model.safetensors"))
    assert Path(f"results/rl/{RL_RUN}/final/model.safetensors") in finals and len(finals) > 1
    assert [p for p in finals if (work / p).read_bytes() != (finished / p).read_bytes()] == []
    # nothing half-written under a finished name: every parquet, json and model directory loads
    for p in (work / "results").rglob("*.json"):
        json.loads(p.read_text())
    for p in (work / "data").rglob("*.parquet"):
        pq.read_table(p)
    assert not [p for p in (work / "results").rglob("*") if p.name.startswith(".") and ".old-" in p.name]
    # a finished workflow plans nothing more
    dry = subprocess.run([*base, *TABLES, "-n", *conf], capture_output=True, text=True, cwd=work)
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_local_model_files_are_inputs(tmp_path):
    """model.base and med.patient as local directories: their files are the jobs' inputs, so new
    weights written into the same directory rerun what reads them (a directory input alone is
    compared by its own time, which rewriting a file inside leaves as it was); hidden paths are not."""
    work = copy_checkout(tmp_path / "project")
    for d in ("models/mybase", "models/patient"):
        (work / d / ".cache").mkdir(parents=True)
        for name in ("config.json", "model.safetensors", ".cache/lock"):
            (work / d / name).write_text("{}")
    extra = write_config(tmp_path / "local.yaml", {"model": {"base": "models/mybase"},
                                                   "med": {"patient": {"model": "models/patient"}}})
    proc = smk(work, "results/eval/base/metrics.json", "results/med/eval/base.json", extra_config=extra, dry=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for d in ("models/mybase", "models/patient"):
        assert f"{d}/model.safetensors" in out and f"{d}/config.json" in out, out[-3000:]
        assert f"{d}/.cache/lock" not in out
