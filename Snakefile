# sft2rl: SFT warm-up, then GRPO. One file per stage under workflow/rules/.
#   snakemake --cores all results/ablation_beta.csv     # the headline table
#   snakemake --cores all figures                        # all figures
#   snakemake --cores all results/games/sft_eval.csv     # the game environments (SPEC B)
#   snakemake --cores all med                            # medical consultation (SPEC C)
#   snakemake --profile profiles/slurm all               # same DAG on SLURM
#   snakemake --report results/report.html               # HTML report of a finished workflow
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"

wildcard_constraints:
    sft_run=runs.SFT_RE,
    rl_run=runs.RL_RE,
    model=runs.MODEL_RE,


include: "workflow/rules/data.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/grpo.smk"
include: "workflow/rules/verl.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/games.smk"
include: "workflow/rules/med.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        ABLATION_TABLES,
        rules.figures.output,
        rules.games.input,
        rules.games_ablation.input,
        rules.med.input,
        rules.stage_times.output,


localrules:
    all,
