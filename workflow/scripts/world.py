from sft2rl.io import write_json, write_jsonl
from sft2rl.logutil import script_errors
from sft2rl.tasks.qa.world import build_world

with script_errors(snakemake) as log:
    world = build_world(snakemake.params.world, snakemake.params.system_prompt)
    write_jsonl(snakemake.output.sft, world["sft_rows"])
    for style, rows in world["sft_rows_by_style"].items():  # the style ablation's SFT sources
        write_jsonl(getattr(snakemake.output, f"sft_{style}"), rows)
    write_jsonl(snakemake.output.rl, world["rl_rows"])
    write_jsonl(snakemake.output.corpus, world["corpus"])
    write_json(snakemake.output.meta, world["meta"])
    log.info("world: %s", world["meta"]["counts"])
