# Stage 5: evaluation of any model (base, sft<N>_seed<S>, rl-...) on the RL test set.


def eval_model_input(wildcards):
    if wildcards.model == "base" and not TINY:
        return []
    return model_dir(wildcards.model)


def difficulty_ref(wildcards):
    """Unlabeled data: easy/hard split by the SFT model's sampled group accuracy."""
    if config["data"]["synthetic_world"] or wildcards.model == SFT_RUN:
        return []
    return f"results/eval/{SFT_RUN}/answers.jsonl"


rule evaluate:
    """Greedy and k sampled answers per test question; accuracy, format, proactive, reward."""
    input:
        model=eval_model_input,
        test=f"{PROCESSED}/rl/test.parquet",
        ref=difficulty_ref,
        code=code("evaluate", "reward", "generation"),
    output:
        answers="results/eval/{model}/answers.jsonl",
        metrics="results/eval/{model}/metrics.json",
    params:
        model=lambda wc: model_dir(wc.model),
        reward=config["reward"],
        eval=config["eval"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        "results/logs/eval/{model}.log",
    script:
        "../scripts/evaluate.py"
