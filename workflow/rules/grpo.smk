# Stage 4: GRPO with the group-aware reward. Run names: rl-<init>-beta<b>-seed<s>,
# init being an SFT run (its merged model) or `base`. backend: verl defines `grpo` in verl.smk.


if config["backend"] == "local":

    rule grpo:
        """GRPO from the init model; checkpoints every save_freq steps, resumes after a kill. With
        rl.sft_coef > 0 each update also takes the SFT loss of the init model's SFT train rows."""
        input:
            init=lambda wc: base_input() if runs.parse_rl(wc.rl_run)["init"] == "base" else rl_init_dir(wc),
            train=f"{PROCESSED}/rl/train.parquet",
            sft=rl_sft_rows,
            code=code("grpo"),
        output:
            final=directory("results/rl/{rl_run}/final"),
            summary="results/rl/{rl_run}/summary.json",
        params:
            init=rl_init_dir,
            cfg=rl_params,
        threads: 1
        resources:
            mem_mb=4000,
            runtime=240,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/grpo/{rl_run}.tsv",
        log:
            "results/logs/grpo/{rl_run}.log",
        script:
            "../scripts/grpo.py"
