from sft2rl.io import write_jsonl
from sft2rl.logutil import script_errors
from sft2rl.tasks.med import THINKING, data

with script_errors(snakemake) as log:
    out = snakemake.output
    if snakemake.rule == "med_world":
        counts = data.write_clinic_data(snakemake.params.world, out.train.rsplit("/", 1)[0], out.corpus,
                                        snakemake.params.max_turns)
        log.info("synthetic clinic: raw rows per split %s", counts)
    elif snakemake.rule == "med_corpus":
        docs = data.corpus_from_rows(data.load_raw(snakemake.input.train))
        write_jsonl(out[0], [{"text": d} for d in docs])
        log.info("corpus: %d train dialogues", len(docs))
    elif snakemake.rule == "med_data":
        thinking = snakemake.wildcards.thinking
        counts = data.write_sft_data(snakemake.input.train, snakemake.input.val, THINKING[thinking],
                                     out.train.rsplit("/", 1)[0], snakemake.params.budget,
                                     snakemake.params.rows)
        log.info("%s: SFT rows %s", thinking, counts)
    elif snakemake.rule == "med_cases":  # the held-out cases, new to the training files
        n = data.write_cases(snakemake.input.rows, out[0], policy=snakemake.params.test_overlap,
                             training={"train": snakemake.input.train, "val": snakemake.input.val},
                             overlap_out=out.overlap)
        log.info("%s: %d held-out cases", out[0], n)
    else:  # med_rl_cases (train and val: RL's)
        log.info("%s: %d cases", out[0], data.write_cases(snakemake.input.rows, out[0]))
