# Stage 5: evaluation of any model (base, sft<N>_seed<S>, rl-...) on the RL test set.


rule evaluate:
    """Greedy and rl.n sampled answers per test question (the training group); accuracy,
    format, hedging against its kind-only baseline, reward on the sampled group."""
    input:
        model=eval_model_input,
        test=f"{PROCESSED}/rl/test.parquet",
        ref=difficulty_ref,
        code=code("evaluate"),
    output:
        answers="results/eval/{model}/answers.jsonl",
        metrics="results/eval/{model}/metrics.json",
    params:
        model=lambda wc: model_dir(wc.model),
        reward=config["reward"],
        eval=dict({k: config["eval"][k] for k in EVAL_KEYS}, k_samples=config["rl"]["n"],
                  max_prompt_length=config["rl"]["max_prompt_length"]),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        **LOCAL_GPU_RES,
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/eval/{model}.tsv",
    log:
        "results/logs/eval/{model}.log",
    script:
        "../scripts/evaluate.py"
