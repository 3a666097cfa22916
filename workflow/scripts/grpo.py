from sft2rl.grpo import run_job
from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.qa.rl import QATask

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    cfg = snakemake.params.cfg
    summary = run_job(snakemake.params.init, QATask(snakemake.input.train, cfg["reward"]), cfg["rl"],
                      snakemake.output.final, snakemake.output.summary, sft_file=snakemake.input.get("sft") or None,
                      sft_loss_turns="all")  # QA SFT trains every assistant turn
    log.info("GRPO done: %s steps (%d trained by this job), reward %.3f -> %.3f", summary["steps"],
             summary["steps_trained"], summary["reward_first10"] or 0.0, summary["reward_last10"] or 0.0)
