# Stage 6: ablation tables (CSV + LaTeX), figures and the paper.
SEEDS = config["ablations"]["seeds"]
BETA = config["reward"]["beta"]


def _models_and_metrics(models):
    return {"models": models, "metrics": [f"results/eval/{m}/metrics.json" for m in models]}


def ablation_groups(name):
    """Row groups of one ablation table, in row order (reference rows first)."""
    sft = lambda n: runs.sft_name(n, config["sft"]["seed"])
    rl = lambda init, beta, s: runs.rl_name(init, beta, s)
    if name == "beta":
        groups = [dict(variant="sft-only", kind="sft-only", **_models_and_metrics([SFT_RUN]))]
        groups += [
            dict(variant=f"beta={runs.fmt_beta(b)}", kind="rl", **_models_and_metrics([rl(SFT_RUN, b, s) for s in SEEDS]))
            for b in config["ablations"]["beta"]
        ]
    elif name == "sft_samples":
        groups = []
        for n in config["ablations"]["sft_samples"]:
            groups.append(dict(variant=f"N={n} sft-only", kind="sft-only", **_models_and_metrics([sft(n)])))
            groups.append(dict(variant=f"N={n}", kind="rl", **_models_and_metrics([rl(sft(n), BETA, s) for s in SEEDS])))
    elif name == "sft":
        groups = [
            dict(variant="base-only", kind="base-only", **_models_and_metrics(["base"])),
            dict(variant="sft-only", kind="sft-only", **_models_and_metrics([SFT_RUN])),
            dict(variant="RL from base", kind="rl", **_models_and_metrics([rl("base", BETA, s) for s in SEEDS])),
            dict(variant="RL from SFT", kind="rl", **_models_and_metrics([rl(SFT_RUN, BETA, s) for s in SEEDS])),
        ]
    else:
        raise ValueError(name)
    return groups


ABLATIONS = ["beta", "sft_samples", "sft"]
ABLATION_TABLES = [f"results/ablation_{a}.csv" for a in ABLATIONS]


def all_rl_runs():
    return sorted({m for a in ABLATIONS for g in ablation_groups(a) if g["kind"] == "rl" for m in g["models"]})


rule ablation_table:
    """One ablation table from the evaluations of its runs (mean, std over seeds)."""
    input:
        metrics=lambda wc: [f for g in ablation_groups(wc.ablation) for f in g["metrics"]],
        code=code("tables"),
    output:
        csv="results/ablation_{ablation}.csv",
        tex="results/tables/ablation_{ablation}.tex",
    wildcard_constraints:
        ablation="|".join(ABLATIONS),
    params:
        groups=lambda wc: ablation_groups(wc.ablation),
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
        code=code("plots"),
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
        code=code("plots"),
    output:
        pdf="paper/main.pdf",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=15,
    log:
        "results/logs/paper.log",
    script:
        "../scripts/paper.py"


localrules:
    figures,
    paper,
