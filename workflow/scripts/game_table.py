from sft2rl.logutil import script_errors
from sft2rl.tasks.games import table

with script_errors(snakemake) as log:
    if snakemake.rule == "game_table":
        frame = table.write_table(snakemake.input.summaries, snakemake.output.csv, snakemake.output.tex,
                                  snakemake.params.ci_level)
        log.info("games table: %d rows", len(frame))
    elif snakemake.rule == "game_rl_table":
        i, envs = snakemake.input, snakemake.params.envs
        keys = ("sft", "sft_episodes", "rl", "rl_episodes", "random", "train")
        rows = [row for k, env in enumerate(envs)
                for row in table.rl_rows(env, {key: i[key][k] for key in keys}, snakemake.params.bootstrap)]
        frame = table.write_rl_table(rows, snakemake.output.csv, snakemake.output.tex,
                                     snakemake.params.bootstrap["ci_level"])
        import json
        from pathlib import Path

        random = {env: json.loads(Path(f).read_text()) for env, f in zip(envs, i.random_curves)}
        table.rl_curve_figure(dict(zip(envs, i.train)), snakemake.output.figure, random)
        log.info("games RL table: %d rows", len(frame))
    elif snakemake.rule == "game_ablation_rl_init":
        import pyarrow.parquet as pq

        i, p = snakemake.input, snakemake.params
        abl, main, rnd = iter(i.abl), iter(i.main), dict(zip(p.envs, i.random))
        abl_rows, main_rows = iter(i.abl_rows), dict(zip(p.envs, i.main_rows))
        keys = ("sft", "sft_episodes", "rl", "rl_episodes", "train")
        rows = []
        for env in p.envs:
            runs = [(n, dict(zip(keys, [next(abl) for _ in keys])), next(abl_rows)) for n in p.sft_levels]
            runs.append((p.all_levels, dict(zip(keys, [next(main) for _ in keys])), main_rows[env]))
            for n, files, sft_rows in runs:
                for row in table.rl_rows(env, dict(files, random=rnd[env]), p.bootstrap):
                    rows.append(dict(row, sft_levels=n, sft_rows=pq.ParquetFile(sft_rows).metadata.num_rows))
        frame = table.write_ablation_rl_init(rows, snakemake.output.csv, snakemake.output.tex, p.bootstrap["ci_level"])
        log.info("games RL-init ablation: %d rows", len(frame))
    else:  # game_figure
        table.success_figure(snakemake.input.csv, snakemake.output, snakemake.params.ci_level)
