"""The SLURM profile on a real (one-node, localhost) SLURM cluster: tests/slurm/cluster.sh up.

* the reduced headline pipeline (results/ablation_beta.csv) runs with
  --profile tests/slurm/profile, every job through sbatch, and its CSV equals the CSV of
  the same config run locally (--cores 2);
* a job that fails at run time is reported as failed, and a rerun with the fix submits
  only what did not finish;
* a GRPO job killed by SLURM at its time limit is resubmitted alone by the rerun and
  resumes from its last checkpoint.

Skipped when no SLURM node answers idle, except under CI (env CI set), where a missing
cluster is a failure: CI starts it with `tests/slurm/cluster.sh up` before the tests.
Per-job timings (submit to finish vs run time inside SLURM) are printed (pytest -s) and
written next to each run's log (<run>.timings.json). The last test checks the cluster
profile profiles/slurm/config.yaml and needs no cluster.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "tests" / "slurm" / "profile"
REDUCED = REPO / "tests" / "config" / "reduced.yaml"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TARGET = "results/ablation_beta.csv"
TIMEOUT = int(os.environ.get("SFT2RL_SLURM_TEST_TIMEOUT", "1800"))  # seconds per snakemake call


# ------------------------------------------------------------------ the cluster
def _node_states() -> list[str]:
    if shutil.which("sinfo") is None:
        return []
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    # exact states: "idle*" (not responding), "idle~" (powered off) do not count
    return out.stdout.split() if out.returncode == 0 else []


@pytest.fixture(scope="module")
def slurm_cluster():
    states = _node_states()
    if not any(s in ("idle", "mixed") for s in states):
        msg = (f"no idle SLURM node (sinfo: {states or 'no answer'}); start the test cluster with "
               "`tests/slurm/cluster.sh up` (as root)")
        if os.environ.get("CI"):
            pytest.fail("CI: " + msg, pytrace=False)
        pytest.skip(msg)


# ------------------------------------------------------------------ running snakemake
def _workdir(root: Path) -> Path:
    """A fresh working directory for the repository's Snakefile.

    config.yaml: the Snakefile's `configfile: "config.yaml"` is relative to the working
    directory. src: the rules list the package modules they run as inputs with paths
    relative to the working directory (src/sft2rl/<module>.py), so a link to the
    repository's src/ (nothing is copied).
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "config.yaml", root / "config.yaml")
    if not (root / "src").exists():
        (root / "src").symlink_to(REPO / "src")
    return root


def _text(log: Path) -> str:
    """A log's text; a job killed mid-write can leave a character cut in half."""
    return log.read_text(errors="replace")


class Run:
    def __init__(self, workdir: Path, proc: subprocess.CompletedProcess, seconds: float, log: Path):
        self.workdir, self.returncode, self.seconds, self.logfile = workdir, proc.returncode, seconds, log
        self.log = _text(log)
        # Snakemake's own lines: without the job logs it prints after a failure
        # (show-failed-logs), which contain the job's own "rule ...:" blocks
        self.main = re.sub(r"^Logfile [^\n]*:\n={40,}\n.*?^={40,}$", "", self.log, flags=re.S | re.M)

    def submitted(self) -> dict[int, str]:
        """Snakemake job id -> SLURM job id, from the executor's submission messages."""
        return {int(j): s for j, s in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", self.main)}

    def jobs(self) -> dict[int, dict]:
        """Per job of this run: rule, threads, cpus_per_task, submit / finish time (log stamps)."""
        jobs: dict[int, dict] = {}
        stamp, current = None, None
        for line in self.main.splitlines():
            m = re.match(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", line)
            if m:
                stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
                continue
            m = re.match(r"^(local)?rule (\w+):$", line)
            if m:
                current = {"rule": m.group(2), "local": bool(m.group(1)), "start": stamp, "threads": 1}
                continue
            if not line.startswith((" ", "\t")):
                current = None  # the job's block ended
            if current is not None:
                m = re.match(r"^\s+jobid: (\d+)$", line)
                if m:
                    jobs[int(m.group(1))] = current
                    continue
                m = re.match(r"^\s+threads: (\d+)$", line)
                if m:
                    current["threads"] = int(m.group(1))
                    continue
                m = re.search(r"^\s+resources: .*\bcpus_per_task=(\d+)", line)
                if m:
                    current["cpus_per_task"] = int(m.group(1))
                    continue
            m = re.match(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$", line)
            if m and int(m.group(1)) in jobs:
                jobs[int(m.group(1))]["end"] = stamp
        return jobs

    def planned(self) -> Counter:
        """The 'Job stats' table Snakemake prints before running: rule -> count."""
        m = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal\s+(\d+)", self.main, re.S)
        assert m, f"no Job stats table in {self.logfile}"
        counts = Counter({r: int(n) for r, n in (ln.split() for ln in m.group(1).splitlines())})
        assert sum(counts.values()) == int(m.group(2))
        return counts

    def slurm_logs(self) -> dict[str, Path]:
        """SLURM job id -> its log, under .snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<id>.log."""
        root = self.workdir / ".snakemake" / "slurm_logs"
        return {p.stem: p for p in root.rglob("*.log") if p.stem.isdigit()}


def snakemake(workdir: Path, targets: list[str], *args: str, configfiles=(REDUCED,), name="run") -> Run:
    log = workdir / f"{name}.log"
    # targets before --configfile, which takes several values
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args, *targets,
           "--configfile", *map(str, configfiles)]
    t0 = time.monotonic()
    with open(log, "w") as out:
        try:
            proc = subprocess.run(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            _cancel_run(log)
            raise
    return Run(workdir, proc, time.monotonic() - t0, log)


def _cancel_run(log: Path) -> None:
    """After a timeout: cancel what the killed snakemake left on the cluster (job name = run id)."""
    m = re.search(r"SLURM run ID: (\S+)", _text(log))
    if m:
        subprocess.run(["scancel", "--name", m.group(1)], check=False)


def slurm(workdir: Path, targets: list[str], *args: str, **kw) -> Run:
    return snakemake(workdir, targets, "--profile", str(PROFILE), *args, **kw)


def _fail_msg(run: Run) -> str:
    return f"snakemake exited {run.returncode}; log {run.logfile}:\n" + run.log[-4000:]


# ------------------------------------------------------------------ timings
def _elapsed(slurm_log: Path) -> list[float]:
    """'Elapsed time' lines of a job's SLURM log, in seconds: [inner snakemake (the rule, run
    by srun), outer snakemake (the batch script)]."""
    out = []
    for h, m, s in re.findall(r"Elapsed time: (\d+):(\d\d):(\d\d(?:\.\d+)?)", _text(slurm_log)):
        out.append(int(h) * 3600 + int(m) * 60 + float(s))
    return out


def timings(run: Run) -> list[dict]:
    jobs, submitted, logs = run.jobs(), run.submitted(), run.slurm_logs()
    rows = []
    for jid, slurm_id in sorted(submitted.items(), key=lambda kv: int(kv[1])):
        job = jobs[jid]
        el = _elapsed(logs[slurm_id]) if slurm_id in logs else []
        wall = (job["end"] - job["start"]).total_seconds() if job.get("end") and job.get("start") else None
        rows.append({"rule": job["rule"], "slurm_id": slurm_id, "submit_to_finish_s": wall,
                     "batch_script_s": el[-1] if el else None, "rule_s": el[0] if el else None})
    return rows


def _print_timings(title: str, run: Run, rows: list[dict]) -> None:
    print(f"\n{title}: {run.seconds:.1f} s wall, {len(rows)} SLURM jobs")
    print(f"  {'rule':16} {'slurm id':>8} {'submit->finish':>15} {'in SLURM':>9} {'rule':>7} {'overhead':>9}")
    for r in rows:
        over = r["submit_to_finish_s"] - r["rule_s"] if r["submit_to_finish_s"] is not None and r["rule_s"] else None
        f = lambda v: "-" if v is None else f"{v:.1f}"
        print(f"  {r['rule']:16} {r['slurm_id']:>8} {f(r['submit_to_finish_s']):>15} {f(r['batch_script_s']):>9} "
              f"{f(r['rule_s']):>7} {f(over):>9}")
    (run.workdir / f"{run.logfile.stem}.timings.json").write_text(json.dumps(rows, indent=1))


# ------------------------------------------------------------------ the headline pipeline
@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    wd = _workdir(tmp_path_factory.mktemp("slurm"))
    run = slurm(wd, [TARGET], name="slurm")
    assert run.returncode == 0, _fail_msg(run)
    _print_timings("SLURM run of " + TARGET, run, timings(run))
    return run


@pytest.fixture(scope="module")
def local_run(finished):
    """The same config run locally (--cores 2): the session's finished reduced QA workflow
    (conftest.py; test_pipeline's), which holds TARGET among its outputs."""
    from types import SimpleNamespace

    assert (finished / TARGET).is_file()
    return SimpleNamespace(workdir=finished)


@pytest.mark.slurm
def test_every_job_went_through_sbatch(slurm_run):
    run = slurm_run
    planned = run.planned()
    jobs = run.jobs()
    assert not [j for j in jobs.values() if j["local"]], "a job ran on the submit host, not through sbatch"
    assert Counter(j["rule"] for j in jobs.values()) == planned
    submitted = run.submitted()
    assert set(submitted) == set(jobs), "jobs without an sbatch submission"
    assert len(set(submitted.values())) == len(submitted) == sum(planned.values())
    # one kept SLURM log per job (slurm-keep-successful-logs), under the job's rule
    logs = run.slurm_logs()
    assert set(logs) == set(submitted.values())
    for jid, sid in submitted.items():
        rule = jobs[jid]["rule"]
        assert f"rule_{rule}" in logs[sid].relative_to(run.workdir).parts, (rule, logs[sid])
        assert re.search(rf"Finished jobid: \d+ \(Rule: {rule}\)", _text(logs[sid])), logs[sid]
    # each job asked SLURM for as many CPUs as its rule has threads
    for j in jobs.values():
        assert j.get("cpus_per_task") == j["threads"], j


@pytest.mark.slurm
def test_slurm_result_equals_local(slurm_run, local_run):
    got = pd.read_csv(slurm_run.workdir / TARGET)
    want = pd.read_csv(local_run.workdir / TARGET)
    assert list(got.columns) == list(want.columns)
    assert got.shape == want.shape and len(got) > 0
    metric_cols = [c for c in want.columns if c.endswith(("_mean", "_std"))]
    config_cols = [c for c in want.columns if c not in metric_cols]
    pd.testing.assert_frame_equal(got[config_cols], want[config_cols])
    differ = [c for c in metric_cols
              if not np.allclose(got[c].to_numpy(float), want[c].to_numpy(float), atol=1e-6, rtol=0, equal_nan=True)]
    assert not differ, f"metric columns differ between SLURM and local runs: {differ}"
    # the same, at full precision (the CSV rounds to 4 decimals): every evaluation
    # (the local run built the other QA tables too: it holds more evaluations)
    evals = sorted((slurm_run.workdir / "results" / "eval").glob("*/metrics.json"))
    assert len(evals) > 2
    for f in evals:
        b = json.loads(f.read_text())
        a = json.loads((local_run.workdir / f.relative_to(slurm_run.workdir)).read_text())
        assert a.keys() == b.keys()
        num = [k for k, v in a.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        off = [k for k in num if not np.isclose(a[k], b[k], atol=1e-6, rtol=0, equal_nan=True)]
        assert not off, f"{f.parent.name}: {[(k, a[k], b[k]) for k in off]}"
        assert {k: v for k, v in a.items() if k not in num} == {k: v for k, v in b.items() if k not in num}


# ------------------------------------------------------------------ failure and resume
@pytest.mark.slurm
def test_failed_job_is_reported_and_rerun_resumes(slurm_cluster, tmp_path):
    """rl_data fails at run time (a train fraction that leaves no test rows); world and
    sft_data finish. The rerun with the fix submits rl_data only."""
    wd = _workdir(tmp_path / "wd")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"train_fraction": 0.9999}}))
    targets = ["data/processed/rl/train.parquet", "data/processed/sft/n16_seed42/train.parquet"]

    first = slurm(wd, targets, "--keep-going", configfiles=(REDUCED, bad), name="fail")
    assert first.returncode != 0, "the broken rl_data job did not fail the run"
    jobs = first.jobs()
    rules = {jid: j["rule"] for jid, j in jobs.items()}
    assert sorted(rules.values()) == ["rl_data", "sft_data", "world"]
    assert set(first.submitted()) == set(rules)
    assert "Error in rule rl_data" in first.log
    (rl_id,) = [first.submitted()[j] for j, r in rules.items() if r == "rl_data"]
    assert re.search(rf"SLURM-job '{rl_id}' failed, SLURM status is: 'FAILED'", first.log), _fail_msg(first)
    assert "train_fraction" in _text(first.slurm_logs()[rl_id])  # the job's own error, in its SLURM log
    finished = {r for j, r in rules.items() if jobs[j].get("end")}
    assert finished == {"world", "sft_data"}
    assert (wd / targets[1]).exists() and not (wd / targets[0]).exists()

    second = slurm(wd, targets, configfiles=(REDUCED,), name="resume")
    assert second.returncode == 0, _fail_msg(second)
    assert [j["rule"] for j in second.jobs().values()] == ["rl_data"], "finished jobs were resubmitted"
    assert len(second.submitted()) == 1
    assert (wd / targets[0]).exists()
    _print_timings("failure run", first, timings(first))
    _print_timings("resume run", second, timings(second))


# ------------------------------------------------------------------ a time limit, and the resume
RL_RUN = "rl-sft16_seed42-beta0.3-seed1"
STEPS = 3000


@pytest.mark.slurm
def test_grpo_killed_at_its_time_limit_resumes_from_its_checkpoint(slurm_cluster, slurm_run, tmp_path):
    """A GRPO job whose runtime (1 minute) is too short is killed by SLURM (state TIMEOUT); the
    rerun (--rerun-incomplete, what profiles/slurm sets) resubmits that job alone and it
    continues from its last checkpoint to the planned steps."""
    # the chain up to the merged SFT model and the RL data: the headline run's (same config), in a
    # copy beside it (the code inputs are paths relative to the working directory, into this
    # repository: at another depth they would be other paths, and the chain would run again)
    wd = slurm_run.workdir.with_name(slurm_run.workdir.name + "-timelimit")
    shutil.rmtree(wd, ignore_errors=True)
    shutil.copytree(slurm_run.workdir, wd, symlinks=True)
    long = tmp_path / "long.yaml"
    # about 3 minutes of GRPO steps on the reduced config (0.06 s a step on 2 cores)
    long.write_text(yaml.safe_dump({"rl": {"total_steps": STEPS, "save_freq": 100}}))
    target = [f"results/rl/{RL_RUN}/summary.json"]
    prep = slurm(wd, [f"results/models/{RL_RUN.split('-')[1]}/merged", "data/processed/rl/train.parquet"],
                 configfiles=(REDUCED, long), name="prep")
    assert prep.returncode == 0, _fail_msg(prep)
    assert prep.submitted() == {}, "the copied chain was built again"

    first = slurm(wd, target, "--set-resources=grpo:runtime=1", configfiles=(REDUCED, long), name="timeout")
    assert first.returncode != 0, "the GRPO job was not stopped by its time limit"
    assert [j["rule"] for j in first.jobs().values()] == ["grpo"]
    (grpo_id,) = first.submitted().values()
    assert re.search(rf"SLURM-job '{grpo_id}' failed, SLURM status is: 'TIMEOUT'", first.log), _fail_msg(first)
    ckpts = sorted(int(p.name.split("_")[1]) for p in (wd / f"results/rl/{RL_RUN}/checkpoints").glob("step_*")
                   if (p / "trainer_state.json").is_file())
    assert ckpts and ckpts[-1] < STEPS, ckpts
    assert not (wd / target[0]).exists()

    second = slurm(wd, target, "--rerun-incomplete", configfiles=(REDUCED, long), name="after_timeout")
    assert second.returncode == 0, _fail_msg(second)
    assert [j["rule"] for j in second.jobs().values()] == ["grpo"], "finished jobs were resubmitted"
    summary = json.loads((wd / target[0]).read_text())
    assert summary["resumed_from_step"] == ckpts[-1], summary
    assert summary["steps_trained"] == STEPS - ckpts[-1] and summary["steps"] == STEPS
    _print_timings("time-limit run", first, timings(first))
    _print_timings("resume run", second, timings(second))


# ------------------------------------------------------------------ the cluster profile (no cluster needed)
def test_cluster_profile_is_consistent(tmp_path):
    """profiles/slurm: every rule named exists, each rule's CPUs equal its threads, and every
    job that asks for a GPU, of every task, goes to the GPU partition with the sizes of its
    QA counterpart (the games' and the medical model jobs were left on the CPU partition,
    where sbatch refuses a GPU). The GPU jobs are read from a dry run of `all` with
    local.gpus: 1, so a new model rule fails here until the profile names it."""
    prof = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert prof["executor"] == "slurm"
    wd = _workdir(tmp_path / "wd")
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["local"]["gpus"] = 1
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--snakefile", str(REPO / "Snakefile"),
                          "--directory", str(wd), "--cores", "64"], capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", dry.stdout, re.M)
    planned = {rule for rule, _ in jobs}
    gpu_rules = {rule for rule, res in jobs if re.search(r"\bgpu=1\b", res)}
    assert {"sft", "grpo", "game_sft", "game_rl", "game_play", "med_sft", "med_rl", "med_eval"} <= gpu_rules
    threads = prof.get("set-threads", {})
    resources = prof.get("set-resources", {})
    rules = planned | {"samples_model"}  # samples_model: the `samples` target with a model
    assert set(threads) <= rules and set(resources) <= rules, (set(threads) | set(resources)) - rules
    assert prof["default-resources"]["cpus_per_task"] == "threads"
    for rule, res in resources.items():
        if "cpus_per_task" in res:
            assert res["cpus_per_task"] == threads.get(rule), rule
    for rule in gpu_rules | {"samples_model"}:
        assert resources.get(rule, {}).get("slurm_partition") == "<gpu-partition>", rule
        assert threads[rule] >= 4, rule
    for task_rule, qa_rule in (("game_sft", "sft"), ("med_sft", "sft"), ("game_rl", "grpo"), ("med_rl", "grpo"),
                               ("med_rl_control", "grpo"), ("med_base_model", "base_model"),
                               ("game_play", "evaluate"), ("med_eval", "evaluate")):
        assert resources[task_rule] == resources[qa_rule], task_rule
    # GPUs come from the rules (config.yaml: verl.* or local.gpus); a profile value would override them,
    # and merge runs on the CPU
    assert not any("gpu" in res or "gres" in res for res in resources.values()), resources
    assert "slurm_partition" not in resources["merge"]
