# Stage 5: evaluation of any model (base, sft<N>_seed<S>, rl-...) on the RL test set.


rule evaluate:
    """Greedy and k sampled answers per test question; accuracy, format, proactive, reward."""
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
        eval={k: config["eval"][k] for k in EVAL_KEYS},
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
