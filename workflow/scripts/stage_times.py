from pathlib import Path

from sft2rl.io import atomic_file
from sft2rl.logutil import script_errors
from sft2rl.stages import collect, markdown, summarize, write_csv

with script_errors(snakemake) as log:
    summary = summarize(collect(snakemake.params.benchmarks))
    write_csv(summary, snakemake.output.csv)
    with atomic_file(snakemake.output.md) as tmp:
        Path(tmp).write_text(markdown(summary))
    log.info("%d stages, %.0f s of jobs in all", len(summary), sum(r["total_s"] for r in summary))
