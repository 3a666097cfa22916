from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.games.play import evaluate_policy

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    rows = evaluate_policy(snakemake.wildcards.env, snakemake.wildcards.policy, snakemake.input.levels,
                           snakemake.params.model, snakemake.params.games, snakemake.params.eval,
                           snakemake.params.bootstrap, snakemake.output.episodes, snakemake.output.summary)
    for row in rows:
        log.info("%s %s %s: success %.3f [%.3f, %.3f]", row["env"], row["policy"], row["mode"], row["success"],
                 row["success_lo"], row["success_hi"])
