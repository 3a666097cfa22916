# Stage 3: LoRA SFT warm-up and the verified merge. Run names: sft<N>_seed<S>.
# backend: local defines the rules here; backend: verl defines them in verl.smk.
SFT_PARAMS = {k: v for k, v in config["sft"].items() if k not in ("n_samples", "merge_checkpoint")}


if config["backend"] == "local":

    rule sft:
        """LoRA SFT of the base model on N sampled conversations; one adapter checkpoint per epoch."""
        input:
            unpack(sft_data),
            base=base_input,
            code=code("sft"),
        output:
            checkpoints=directory("results/sft/{sft_run}/checkpoints"),
            metrics="results/sft/{sft_run}/metrics.json",
        params:
            base=BASE_DIR,
            sft=SFT_PARAMS,
            seed=lambda wc: runs.parse_sft(wc.sft_run)["seed"],  # a QA run carries its seed in its name
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/sft/{sft_run}.tsv",
        log:
            "results/logs/sft/{sft_run}.log",
        script:
            "../scripts/sft.py"

    rule merge:
        """Fold the chosen adapter checkpoint into the base; refuse a merge that changed nothing."""
        input:
            checkpoints="results/sft/{sft_run}/checkpoints",
            metrics="results/sft/{sft_run}/metrics.json",
            base=base_input,
            code=code("merge"),
        output:
            directory("results/models/{sft_run}/merged"),
        params:
            base=BASE_DIR,
            which=config["sft"]["merge_checkpoint"],
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/merge/{sft_run}.tsv",
        log:
            "results/logs/merge/{sft_run}.log",
        script:
            "../scripts/merge.py"


rule samples_model:
    """Generations of one model for a handful of test prompts, with the tag-usage rate."""
    input:
        model=lambda wc: base_input() if wc.model == "base" else model_dir(wc.model),
        test=f"{PROCESSED}/rl/test.parquet",
        code=code("samples"),
    output:
        "results/samples/{model}.jsonl",
    params:
        model=lambda wc: model_dir(wc.model),
        n=config["eval"]["sample_prompts"],
        max_new_tokens=config["eval"]["max_new_tokens"],
        seed=config["eval"]["seed"],
        reward=config["reward"],
    threads: 1
    resources:
        **LOCAL_GPU_RES,
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/samples/{model}.tsv",
    log:
        "results/logs/samples/{model}.log",
    script:
        "../scripts/samples.py"


rule samples:
    """Check that SFT worked: samples of the base and the default SFT model."""
    input:
        expand("results/samples/{model}.jsonl", model=["base", SFT_RUN]),
