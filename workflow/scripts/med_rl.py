from pathlib import Path

from sft2rl.grpo import check_steps, export_final, train_rl
from sft2rl.io import write_json
from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.resume import mark_complete
from sft2rl.tasks.med.rl import MedTask

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    run_dir = Path(snakemake.output.summary).parent
    task = MedTask(snakemake.input.train, snakemake.input.val, snakemake.params.med, snakemake.wildcards.budget)
    summary = train_rl(snakemake.params.init, task, str(run_dir), snakemake.params.cfg)
    check_steps(summary)
    summary["export"] = export_final(snakemake.params.init, summary, snakemake.output.final)
    write_json(snakemake.output.summary, summary)
    mark_complete(run_dir)
    last = summary["last"] or {}
    log.info("medical RL (%s budget): %d steps, episode reward %.3f, val accuracy %s", snakemake.wildcards.budget,
             summary["steps"], last.get("episode_reward", float("nan")), last.get("val_accuracy"))
