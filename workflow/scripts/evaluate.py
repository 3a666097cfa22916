from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.qa.evaluate import evaluate_model

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    e = snakemake.params.eval
    metrics = evaluate_model(
        snakemake.params.model, snakemake.input.test, snakemake.output.answers, snakemake.output.metrics,
        reward=snakemake.params.reward, max_new_tokens=e["max_new_tokens"], batch_size=e["batch_size"],
        k_samples=e["k_samples"], temperature=e["temperature"], top_p=e["top_p"], seed=e["seed"],
        difficulty_ref=snakemake.input.ref[0] if snakemake.input.ref else None,
        max_prompt_length=e["max_prompt_length"],
    )
    log.info("eval %s: %s", snakemake.wildcards.model, metrics)
