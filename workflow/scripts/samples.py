from sft2rl.logutil import script_errors
from sft2rl.resources import use_job_threads
from sft2rl.tasks.qa.evaluate import write_samples

with script_errors(snakemake) as log:
    use_job_threads(snakemake.threads)
    rate = write_samples(snakemake.params.model, snakemake.input.test, snakemake.output[0],
                         n=snakemake.params.n, max_new_tokens=snakemake.params.max_new_tokens,
                         seed=snakemake.params.seed, reward=snakemake.params.reward)
    print(f"{snakemake.wildcards.model}: well-formed (<think> + answer) {rate:.0%} of {snakemake.params.n} greedy samples")
