from sft2rl.io import write_jsonl
from sft2rl.logutil import script_errors
from sft2rl.tasks.qa.data import user_corpus

with script_errors(snakemake) as log:
    docs = user_corpus(snakemake.input.sft, snakemake.input.rl_train)
    write_jsonl(snakemake.output[0], [{"text": d} for d in docs])
    log.info("pretraining corpus from your files: %d documents", len(docs))
