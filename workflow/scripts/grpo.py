from pathlib import Path

from sft2rl.grpo import check_steps, export_final
from sft2rl.tasks.qa.rl import train_grpo
from sft2rl.io import write_json
from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.resume import mark_complete

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    run_dir = Path(snakemake.output.summary).parent
    cfg = snakemake.params.cfg
    summary = train_grpo(snakemake.params.init, snakemake.input.train, str(run_dir), cfg["rl"], cfg["reward"])
    check_steps(summary)
    summary["export"] = export_final(snakemake.params.init, summary, snakemake.output.final)
    write_json(snakemake.output.summary, summary)
    mark_complete(run_dir)
    log.info("GRPO done: %s steps (%d trained by this job), reward %.3f -> %.3f", summary["steps"],
             summary["steps_trained"], summary["reward_first10"] or 0.0, summary["reward_last10"] or 0.0)
