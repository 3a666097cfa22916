from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.med.consult import evaluate_doctor

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    p = snakemake.params
    rows = evaluate_doctor(snakemake.wildcards.doctor, snakemake.input.cases, (snakemake.input.world or [None])[0],
                           p.model, p.with_thinking, p.eval, p.world, p.ci_level,
                           snakemake.output.consultations, snakemake.output.summary, p.patient, p.reward)
    for row in rows:
        log.info("%s %s: accuracy %.3f [%.3f, %.3f], diagnosis ROUGE-L %.3f, turns %.2f", row["doctor"],
                 row["category"], row["accuracy"], row["accuracy_lo"], row["accuracy_hi"], row["diag_rougeL"],
                 row["turns"])
