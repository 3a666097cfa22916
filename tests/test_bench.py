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
    assert (tmp_path / "ci.csv").is_file()
