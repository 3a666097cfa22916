# Multi-turn medical consultation (SPEC section C). Everything about it is in
# src/sft2rl/tasks/med/ and here; the SFT and merge stages are the shared ones.
#   synthetic clinic (or your MTMedDialog files) -> rows with/without think -> (tiny base) ->
#   LoRA SFT <run_name>-{think,nothink}-seed<S> (loss on the doctor's reply) -> verified merge
#   into results/models/<run>/merged -> consultations with the simulated patient -> tables
#   snakemake --cores all results/med/eval.csv results/med/ablation_thinking.csv
import re as _re

MED = config["med"]
MED_SYNTH = not MED["raw_files"]
MED_RAW = MED["raw_files"] or {s: f"data/raw/med/{s}.jsonl" for s in ("train", "val", "test")}
MED_DATA = f"{PROCESSED}/med"
MED_BASE = "results/med/models/base" if TINY else config["model"]["base"]
#: the sft: section with the doctor runs' overrides; the loss is on the last (the doctor's) turn only
MED_SFT = dict(
    {k: v for k, v in config["sft"].items() if k not in ("n_samples", "val_size", "merge_checkpoint", "with_thinking")},
    **{k: v for k, v in MED["sft"].items() if k not in ("merge_checkpoint", "with_thinking", "seed")},
    loss_turns="last",
)
MED_MERGE = MED["sft"].get("merge_checkpoint", config["sft"]["merge_checkpoint"])
MED_TAGS = ["think" if t else "nothink" for t in MED["with_thinking"]]
def med_run(tag, seed):
    return f"{MED['run_name']}-{tag}-seed{seed}"


MED_ABLATION_RUNS = [med_run(t, s) for t in MED_TAGS for s in MED["seeds"]]
MED_DOCTORS = ["base"] + [med_run(t, MED["seeds"][0]) for t in MED_TAGS] + (["scripted", "random"] if MED_SYNTH else [])
MED_EVAL_DOCTORS = list(dict.fromkeys(MED_DOCTORS + MED_ABLATION_RUNS))
MED_RUN_RE = _re.escape(MED["run_name"]) + r"-(think|nothink)-seed(\d+)"


def med_run_info(doctor):
    """with_thinking and seed of an SFT doctor's run name (None for base, scripted, random)."""
    m = _re.fullmatch(MED_RUN_RE, doctor)
    return {"with_thinking": m.group(1) == "think", "seed": int(m.group(2))} if m else None


def med_base_input(wildcards=None):
    return [MED_BASE] if TINY else []


def med_doctor_model(wildcards):
    """The model directory a doctor consults with (none for the scripted and random doctors)."""
    if wildcards.doctor == "base":
        return MED_BASE
    if wildcards.doctor in ("scripted", "random"):
        return None
    return f"results/models/{wildcards.doctor}/merged"


wildcard_constraints:
    thinking="think|nothink",
    doctor=f"base|scripted|random|{MED_RUN_RE}",


if MED_SYNTH:

    rule med_world:
        """The synthetic clinic: diseases and cases (test, val, train; disjoint by consultation,
        numbers masked), the scripted doctor's consultations (at most med.eval.max_turns turns,
        the last forced) as raw MTMedDialog rows, the test prompts seen in training
        (overlap.json), and the tiny base's corpus (knowledge only)."""
        input:
            code=code("med_data"),
        output:
            train="data/raw/med/train.jsonl",
            val="data/raw/med/val.jsonl",
            test="data/raw/med/test.jsonl",
            world="data/raw/med/world.json",
            overlap="data/raw/med/overlap.json",
            corpus=f"{MED_DATA}/corpus.jsonl",
        params:
            world=MED["world"],
            max_turns=MED["eval"]["max_turns"],
        threads: 1
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/med/world.tsv"
        log:
            "results/logs/med/world.log",
        script:
            "../scripts/med_data.py"

else:

    rule med_corpus:
        """The tiny base's corpus from your own files: the train dialogues in the chat format."""
        input:
            train=MED_RAW["train"],
            code=code("med_data"),
        output:
            f"{MED_DATA}/corpus.jsonl",
        threads: 1
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/med/corpus.tsv"
        log:
            "results/logs/med/corpus.log",
        script:
            "../scripts/med_data.py"


rule med_data:
    """Raw rows -> SFT rows (prompt, response, messages); nothink drops every think block from the
    targets and the earlier doctor turns. Both files are checked before anything is written."""
    input:
        train=MED_RAW["train"],
        val=MED_RAW["val"],
        code=code("med_data"),
    output:
        train=f"{MED_DATA}/{{thinking}}/train.parquet",
        val=f"{MED_DATA}/{{thinking}}/val.parquet",
    threads: 1
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/med/data_{thinking}.tsv"
    log:
        "results/logs/med/data_{thinking}.log",
    script:
        "../scripts/med_data.py"


rule med_cases:
    """The held-out cases: the distinct dialogues of the test rows (description, truth, patient facts)."""
    input:
        test=MED_RAW["test"],
        code=code("med_data"),
    output:
        f"{MED_DATA}/cases.jsonl",
    threads: 1
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/med/cases.log",
    script:
        "../scripts/med_data.py"


if TINY:

    rule med_base_model:
        """The medical task's tiny Qwen2 (tokenizer + pretraining on the clinic's knowledge)."""
        input:
            corpus=f"{MED_DATA}/corpus.jsonl",
            code=code("base_model"),
        output:
            directory("results/med/models/base"),
        params:
            tiny=dict(config["model"]["tiny"], **MED["tiny"]),
            pretrain=dict(config["model"]["pretrain"], **MED["pretrain"]),
            tensorboard="results/med/models/tensorboard/base",
            added_tokens=["<think>", "</think>", "<answer>", "</answer>"],
        threads: 2
        resources:
            mem_mb=4000,
            runtime=60,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/med/base_model.tsv"
        log:
            "results/logs/med/base_model.log",
        script:
            "../scripts/base_model.py"


def med_sft_data(wildcards):
    return {"train": f"{MED_DATA}/{wildcards.thinking}/train.parquet",
            "val": f"{MED_DATA}/{wildcards.thinking}/val.parquet"}


MED_SFT_DIR = "results/med/sft/" + MED["run_name"] + "-{thinking}-seed{seed}"
MED_MERGED = "results/models/" + MED["run_name"] + "-{thinking}-seed{seed}/merged"

if config["backend"] == "local":

    rule med_sft:
        """LoRA SFT of the doctor (loss on the doctor's reply only); validation loss before
        training and after every epoch."""
        input:
            unpack(med_sft_data),
            base=med_base_input,
            code=code("sft"),
        output:
            checkpoints=directory(f"{MED_SFT_DIR}/checkpoints"),
            metrics=f"{MED_SFT_DIR}/metrics.json",
        wildcard_constraints:
            seed=r"\d+",
        params:
            base=MED_BASE,
            sft=MED_SFT,
            seed=lambda wc: int(wc.seed),
        threads: 1
        resources:
            mem_mb=4000,
            runtime=240,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/med/sft-{thinking}-seed{seed}.tsv"
        log:
            "results/logs/med/sft-{thinking}-seed{seed}.log",
        script:
            "../scripts/sft.py"

    rule med_merge:
        """Automatic verified merge of the chosen checkpoint into results/models/<run>/merged."""
        input:
            checkpoints=f"{MED_SFT_DIR}/checkpoints",
            metrics=f"{MED_SFT_DIR}/metrics.json",
            base=med_base_input,
            code=code("merge"),
        output:
            directory(MED_MERGED),
        wildcard_constraints:
            seed=r"\d+",
        params:
            base=MED_BASE,
            which=MED_MERGE,
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/med/merge-{thinking}-seed{seed}.tsv"
        log:
            "results/logs/med/merge-{thinking}-seed{seed}.log",
        script:
            "../scripts/merge.py"


if config["backend"] == "verl":

    rule med_sft:
        """LoRA SFT of the doctor with verl's SFT trainer (loss on the final turn: sft2rl.verl_sft_data)."""
        input:
            unpack(med_sft_data),
            base=med_base_input,
            code=code("verl_export", modules=["verl_sft_data"]),
        output:
            checkpoints=directory(f"{MED_SFT_DIR}/checkpoints"),
            metrics=f"{MED_SFT_DIR}/metrics.json",
        wildcard_constraints:
            seed=r"\d+",
        params:
            cmd=lambda wc, input, resources: verl_launch.sft_command(
                sft_run=med_run(wc.thinking, wc.seed),
                run_dir=f"results/med/sft/{med_run(wc.thinking, wc.seed)}",
                base=MED_BASE,
                train=input.train,
                val=input.val,
                sft=MED_SFT,
                seed=int(wc.seed),
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
            "results/benchmarks/med/sft-{thinking}-seed{seed}.tsv"
        log:
            "results/logs/med/sft-{thinking}-seed{seed}.log",
        shell:
            "( {params.cmd} ) > {log} 2>&1"

    rule med_merge:
        """verl's model merger on the chosen step, then our verified LoRA fold-in, into results/models/<run>/merged."""
        input:
            checkpoints=f"{MED_SFT_DIR}/checkpoints",
            metrics=f"{MED_SFT_DIR}/metrics.json",
            base=med_base_input,
            code=code("verl_export"),
        output:
            directory(MED_MERGED),
        wildcard_constraints:
            seed=r"\d+",
        params:
            cmd=lambda wc, output: verl_launch.merge_command(
                sft_run=med_run(wc.thinking, wc.seed),
                run_dir=f"results/med/sft/{med_run(wc.thinking, wc.seed)}",
                which=MED_MERGE,
                base=MED_BASE,
                out_dir=output[0],
                code_root=CODE_ROOT,
                train_mode=MED_SFT.get("train_mode", "lora"),
            ),
        threads: 2
        resources:
            mem_mb=VERL["mem_mb"],
            runtime=60,
        conda:
            "../../envs/verl.yaml"
        benchmark:
            "results/benchmarks/med/merge-{thinking}-seed{seed}.tsv"
        log:
            "results/logs/med/merge-{thinking}-seed{seed}.log",
        shell:
            "( {params.cmd} ) > {log} 2>&1"


rule med_eval:
    """One doctor consults the simulated patient on every held-out case (greedy, at most
    med.eval.max_turns turns, as in the training dialogues); the consultations and the
    summary rows (all, per category)."""
    input:
        cases=f"{MED_DATA}/cases.jsonl",
        world=["data/raw/med/world.json"] if MED_SYNTH else [],
        model=lambda wc: [] if med_doctor_model(wc) is None or (wc.doctor == "base" and not TINY)
        else med_doctor_model(wc),
        code=code("med_eval"),
    output:
        consultations="results/med/eval/{doctor}.jsonl",
        summary="results/med/eval/{doctor}.json",
    params:
        model=med_doctor_model,
        with_thinking=lambda wc: (med_run_info(wc.doctor) or {"with_thinking": True})["with_thinking"],
        world={k: MED["world"][k] for k in ("confidence",)},
        eval=MED["eval"],
        ci_level=config["eval"]["ci_level"],
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        **LOCAL_GPU_RES,
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/med/eval_{doctor}.tsv"
    log:
        "results/logs/med/eval_{doctor}.log",
    script:
        "../scripts/med_eval.py"


rule med_table:
    """results/med/eval.csv (base, SFT with and without thinking, scripted and random doctors; all
    cases and per category) and results/med/ablation_thinking.csv (mean +- std over seeds, and
    the paired bootstrap interval of think - nothink: per case and seed)."""
    input:
        summaries=expand("results/med/eval/{doctor}.json", doctor=MED_EVAL_DOCTORS),
        consultations=expand("results/med/eval/{doctor}.jsonl", doctor=MED_ABLATION_RUNS),
        code=code("med_table"),
    output:
        eval=report("results/med/eval.csv", caption="../report/med.rst", category="Tables",
                    labels={"table": "med"}),
        ablation="results/med/ablation_thinking.csv",
        tex="results/tables/med_eval.tex",
        ablation_tex="results/tables/med_ablation_thinking.tex",
    params:
        doctors=MED_DOCTORS,
        runs={run: med_run_info(run) for run in MED_ABLATION_RUNS},
        bootstrap={k: config["eval"][k] for k in ("bootstrap_samples", "ci_level", "bootstrap_seed")},
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/med/table.log",
    script:
        "../scripts/med_table.py"


MED_FIGURES = [f"results/figures/med_eval.{ext}" for ext in ("png", "pdf")]


rule med_figure:
    """Diagnosis accuracy (95% CI) and ROUGE-L per doctor; the thinking ablation per seed."""
    input:
        eval="results/med/eval.csv",
        ablation="results/med/ablation_thinking.csv",
        code=code("med_table"),
    output:
        [report(f, caption="../report/med_figure.rst", category="Figures", subcategory="Medical",
                labels={"figure": "med_eval"}) if f.endswith(".png") else f for f in MED_FIGURES],
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/med/figure.log",
    script:
        "../scripts/med_table.py"


rule med:
    """The whole medical consultation system: tables and figure."""
    input:
        "results/med/eval.csv",
        "results/med/ablation_thinking.csv",
        MED_FIGURES,


localrules:
    med,
