from sft2rl.io import write_json
from sft2rl.logutil import script_errors
from sft2rl.tasks.med.rl import random_doctor_curves

with script_errors(snakemake) as log:
    i = snakemake.input
    out = random_doctor_curves(i.train, i.val, i.world, snakemake.params.med, snakemake.params.seed)
    write_json(snakemake.output[0], out)
    log.info("random doctor on the RL curves' cases: val %s; train %s", out["val"], out["train"])
