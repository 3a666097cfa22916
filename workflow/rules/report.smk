# Stage 6: ablation tables (CSV + LaTeX), figures and the paper.
SEEDS = config["ablations"]["seeds"]
BETA = config["reward"]["beta"]


ABLATIONS = ["beta", "sft_samples", "sft"]
ABLATION_TABLES = [f"results/ablation_{a}.csv" for a in ABLATIONS]


rule ablation_table:
    """One ablation table from the evaluations of its runs (mean, std over seeds)."""
    input:
        metrics=lambda wc: [f for g in ablation_groups(wc.ablation) for f in g["metrics"]],
        code=code("ablation_table"),
    output:
        csv="results/ablation_{ablation}.csv",
        tex="results/tables/ablation_{ablation}.tex",
    wildcard_constraints:
        ablation="|".join(ABLATIONS),
    params:
        groups=lambda wc: ablation_groups(wc.ablation),
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/tables/{ablation}.log",
    script:
        "../scripts/ablation_table.py"


# ---------------------------------------------------------------- figures and paper
from sft2rl.plots import FIGURE_STEMS, FIGURE_FORMATS

FIGURES = [f"results/figures/{stem}.{ext}" for stem in FIGURE_STEMS for ext in FIGURE_FORMATS]


rule figures:
    """GRPO reward and KL curves of every RL run, one figure per ablation and proactive rate
    against beta, each as PNG and PDF under results/figures/."""
    input:
        tables=ABLATION_TABLES,
        # the curves come from the TensorBoard directory next to each summary
        summaries=[f"results/rl/{run}/summary.json" for run in all_rl_runs()],
        code=code("figures"),
    output:
        FIGURES,
    params:
        ablations=ABLATIONS,
        tensorboard={run: f"results/rl/{run}/tensorboard" for run in all_rl_runs()},
        smooth=0.6,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/figures.log",
    script:
        "../scripts/figures.py"


rule paper:
    """paper/main.pdf from paper/main.tex, the ablation tables and the figure PDFs (latexmk,
    built in a temporary -outdir, the PDF moved into place)."""
    input:
        tex="paper/main.tex",
        tables=[f"results/tables/ablation_{a}.tex" for a in ABLATIONS],
        figures=[f for f in FIGURES if f.endswith(".pdf")],
        code=code("paper"),
    output:
        pdf="paper/main.pdf",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    conda:
        "../../envs/local.yaml"
    log:
        "results/logs/paper.log",
    script:
        "../scripts/paper.py"


localrules:
    figures,
    paper,
