from pathlib import Path

from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.sft import train_sft
from sft2rl.tasks.qa import runs

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    run_dir = Path(snakemake.output.metrics).parent
    seed = getattr(snakemake.params, "seed", None)  # the game rules name it; the QA runs carry it in their name
    cfg = dict(snakemake.params.sft, seed=runs.parse_sft(snakemake.wildcards.sft_run)["seed"] if seed is None else seed)
    train_sft(snakemake.params.base, snakemake.input.train, snakemake.input.val, str(run_dir), cfg)
