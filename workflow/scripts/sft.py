from pathlib import Path

from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.sft import train_sft

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    run_dir = Path(snakemake.output.metrics).parent
    cfg = dict(snakemake.params.sft, seed=snakemake.params.seed)  # every SFT rule names its run's seed
    train_sft(snakemake.params.base, snakemake.input.train, snakemake.input.val, str(run_dir), cfg)
