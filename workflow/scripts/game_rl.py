from sft2rl.grpo import run_job
from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.games.rl import GamesTask

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    task = GamesTask(snakemake.wildcards.env, snakemake.input.levels, snakemake.params.games)
    summary = run_job(snakemake.params.init, task, snakemake.params.cfg, snakemake.output.final,
                      snakemake.output.summary, sft_file=snakemake.input.get("sft") or None,
                      sft_loss_turns=snakemake.params.sft_loss_turns)
    last = summary["last"] or {}
    log.info("games RL %s: %d steps, episode success %.3f, val success %s", snakemake.wildcards.env,
             summary["steps"], last.get("success", float("nan")), last.get("val_success"))
