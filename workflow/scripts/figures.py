import os
from pathlib import Path

from sft2rl.logutil import script_errors
from sft2rl.plots import make_figures

with script_errors(snakemake) as log:
    out_dir = Path(snakemake.output[0]).parent
    tables = dict(zip(snakemake.params.ablations, snakemake.input.tables))
    written = make_figures(tables, snakemake.params.tensorboard, out_dir, smooth=snakemake.params.smooth,
                           answers=snakemake.params.answers, ci_level=snakemake.params.ci_level,
                           rl_train=snakemake.input.rl_train, reward=snakemake.params.reward,
                           group_size=snakemake.params.group_size)
    missing = sorted({os.path.normpath(p) for p in snakemake.output} - {os.path.normpath(p) for p in written})
    if missing:
        raise ValueError(f"figures not written: {missing}")
    for run, tb in snakemake.params.tensorboard.items():
        if not Path(tb).is_dir():
            log.warning("no TensorBoard directory for %s (%s): its curves are missing", run, tb)
    log.info("wrote %d figure files to %s", len(written), out_dir)
