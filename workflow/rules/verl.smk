# Stage 3/4 on verl (backend: verl): SFT with verl.trainer.sft_trainer, GRPO with main_ppo.
# Same rule names and outputs as sft.smk / grpo.smk (which define them for backend: local);
# the shell commands are generated at DAG time by sft2rl.verl_launch from the config, so
#   snakemake -n -p results/ablation_beta.csv --config backend=verl
# prints every torchrun / main_ppo / model_merger line. verl needs GPUs (vLLM rollouts).
from sft2rl import verl_launch

VERL = verl_launch.verl_settings(config)
# the checkout as the job sees it: $PWD (the working directory) plus a relative path, so the
# commands (and with them the params Snakemake compares) do not change when the project moves
CODE_ROOT = "$PWD" if os.path.relpath(workflow.basedir) == "." else f"$PWD/{os.path.relpath(workflow.basedir)}"
#: the RL jobs on several nodes start Ray through workflow/scripts/ray_on_slurm.sh: one of their inputs
VERL_RAY = ["ray_on_slurm"] if int(VERL["nnodes"]) > 1 else []


if config["backend"] == "verl":

    rule sft:
        """LoRA SFT with verl's SFT trainer (torchrun); a checkpoint and a val loss per epoch."""
        input:
            unpack(sft_data),
            base=base_input,
            code=code("verl_export", modules=["verl_sft_data"]),
        output:
            checkpoints=directory("results/sft/{sft_run}/checkpoints"),
            metrics="results/sft/{sft_run}/metrics.json",
        params:
            cmd=lambda wc, input, resources: verl_launch.sft_command(
                sft_run=wc.sft_run,
                base=BASE_DIR,
                train=input.train,
                val=input.val,
                sft=SFT_PARAMS,
                seed=runs.parse_sft(wc.sft_run)["seed"],
                nnodes=resources.nodes,
                gpus_per_node=verl_launch.gpus_per_node(resources),
                code_root=CODE_ROOT,
                rdzv_port=VERL["rdzv_port"],
            ),
        threads: VERL["cpus_per_node"]
        resources:
            **verl_launch.job_resources(VERL, VERL["sft_runtime"]),
        conda:
            "../../envs/verl.yaml"
        benchmark:
            "results/benchmarks/sft/{sft_run}.tsv",
        log:
            "results/logs/sft/{sft_run}.log",
        shell:
            "( {params.cmd} ) > {log} 2>&1"

    rule merge:
        """verl's model merger on the chosen step, then our verified LoRA fold-in (sft2rl.merge)."""
        input:
            checkpoints="results/sft/{sft_run}/checkpoints",
            metrics="results/sft/{sft_run}/metrics.json",
            base=base_input,
            code=code("verl_export"),
        output:
            directory("results/models/{sft_run}/merged"),
        params:
            cmd=lambda wc, output: verl_launch.merge_command(
                sft_run=wc.sft_run,
                which=config["sft"]["merge_checkpoint"],
                base=BASE_DIR,
                out_dir=output[0],
                code_root=CODE_ROOT,
                train_mode=config["sft"].get("train_mode", "lora"),
            ),
        threads: 2
        resources:
            mem_mb=VERL["mem_mb"],
            runtime=60,
        conda:
            "../../envs/verl.yaml"
        benchmark:
            "results/benchmarks/merge/{sft_run}.tsv",
        log:
            "results/logs/merge/{sft_run}.log",
        shell:
            "( {params.cmd} ) > {log} 2>&1"

    rule grpo:
        """GRPO with verl's main_ppo (Ray, vLLM rollouts), group-aware reward via sft2rl.tasks.qa.verl_hooks;
        then the last checkpoint as a verified HF directory and summary.json."""
        input:
            init=lambda wc: base_input() if runs.parse_rl(wc.rl_run)["init"] == "base" else rl_init_dir(wc),
            train=f"{PROCESSED}/rl/train.parquet",
            code=code("verl_export", *VERL_RAY, modules=["tasks.qa.verl_hooks"]),
        output:
            final=directory("results/rl/{rl_run}/final"),
            summary="results/rl/{rl_run}/summary.json",
        params:
            cmd=lambda wc, input, output, resources: verl_launch.grpo_command(
                rl_run=wc.rl_run,
                init=rl_init_dir(wc),
                train=input.train,
                rl=rl_params(wc)["rl"],
                reward=rl_params(wc)["reward"],
                verl=VERL,
                nnodes=resources.nodes,
                gpus_per_node=verl_launch.gpus_per_node(resources),
                code_root=CODE_ROOT,
                final=output.final,
                summary=output.summary,
            ),
        threads: VERL["cpus_per_node"]
        resources:
            **verl_launch.job_resources(VERL, VERL["grpo_runtime"]),
        conda:
            "../../envs/verl.yaml"
        benchmark:
            "results/benchmarks/grpo/{rl_run}.tsv",
        log:
            "results/logs/grpo/{rl_run}.log",
        shell:
            "( {params.cmd} ) > {log} 2>&1"
