"""Per-stage times from Snakemake benchmark files (sft2rl.stages)."""
from sft2rl.stages import collect, markdown, summarize

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _tsv(path, s, rss, cpu):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_collect_and_summarize(tmp_path):
    b = tmp_path / "benchmarks"
    _tsv(b / "base_model.tsv", 120.5, 900.0, 230.0)
    _tsv(b / "grpo/rl-a-seed1.tsv", 30.0, 1200.0, 29.0)
    _tsv(b / "grpo/rl-a-seed2.tsv", 40.0, 1300.0, 39.0)
    _tsv(b / "world.tsv", 0.5, "-", 0.4)
    _tsv(b / "games/sft-sokoban-seed1.tsv", 10.0, 700.0, 9.0)
    _tsv(b / "games/user_rows_frozenlake.tsv", 1.0, 100.0, 1.0)
    _tsv(b / "med/eval_scripted.tsv", 2.0, 300.0, 2.0)
    (b / "empty.tsv").write_text(HEADER)
    rows = collect(b)
    assert {(r["stage"], r["job"]) for r in rows} == {
        ("base_model", ""), ("grpo", "rl-a-seed1"), ("grpo", "rl-a-seed2"), ("world", ""),
        ("games/sft", "sokoban-seed1"), ("games/user_rows", "frozenlake"), ("med/eval", "scripted")}
    summary = summarize(rows)
    assert [r["stage"] for r in summary] == ["world", "base_model", "grpo", "games/sft", "games/user_rows",
                                             "med/eval"]
    grpo = next(r for r in summary if r["stage"] == "grpo")
    assert grpo == {"stage": "grpo", "jobs": 2, "total_s": 70.0, "max_job_s": 40.0, "cpu_s": 68.0,
                    "peak_rss_mb": 1300}
    world = next(r for r in summary if r["stage"] == "world")
    assert world["peak_rss_mb"] is None  # Snakemake's "-" (not measured) is not a zero
    md = markdown(summary)
    assert "| grpo | 2 | 70 | 40 | 1300 |" in md and "| world | 1 | 0.5 | 0.5 | – |" in md
