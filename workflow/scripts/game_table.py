from sft2rl.logutil import script_errors
from sft2rl.tasks.games import table

with script_errors(snakemake) as log:
    if snakemake.rule == "game_table":
        frame = table.write_table(snakemake.input.summaries, snakemake.output.csv, snakemake.output.tex)
        log.info("games table: %d rows", len(frame))
    else:  # game_figure
        table.success_figure(snakemake.input.csv, snakemake.output)
