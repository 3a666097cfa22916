from pathlib import Path

from sft2rl.io import write_jsonl
from sft2rl.logutil import script_errors
from sft2rl.tasks.games import data

with script_errors(snakemake) as log:
    if snakemake.rule == "game_data":
        env = snakemake.wildcards.env
        counts = data.write_game_data(env, snakemake.params.games, Path(snakemake.output.levels).parent)
        log.info("%s: rows per split %s", env, counts)
    elif snakemake.rule == "game_user_rows":
        p = snakemake.params
        counts = data.write_user_rows(snakemake.input.train, snakemake.input.val, Path(snakemake.output.train).parent,
                                      levels=snakemake.input.levels, max_steps=p.max_steps, style=p.style,
                                      policy=p.test_overlap, overlap_out=snakemake.output.overlap)
        log.info("%s: user rows %s", snakemake.wildcards.env, counts)
    elif snakemake.rule == "game_sft_levels_data":
        n = data.write_level_subset_rows(snakemake.input.levels, snakemake.params.games,
                                         int(snakemake.wildcards.n), snakemake.output.train)
        log.info("%s: %d SFT rows from the first %s train levels", snakemake.wildcards.env, n, snakemake.wildcards.n)
    else:  # game_corpus
        docs = []
        for path in snakemake.input.levels:
            levels = data.read_levels(path)
            docs += data.corpus_texts(levels, snakemake.params.games[levels[0]["env"]],
                                      **snakemake.params.corpus)
        write_jsonl(snakemake.output[0], [{"text": d} for d in docs])
        log.info("game corpus: %d documents (train levels only)", len(docs))
