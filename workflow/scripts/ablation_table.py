from sft2rl.logutil import script_errors
from sft2rl.tasks.qa.tables import build_table, write_table

with script_errors(snakemake) as log:
    frame = build_table(snakemake.wildcards.ablation, snakemake.params.groups, snakemake.params.bootstrap)
    write_table(frame, snakemake.output.csv, snakemake.output.tex)
    log.info("\n%s", frame.to_string())
