from sft2rl.io import write_json
from sft2rl.logutil import script_errors
from sft2rl.tasks.games.play import random_baselines

with script_errors(snakemake) as log:
    p = snakemake.params
    out = random_baselines(snakemake.input.levels, p.games, p.episodes)
    write_json(snakemake.output[0], out)
    log.info("random policy on %s's RL curve levels: %s", snakemake.wildcards.env, out)
