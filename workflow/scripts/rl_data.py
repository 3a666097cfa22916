from sft2rl.logutil import script_errors
from sft2rl.tasks.qa.data import process_rl

with script_errors(snakemake) as log:
    counts = process_rl(
        snakemake.input[0], snakemake.output.train, snakemake.output.test,
        system_prompt=snakemake.params.system_prompt, data_source=snakemake.params.data_source,
        train_fraction=snakemake.params.train_fraction, seed=snakemake.params.seed,
        sft=snakemake.input.sft, test_overlap_policy=snakemake.params.test_overlap,
        out_overlap=snakemake.output.overlap, corpus=snakemake.input.corpus or None,
    )
    log.info("rl data: %s", counts)
