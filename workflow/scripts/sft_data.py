from sft2rl.logutil import script_errors
from sft2rl.tasks.qa.data import process_sft

with script_errors(snakemake) as log:
    counts = process_sft(
        snakemake.input[0], snakemake.output.jsonl, snakemake.output.train, snakemake.output.val,
        n=int(snakemake.wildcards.n), seed=int(snakemake.wildcards.seed),
        val_size=snakemake.params.val_size, with_thinking=snakemake.params.with_thinking,
    )
    log.info("sft data: %s", counts)
