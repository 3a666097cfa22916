from pathlib import Path

from sft2rl import runs
from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.sft import train_sft

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    run_dir = Path(snakemake.output.metrics).parent
    seed = snakemake.params.seed if hasattr(snakemake.params, "seed") else runs.parse_sft(snakemake.wildcards.sft_run)["seed"]
    cfg = dict(snakemake.params.sft, seed=seed)
    train_sft(snakemake.params.base, snakemake.input.train, snakemake.input.val, str(run_dir), cfg)
