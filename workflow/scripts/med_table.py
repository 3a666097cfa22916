from sft2rl.logutil import script_errors
from sft2rl.tasks.med import table

with script_errors(snakemake) as log:
    if snakemake.rule == "med_table":
        frame, ablation = table.write_tables(snakemake.input.summaries, snakemake.params.doctors,
                                             snakemake.params.runs, snakemake.output,
                                             list(snakemake.input.consultations), snakemake.params.bootstrap)
        log.info("med tables: %d rows, ablation %d rows", len(frame), len(ablation))
    else:  # med_figure
        table.figure(snakemake.input.eval, snakemake.input.ablation, snakemake.output, snakemake.params.ci_level)
