from sft2rl.grpo import run_job
from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.med.rl import MedTask

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    task = MedTask(snakemake.input.train, snakemake.input.val, snakemake.params.med, snakemake.wildcards.budget)
    summary = run_job(snakemake.params.init, task, snakemake.params.cfg, snakemake.output.final,
                      snakemake.output.summary, sft_file=snakemake.input.get("sft") or None,
                      sft_loss_turns=snakemake.params.sft_loss_turns)
    last = summary["last"] or {}
    log.info("medical RL (%s budget%s): %d steps, episode reward %.3f, val accuracy %s", snakemake.wildcards.budget,
             ", no-signal control" if snakemake.params.cfg.get("shuffle_advantages") else "", summary["steps"],
             last.get("episode_reward", float("nan")), last.get("val_accuracy"))
