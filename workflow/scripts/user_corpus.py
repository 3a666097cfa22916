from sft2rl.data import user_corpus
from sft2rl.io import write_jsonl
from sft2rl.logutil import script_errors

with script_errors(snakemake) as log:
    docs = user_corpus(snakemake.input.sft, snakemake.input.rl_train)
    write_jsonl(snakemake.output[0], [{"text": d} for d in docs])
    log.info("pretraining corpus from your files: %d documents", len(docs))
