from sft2rl.logutil import script_errors
from sft2rl.tasks.games import table

with script_errors(snakemake) as log:
    if snakemake.rule == "game_table":
        frame = table.write_table(snakemake.input.summaries, snakemake.output.csv, snakemake.output.tex)
        log.info("games table: %d rows", len(frame))
    elif snakemake.rule == "game_rl_table":
        i, envs = snakemake.input, snakemake.params.envs
        keys = ("sft", "sft_episodes", "rl", "rl_episodes", "random", "train")
        rows = [row for k, env in enumerate(envs)
                for row in table.rl_rows(env, {key: i[key][k] for key in keys}, snakemake.params.bootstrap)]
        frame = table.write_rl_table(rows, snakemake.output.csv, snakemake.output.tex)
        table.rl_curve_figure(dict(zip(envs, i.train)), snakemake.output.figure)
        log.info("games RL table: %d rows", len(frame))
    else:  # game_figure
        table.success_figure(snakemake.input.csv, snakemake.output)
