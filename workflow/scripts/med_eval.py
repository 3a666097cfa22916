from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.med.consult import evaluate_doctor

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    p = snakemake.params
    sampled = p.get("sampled", False)
    rows = evaluate_doctor(snakemake.wildcards.doctor, snakemake.input.cases, (snakemake.input.world or [None])[0],
                           p.model, p.with_thinking, p.eval, p.world, p.ci_level,
                           snakemake.output.consultations, snakemake.output.get("summary"), p.patient, p.reward,
                           sampled=sampled)
    for row in rows:
        # sampled: the k consultations of a case are not independent; rl_eval.csv bootstraps over cases
        interval = f" (sampled, k={row['k_samples']})" if sampled else \
            f" [{row['accuracy_lo']:.3f}, {row['accuracy_hi']:.3f}]"
        log.info("%s %s: accuracy %.3f%s, diagnosis ROUGE-L %.3f, turns %.2f, reward %.2f", row["doctor"],
                 row["category"], row["accuracy"], interval, row["diag_rougeL"], row["turns"], row["reward"])
