"""The real workflow end to end on the reduced config (tests/config/reduced.yaml)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.integration
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
REDUCED = REPO / "tests" / "config" / "reduced.yaml"
TABLES = ["results/ablation_beta.csv", "results/ablation_sft_samples.csv", "results/ablation_sft.csv"]


def smk(workdir: Path, *targets: str, extra_config: Path | None = None, dry: bool = False):
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2",
           *(["-n"] if dry else []), *targets, "--configfile", str(workdir / "config.yaml"), str(REDUCED)]
    if extra_config:
        cmd.append(str(extra_config))
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def planned_jobs(output: str) -> dict[str, int]:
    m = re.search(r"Job stats:\njob\s+count\n-+\s+-+\n(.*?)\ntotal", output, re.S)
    if not m:
        return {}
    return {rule: int(n) for rule, n in (line.split() for line in m.group(1).strip().splitlines())}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    shutil.copy(REPO / "config.yaml", work / "config.yaml")
    proc = smk(work, *TABLES)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


def test_ablation_tables_contents(finished):
    cfg = yaml.safe_load(REDUCED.read_text())
    beta = pd.read_csv(finished / "results/ablation_beta.csv")
    assert list(beta["variant"]) == ["sft-only"] + [f"beta={b:g}" for b in cfg["ablations"]["beta"]]
    assert list(beta["kind"]) == ["sft-only", "rl", "rl"]
    assert list(beta["n_seeds"]) == [1, 1, 1]
    assert beta.loc[1:, "beta"].tolist() == cfg["ablations"]["beta"]
    for col in ["accuracy_mean", "format_rate_mean", "proactive_rate_unknowable_mean"]:
        assert beta[col].between(0, 1).all(), col
    assert beta["mean_reward_mean"].between(0, 1.1).all()
    # one seed: the std is undefined, not zero
    assert beta["mean_reward_std"].isna().all()
    samples = pd.read_csv(finished / "results/ablation_sft_samples.csv")
    assert list(samples["variant"]) == ["N=16 sft-only", "N=16"]
    assert samples["sft_samples"].tolist() == [16, 16]
    sft = pd.read_csv(finished / "results/ablation_sft.csv")
    assert list(sft["variant"]) == ["base-only", "sft-only", "RL from base", "RL from SFT"]
    assert list(sft["init"]) == ["base", "sft16_seed42", "base", "sft16_seed42"]
    # rows are the evaluations they claim to be
    import json

    sft_metrics = json.loads((finished / "results/eval/sft16_seed42/metrics.json").read_text())
    assert beta.loc[0, "accuracy_mean"] == pytest.approx(sft_metrics["accuracy"], abs=1e-4)
    rl_run = f"rl-sft16_seed42-beta{cfg['ablations']['beta'][0]:g}-seed1"
    rl_metrics = json.loads((finished / f"results/eval/{rl_run}/metrics.json").read_text())
    assert beta.loc[1, "mean_reward_mean"] == pytest.approx(rl_metrics["mean_reward"], abs=1e-4)
    assert (finished / "results/tables/ablation_beta.tex").read_text().count(r"\\") == 1 + 3
    # every training stage left its artefacts
    assert (finished / f"results/rl/{rl_run}/final/config.json").is_file()
    assert list((finished / f"results/rl/{rl_run}/tensorboard").glob("events.out.tfevents.*"))
    assert (finished / "results/models/sft16_seed42/merged/merge_report.json").is_file()


def test_finished_workflow_plans_nothing(finished):
    proc = smk(finished, *TABLES, dry=True)
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
