# Multi-turn medical consultation (SPEC section C). Everything about it is in
# src/sft2rl/tasks/med/ and here; the SFT and merge stages are the shared ones.
#   synthetic clinic (or your MTMedDialog files) -> rows with/without think -> (tiny base) ->
#   LoRA SFT <run_name>-{think,nothink}-seed<S> (loss on the doctor's reply) -> verified merge
#   into results/models/<run>/merged -> consultations with the simulated patient -> tables
#   -> multi-turn GRPO of the merged doctor against the patient (fixed or dynamic turn budget) ->
#   results/med/rl_eval.csv, results/med/ablation_turn_budget.csv
#   snakemake --cores all results/med/eval.csv results/med/ablation_thinking.csv
include: "med_common.smk"


wildcard_constraints:
    thinking="think|nothink",
    doctor=f"base|scripted|random|{MED_RUN_RE}|{MED_RL_RE}",
    budget="fixed|dynamic",


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
    """Raw rows -> SFT rows (prompt, response, messages), one per consultation or per doctor turn
    (med.sft_rows); nothink drops every think block from the targets and the earlier doctor turns.
    Both files are checked before anything is written."""
    input:
        train=MED_RAW["train"],
        val=MED_RAW["val"],
        code=code("med_data"),
    output:
        train=f"{MED_DATA}/{{thinking}}/train.parquet",
        val=f"{MED_DATA}/{{thinking}}/val.parquet",
    params:
        budget=MED["eval"]["max_turns"],
        rows=MED["sft_rows"],
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
    """The held-out cases: the distinct dialogues of the test rows (description, truth, patient
    facts). A test consultation that is also one of the train or val files (the whole dialogue,
    numbers masked) is refused, dropped or kept (med.test_overlap); cases_overlap.json counts them
    (the embedded clinic redraws such cases: 0)."""
    input:
        rows=MED_RAW["test"],
        train=MED_RAW["train"],
        val=MED_RAW["val"],
        code=code("med_data"),
    output:
        f"{MED_DATA}/cases.jsonl",
        overlap=f"{MED_DATA}/cases_overlap.json",
    params:
        test_overlap=MED["test_overlap"],
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


if config["backend"] == "local":
    MED_SFT_PARAMS = dict(base=MED_BASE, sft=MED_SFT, seed=lambda wc: int(wc.seed))
    MED_MERGE_PARAMS = dict(base=MED_BASE, which=MED_MERGE)
    MED_SFT_CODE, MED_MERGE_CODE = code("sft"), code("merge")
    MED_SFT_RESOURCES = dict(mem_mb=4000, runtime=240, **LOCAL_GPU_RES)
else:
    #: verl's SFT trainer and model merger command lines (the loss on the final turn: sft2rl.verl_sft_data)
    MED_SFT_PARAMS = dict(
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
    )
    MED_MERGE_PARAMS = dict(
        cmd=lambda wc, output: verl_launch.merge_command(
            sft_run=med_run(wc.thinking, wc.seed),
            run_dir=f"results/med/sft/{med_run(wc.thinking, wc.seed)}",
            which=MED_MERGE,
            base=MED_BASE,
            out_dir=output[0],
            code_root=CODE_ROOT,
            train_mode=MED_SFT.get("train_mode", "lora"),
        ),
    )
    MED_SFT_CODE, MED_MERGE_CODE = code("verl_export", modules=["verl_sft_data"]), code("verl_export")
    MED_SFT_RESOURCES = verl_launch.job_resources(VERL, VERL["sft_runtime"])


use rule sft as med_sft with:
    """SFT of the doctor (loss on the doctor's reply only: the local loop, or verl's SFT trainer);
    validation loss before training (local) and after every epoch."""
    input:
        unpack(med_sft_data),
        base=med_base_input,
        code=MED_SFT_CODE,
    output:
        checkpoints=directory(f"{MED_SFT_DIR}/checkpoints"),
        metrics=f"{MED_SFT_DIR}/metrics.json",
    wildcard_constraints:
        seed=r"\d+",
    params:
        **MED_SFT_PARAMS,
    resources:
        **MED_SFT_RESOURCES,
    benchmark:
        "results/benchmarks/med/sft-{thinking}-seed{seed}.tsv"
    log:
        "results/logs/med/sft-{thinking}-seed{seed}.log",


use rule merge as med_merge with:
    """Automatic verified merge of the chosen checkpoint into results/models/<run>/merged (on verl,
    verl's model merger first)."""
    input:
        checkpoints=f"{MED_SFT_DIR}/checkpoints",
        metrics=f"{MED_SFT_DIR}/metrics.json",
        base=med_base_input,
        code=MED_MERGE_CODE,
    output:
        directory(MED_MERGED),
    wildcard_constraints:
        seed=r"\d+",
    params:
        **MED_MERGE_PARAMS,
    benchmark:
        "results/benchmarks/med/merge-{thinking}-seed{seed}.tsv"
    log:
        "results/logs/med/merge-{thinking}-seed{seed}.log",


rule med_eval:
    """One doctor consults the simulated patient on every held-out case (greedy, at most
    med.eval.max_turns turns, as in the training dialogues); the consultations (each with
    its reward and terms) and the summary rows (all, per category)."""
    input:
        cases=f"{MED_DATA}/cases.jsonl",
        world=["data/raw/med/world.json"] if MED_SYNTH else [],
        model=med_eval_model_input,
        patient=med_patient_input,
        code=code("med_eval"),
    output:
        consultations="results/med/eval/{doctor}.jsonl",
        summary="results/med/eval/{doctor}.json",
    params:
        model=med_doctor_model,
        with_thinking=lambda wc: (med_run_info(wc.doctor) or {"with_thinking": True})["with_thinking"],
        world={k: MED["world"][k] for k in ("confidence",)},
        eval=MED_EVAL,
        patient=MED["patient"],
        reward=MED_RLC["reward"],
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


use rule med_eval as med_eval_budget with:
    output:
        consultations="results/med/eval_budget/{doctor}-turns{turns}.jsonl",
        summary="results/med/eval_budget/{doctor}-turns{turns}.json",
    wildcard_constraints:
        turns=r"\d+",
    params:  # the others as med_eval's (use rule updates named params)
        eval=lambda wc: dict(MED_EVAL, max_turns=int(wc.turns)),
    benchmark:
        "results/benchmarks/med/eval_budget/{doctor}-turns{turns}.tsv"
    log:
        "results/logs/med/eval_budget/{doctor}-turns{turns}.log",


# The same doctors sampling as the reference's evaluation does (med.eval.temperature, top_p), each
# held-out case consulted med.eval.k_samples times: rl_eval.csv's sampled columns.
use rule med_eval as med_eval_sampled with:
    output:
        consultations="results/med/eval_sampled/{doctor}.jsonl",
    params:  # the others as med_eval's (use rule updates named params)
        eval=MED["eval"],
        sampled=True,
    benchmark:
        "results/benchmarks/med/eval_sampled/{doctor}.tsv"
    log:
        "results/logs/med/eval_sampled/{doctor}.log",


rule med_rl_cases:
    """The RL cases: the distinct dialogues of the train rows (what RL trains on) and of the val
    rows (its validation), with their patient facts."""
    input:
        rows=lambda wc: MED_RAW[wc.split],
        code=code("med_data"),
    output:
        f"{MED_DATA}/rl/{{split}}_cases.jsonl",
    wildcard_constraints:
        split="train|val",
    threads: 1
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/med/rl_cases_{split}.log",
    script:
        "../scripts/med_data.py"


if config["backend"] == "local":

    rule med_rl:
        """Multi-turn GRPO of the merged SFT doctor against the patient on the train cases
        (sft2rl.tasks.med.rl on the shared trainer; DoctorAgent-RL's reward; the turn budget
        fixed at med.eval.max_turns or drawn per case from med.rl.budget_range, stated in the
        prompt); validation on the val cases every rl.val_every steps; the last policy exported
        as an HF directory. With med.rl.sft_coef > 0 each update also takes the SFT loss of the
        doctor's own SFT train rows (PPO-ptx). Resumes after a kill, restarts after any change."""
        input:
            train=f"{MED_DATA}/rl/train_cases.jsonl",
            val=f"{MED_DATA}/rl/val_cases.jsonl",
            init=MED_RL_INIT,
            sft=MED_RL_SFT_ROWS if MED_RL["sft_coef"] else [],
            patient=med_patient_input,
            code=code("med_rl"),
        output:
            final=directory("results/med/models/rl-{budget}-seed{seed}/final"),
            summary="results/med/rl/rl-{budget}-seed{seed}/summary.json",
        wildcard_constraints:
            seed=r"\d+",
        params:
            init=lambda wc, input: input.init,
            cfg=lambda wc: dict(MED_RL, seed=int(wc.seed)),
            med=MED_RL_TASK,
            sft_loss_turns=MED_SFT["loss_turns"],
        threads: 1
        resources:
            mem_mb=4000,
            runtime=120,
            **LOCAL_GPU_RES,
        conda:
            "../../envs/local.yaml"
        benchmark:
            "results/benchmarks/med/rl-{budget}-seed{seed}.tsv"
        log:
            "results/logs/med/rl-{budget}-seed{seed}.log",
        script:
            "../scripts/med_rl.py"

    use rule med_rl as med_rl_control with:
        """The no-signal control of a medical RL run: the same run (budget, seed, rollouts, update
        size) with each step's advantages given to the batch's consultations in a seeded random
        order (rl.shuffle_advantages), so it keeps what the updates do by themselves and loses what
        the reward tells. rl_eval.csv shows it beside RL (med.rl.no_signal_control)."""
        output:
            final=directory("results/med/models/rl-{budget}-control-seed{seed}/final"),
            summary="results/med/rl/rl-{budget}-control-seed{seed}/summary.json",
        params:
            init=lambda wc, input: input.init,
            cfg=lambda wc: dict(MED_RL, seed=int(wc.seed), shuffle_advantages=True),
            med=MED_RL_TASK,
            sft_loss_turns=MED_SFT["loss_turns"],
        benchmark:
            "results/benchmarks/med/rl-{budget}-control-seed{seed}.tsv"
        log:
            "results/logs/med/rl-{budget}-control-seed{seed}.log",


rule med_table:
    """results/med/eval.csv (base, SFT with and without thinking, scripted and random doctors; all
    cases and per category) and results/med/ablation_thinking.csv (mean +- std over seeds, and
    the paired bootstrap interval of think - nothink: per case and seed; the random doctor
    beside them)."""
    input:
        summaries=expand("results/med/eval/{doctor}.json", doctor=MED_EVAL_DOCTORS),
        consultations=expand("results/med/eval/{doctor}.jsonl",
                             doctor=MED_ABLATION_RUNS + (["random"] if MED_SYNTH else [])),
        code=code("med_table"),
    output:
        eval=report("results/med/eval.csv", caption="../report/med.rst", category="Tables",
                    labels={"table": "med"}),
        ablation=report("results/med/ablation_thinking.csv", caption="../report/med_thinking.rst", category="Tables",
                        labels={"table": "med_thinking"}),
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
    """Diagnosis accuracy (its interval) and ROUGE-L per doctor; the thinking ablation per seed."""
    input:
        eval="results/med/eval.csv",
        ablation="results/med/ablation_thinking.csv",
        code=code("med_table"),
    output:
        [report(f, caption="../report/med_figure.rst", category="Figures", subcategory="Medical",
                labels={"figure": "med_eval"}) if f.endswith(".png") else f for f in MED_FIGURES],
    params:
        ci_level=config["eval"]["ci_level"],
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/med/figure.log",
    script:
        "../scripts/med_table.py"


if config["backend"] == "verl":

    rule med_rl:
        """Multi-turn GRPO of the merged SFT doctor on verl: main_ppo with the medical agent loop
        (sft2rl.tasks.med.verl_agent: the consultation against med.patient inside verl's rollout,
        one sequence per consultation, checked against the prompt evaluation shows), verl's grpo
        estimator over the consultations of a case; the turn budget fixed at med.eval.max_turns or
        drawn per case from med.rl.budget_range (stated in the prompt); the last checkpoint
        exported as an HF directory, the summary's history from the loop's episode log."""
        input:
            train=f"{MED_DATA}/rl/train_cases.jsonl",
            init=MED_RL_INIT,
            patient=med_patient_input,
            code=code("verl_export", *VERL_RAY, modules=["tasks.med.verl_agent"]),
        output:
            final=directory("results/med/models/rl-{budget}-seed{seed}/final"),
            summary="results/med/rl/rl-{budget}-seed{seed}/summary.json",
        wildcard_constraints:
            seed=r"\d+",
        params:
            cmd=lambda wc, input, output, resources: verl_launch.med_rl_command(
                rl_run=f"rl-{wc.budget}-seed{wc.seed}",
                mode=wc.budget,
                init=input.init,
                cases=input.train,
                rl=dict(MED_RL, seed=int(wc.seed)),
                med=MED_RL_TASK,
                verl=VERL,
                nnodes=resources.nodes,
                gpus_per_node=verl_launch.gpus_per_node(resources),
                code_root=CODE_ROOT,
                run_dir=f"results/med/rl/rl-{wc.budget}-seed{wc.seed}",
                final=output.final,
                summary=output.summary,
            ),
        threads: VERL["cpus_per_node"]
        resources:
            **verl_launch.job_resources(VERL, VERL["grpo_runtime"]),
        conda:
            "../../envs/verl.yaml"
        benchmark:
            "results/benchmarks/med/rl-{budget}-seed{seed}.tsv"
        log:
            "results/logs/med/rl-{budget}-seed{seed}.log",
        shell:
            "( {params.cmd} ) > {log} 2>&1"


MED_RL_FIGURES = [f"results/figures/med_rl_curves.{ext}" for ext in ("png", "pdf")]
MED_BUDGET_FIGURES = [f"results/figures/med_turn_budget.{ext}" for ext in ("png", "pdf")]


rule med_rl_random:
    """The random-question doctor on the cases the RL curves are measured on (the val cases at
    med.eval.max_turns; the train cases RL plays, at each turn budget), against the same patient
    with the same reward: the curves' no-information lines (the embedded clinic only)."""
    input:
        train=f"{MED_DATA}/rl/train_cases.jsonl",
        val=f"{MED_DATA}/rl/val_cases.jsonl",
        world="data/raw/med/world.json",
        patient=med_patient_input,
        code=code("med_rl_random"),
    output:
        "results/med/rl/random_doctor.json",
    params:
        # only what the random doctor consults by: editing a trainer key reruns nothing here
        med=dict(MED_RL_TASK, rl={k: MED_RL_TASK["rl"].get(k) for k in ("with_thinking", "budget_range", "reward",
                                                                           "cases")}),
        seed=MED["eval"]["seed"],
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
        **LOCAL_GPU_RES,  # a patient model (med.patient: {model: ...}) runs in-process
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/med/curves_random.tsv"
    log:
        "results/logs/med/rl_random.log",
    script:
        "../scripts/med_rl_random.py"


rule med_rl_table:
    """results/med/rl_eval.csv: base, the SFT doctor RL starts from, RL with a fixed and a dynamic
    turn budget, the no-signal control of each, the scripted and random doctors on the
    held-out cases; the paired per-case differences RL - SFT and RL - control (accuracy, reward)
    with their bootstrap intervals, greedy and (med.eval.k_samples > 0) sampled as the
    reference's evaluation samples; LaTeX; the figure of the reward, its terms and val accuracy
    against the RL step, the random-question doctor's on the same cases beside them."""
    input:
        summaries=expand("results/med/eval/{doctor}.json", doctor=MED_RL_DOCTORS),
        consultations=expand("results/med/eval/{doctor}.jsonl", doctor=MED_RL_DOCTORS),
        sampled=expand("results/med/eval_sampled/{doctor}.jsonl", doctor=MED_RL_DOCTORS) if MED["eval"]["k_samples"] else [],
        train=[f"results/med/rl/{d}/summary.json" for d in MED_RL_DOCTORS if _re.fullmatch(MED_RL_RE, d)],
        random=["results/med/rl/random_doctor.json"] if MED_SYNTH else [],
        code=code("med_rl_table"),
    output:
        csv=report("results/med/rl_eval.csv", caption="../report/med_rl.rst", category="Tables",
                   labels={"table": "med_rl"}),
        tex="results/tables/med_rl_eval.tex",
        figure=[report(f, caption="../report/med_rl_figure.rst", category="Figures", subcategory="Medical",
                       labels={"figure": "med_rl_curves"}) if f.endswith(".png") else f for f in MED_RL_FIGURES],
    params:
        doctors=MED_RL_DOCTORS,
        sft=MED_RL_SFT,
        rl_doctors=[d for d in MED_RL_DOCTORS if _re.fullmatch(MED_RL_RE, d)],
        infos={d: med_run_info(d) for d in MED_RL_DOCTORS},
        bootstrap={k: config["eval"][k] for k in BOOTSTRAP_KEYS},
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/med/rl_table.log",
    script:
        "../scripts/med_rl_table.py"


#: (kind, budget, doctor) of the turn-budget ablation: the SFT doctor, and RL of each budget and seed
MED_BUDGET_RUNS = [("sft", t, MED_RL_SFT) for t in MED_RLC["eval_budgets"]] + [
    (m, t, f"rl-{m}-seed{s}") for m in MED_RL_MODES for t in MED_RLC["eval_budgets"] for s in MED_RLC["seeds"]] + [
    ("random", t, "random") for t in MED_RLC["eval_budgets"] if MED_SYNTH]  # the no-information doctor


rule med_turn_budget:
    """results/med/ablation_turn_budget.csv: RL with a fixed and with a dynamic turn budget (every
    RL seed), the SFT doctor and the random-question doctor (the embedded clinic's no-information
    baseline), each evaluated at every budget of med.rl.eval_budgets; mean and std over seeds,
    bootstrap intervals over cases, dynamic - fixed paired per case; LaTeX and the figure of
    accuracy against the budget."""
    input:
        consultations=[f"results/med/eval_budget/{d}-turns{t}.jsonl" for _, t, d in MED_BUDGET_RUNS],
        code=code("med_rl_table"),
    output:
        csv=report("results/med/ablation_turn_budget.csv", caption="../report/med_turn_budget_table.rst",
                   category="Tables", labels={"table": "med_turn_budget"}),
        tex="results/tables/med_ablation_turn_budget.tex",
        figure=[report(f, caption="../report/med_turn_budget.rst", category="Figures", subcategory="Medical",
                       labels={"figure": "med_turn_budget"}) if f.endswith(".png") else f for f in MED_BUDGET_FIGURES],
    params:
        runs=[(k, t) for k, t, _ in MED_BUDGET_RUNS],
        bootstrap={k: config["eval"][k] for k in BOOTSTRAP_KEYS},
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/med/turn_budget.log",
    script:
        "../scripts/med_rl_table.py"


rule med:
    """The whole medical consultation system: SFT and RL tables, the ablations, the figures."""
    input:
        "results/med/eval.csv",
        "results/med/ablation_thinking.csv",
        MED_FIGURES,
        "results/med/rl_eval.csv",
        "results/med/ablation_turn_budget.csv",
        MED_RL_FIGURES,
        MED_BUDGET_FIGURES,


localrules:
    med,
