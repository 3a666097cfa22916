from sft2rl import TAG_TOKENS
from sft2rl.logutil import script_errors
from sft2rl.model import build_base
from sft2rl.resources import use_job_threads

with script_errors(snakemake) as log:
    log.info("threads: %d", use_job_threads(snakemake.threads))
    build_base(snakemake.input.corpus, snakemake.output[0], snakemake.params.tiny,
               snakemake.params.pretrain, snakemake.params.tensorboard,
               tuple(getattr(snakemake.params, "added_tokens", TAG_TOKENS)),
               sft_rows=list(getattr(snakemake.input, "sft_rows", []) or []),
               overlong=getattr(snakemake.params, "overlong", "error"),
               loss_turns=getattr(snakemake.params, "loss_turns", "all"))
