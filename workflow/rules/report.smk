# Stage 6: ablation tables (CSV + LaTeX), figures and the paper.
SEEDS = config["ablations"]["seeds"]
BETA = config["reward"]["beta"]


# sft_style (RL from the world's SFT targets in each style) needs the embedded world
ABLATIONS = ["beta", "sft_samples", "sft"] + (["sft_style"] if config["data"]["synthetic_world"] else [])
ABLATION_TABLES = [f"results/ablation_{a}.csv" for a in ABLATIONS]


rule ablation_table:
    """One ablation table from the evaluations of its runs: mean and std over seeds, bootstrap
    intervals over test questions (and seeds), paired differences to each run's init model."""
    input:
        evals=lambda wc: table_inputs(wc.ablation),
        code=code("ablation_table"),
    output:
        csv=report("results/ablation_{ablation}.csv", caption="../report/table.rst", category="Tables",
                   labels={"table": "{ablation}"}),
        tex="results/tables/ablation_{ablation}.tex",
    wildcard_constraints:
        ablation="|".join(ABLATIONS),
    params:
        groups=lambda wc: ablation_groups(wc.ablation),
        bootstrap={k: config["eval"][k] for k in BOOTSTRAP_KEYS},
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/tables/{ablation}.tsv",
    log:
        "results/logs/tables/{ablation}.log",
    script:
        "../scripts/ablation_table.py"


# ---------------------------------------------------------------- figures and paper
from sft2rl.plots import FIGURE_FORMATS, figure_stems

FIGURES = [f"results/figures/{stem}.{ext}" for stem in figure_stems(ABLATIONS) for ext in FIGURE_FORMATS]


rule figures:
    """GRPO reward and KL curves of every RL run, one figure per ablation, hedging against beta
    and the risk-coverage curves of the beta ablation, each as PNG and PDF under results/figures/."""
    input:
        tables=ABLATION_TABLES,
        # the curves come from the TensorBoard directory next to each summary
        summaries=[f"results/rl/{run}/summary.json" for run in all_rl_runs()],
        answers=[f for g in ablation_groups("beta") for f in g["answers"]],
        # the reward curves' no-information line: the kind-only policy on the RL train rows
        rl_train=f"{PROCESSED}/rl/train.parquet",
        code=code("figures"),
    output:
        [report_figure(f) for f in FIGURES],
    params:
        ablations=ABLATIONS,
        tensorboard={run: f"results/rl/{run}/tensorboard" for run in all_rl_runs()},
        answers={g["variant"]: g["answers"] for g in ablation_groups("beta")},
        smooth=0.6,
        ci_level=config["eval"]["ci_level"],
        reward=config["reward"],
        group_size=config["rl"]["n"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/figures.tsv",
    log:
        "results/logs/figures.log",
    script:
        "../scripts/figures.py"


rule paper_settings:
    """results/tables/paper_settings.tex: the settings the paper's prose and captions state
    (the intervals' level and draws, the KL estimator, the medical and games recipe values)."""
    input:
        code=code("paper"),
    output:
        "results/tables/paper_settings.tex",
    params:
        stats={"ci_level": config["eval"]["ci_level"], "bootstrap_samples": config["eval"]["bootstrap_samples"]},
        setup={"kl_type": config["rl"]["kl_type"], "eval_turns": MED["eval"]["max_turns"], "rl_n": MED_RL["n"],
               "rl_temperature": MED_RL["temperature"], "sampled_k": MED["eval"]["k_samples"],
               "sampled_temperature": MED["eval"]["temperature"], "sampled_top_p": MED["eval"]["top_p"],
               "rl_steps": GAME_RL["total_steps"], "clip": [MED_RL["clip_ratio_low"], MED_RL["clip_ratio_high"]],
               "entropy": MED_RL["entropy_coef"], "budget_range": MED_RLC["budget_range"],
               "eval_budgets": MED_RLC["eval_budgets"]},
    localrule: True
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/paper_settings.log",
    script:
        "../scripts/paper.py"


rule paper_numbers:
    """results/tables/paper_numbers.tex: the numbers of this build the paper's prose states (the
    QA beta ablation at reward.beta, the games' and the medical RL - SFT and RL - control), read
    from the tables beside them, each paired difference with its verdict."""
    input:
        qa_beta="results/ablation_beta.csv",
        games_rl="results/games/rl_eval.csv",
        med_rl="results/med/rl_eval.csv",
        code=code("paper"),
    output:
        "results/tables/paper_numbers.tex",
    params:
        default_beta=config["reward"]["beta"],
    localrule: True
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/paper_numbers.log",
    script:
        "../scripts/paper.py"


rule paper:
    """paper/main.pdf from paper/main.tex, the ablation tables and the figure PDFs (latexmk,
    built in a temporary -outdir, the PDF moved into place)."""
    input:
        world=paper_world,
        tex="paper/main.tex",
        settings="results/tables/paper_settings.tex",
        numbers="results/tables/paper_numbers.tex",
        tables=[f"results/tables/ablation_{a}.tex" for a in ABLATIONS] + ["results/tables/games_sft_eval.tex",
                                                                   "results/tables/games_rl_eval.tex",
                                                                   "results/tables/med_eval.tex",
                                                                   "results/tables/med_ablation_thinking.tex",
                                                                   "results/tables/med_rl_eval.tex",
                                                                   "results/tables/med_ablation_turn_budget.tex"],
        figures=[f for f in FIGURES + GAME_FIGURES + GAME_RL_FIGURES + MED_FIGURES + MED_RL_FIGURES + MED_BUDGET_FIGURES
                 if f.endswith(".pdf")],
        code=code("paper"),
    output:
        pdf="paper/main.pdf",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    conda:
        "../../envs/local.yaml"
    benchmark:
        "results/benchmarks/paper.tsv",
    log:
        "results/logs/paper.log",
    script:
        "../scripts/paper.py"


localrules:
    figures,
    paper,


rule stage_times:
    """Wall time, CPU time and peak memory per stage, from the benchmark: files of the jobs that
    ran (results/benchmarks/). It runs after the QA tables and figures, so every QA job has
    written its file; the games' and the medical task's jobs are in it where they ran before."""
    input:
        tables=ABLATION_TABLES,
        figures=rules.figures.output,
        code=code("stage_times"),
    output:
        csv=report("results/tables/stage_times.csv", caption="../report/stage_times.rst", category="Performance"),
        md="results/tables/stage_times.md",
    params:
        benchmarks="results/benchmarks",
    localrule: True
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/stage_times.log",
    script:
        "../scripts/stage_times.py"
