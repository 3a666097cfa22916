"""CI's reduced bench: the rollout engine's exactness (not its speed), through bench/rollout.py."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_reduced_rollout_bench_checks_exactness(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench/rollout.py"), "--quick", "--check", "--out", "ci"],
                          capture_output=True, text=True, env={"SFT2RL_BENCH_RESULTS": str(tmp_path),
                                                               "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads((tmp_path / "ci.json").read_text())
    ex = out["exactness"]
    assert ex["greedy_identical"] and ex["sampled_identical_same_seed"] and ex["exact"]
    assert ex["logprob_max_rel_diff"] < 1e-5
    assert ex["rows_stopping_early"] > 0, "the batch has rows that stop early (row dropping ran)"
    assert {r["engine"] for r in out["table"]} == {"generate", "lean", "lean_match_generate"}
    assert all(r["tokens_per_s"] > 0 for r in out["table"])
    # the speed-up is the tokens/s ratio (the engines sample different tokens), not a ratio of times
    base = next(r for r in out["table"] if r["engine"] == "generate")
    assert all(abs(r["speedup_vs_generate"] - r["tokens_per_s"] / base["tokens_per_s"]) < 1e-9 for r in out["table"])
    assert (tmp_path / "ci.csv").is_file()


def _gpu_check():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    return gpu_check


def test_gpu_check_builds_in_a_fresh_tree_and_reads_each_runs_figures(tmp_path, monkeypatch):
    """bench/gpu_check.py (the device machine's check): the tree it builds in holds the code and
    configs but nothing built (results, processed data, venv, carried wheels), and a GRPO run's
    figures come from its summary's per-step history (median step time without the warm-up step,
    the largest rollout/trainer log-prob gap, first and last reward)."""
    gc = _gpu_check()
    src = tmp_path / "repo"
    for f in ("Snakefile", "src/sft2rl/__init__.py", "tests/config/reduced.yaml", "bench/gpu_check.yaml",
              "data/raw/README.md", "data/processed/rl/train.parquet", "results/rl/x/summary.json",
              ".venv/bin/python", ".whl/a.whl", ".snakemake/log/x"):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text("x")
    monkeypatch.setattr(gc, "REPO", src)
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)  # an earlier check's tree is replaced
    gc.fresh_tree(work)
    got = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
    assert got == ["Snakefile", "bench/gpu_check.yaml", "data/raw/README.md", "src/sft2rl/__init__.py",
                   "tests/config/reduced.yaml"]

    hist = [{"step": i + 1, "step_seconds": s, "tokens_per_s": 100.0 * (i + 1), "reward_mean": r,
             "rollout_logprob_diff_max": d}
            for i, (s, r, d) in enumerate([(9.0, 0.1, 1e-6), (2.0, 0.2, 3e-3), (4.0, 0.3, 2e-6), (3.0, 0.5, 0.0)])]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"history": hist, "steps": 4, "seconds": 18.0, "train_mode": "full",
                                "precision": {"params": "torch.float32", "autocast": "torch.bfloat16"},
                                "last": {"val_success": 0.75}}))
    s = gc.run_summary(path)
    assert s["median_step_s"] == 3.0 and s["tokens_per_s_median"] == 250.0
    assert s["rollout_logprob_diff_max"] == 3e-3
    assert (s["reward_first"], s["reward_last"], s["val_success_last"]) == (0.1, 0.5, 0.75)
    assert s["precision"]["autocast"] == "torch.bfloat16"
