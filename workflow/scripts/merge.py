from sft2rl.logutil import script_errors
from sft2rl.merge import merge_adapter
from sft2rl.resources import use_job_threads
from sft2rl.sft import choose_checkpoint

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    ckpt = choose_checkpoint(snakemake.input.metrics.rsplit("/", 1)[0], snakemake.params.which)
    log.info("merging %s (%s checkpoint)", ckpt, snakemake.params.which)
    merge_adapter(snakemake.params.base, str(ckpt), snakemake.output[0])
