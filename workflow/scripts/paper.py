from sft2rl.logutil import script_errors
from sft2rl.paper import build_paper, write_numbers, write_settings

with script_errors(snakemake) as log:  # a failed LaTeX build (PaperBuildError) ends in one line
    if snakemake.rule == "paper_settings":
        write_settings(snakemake.output[0], **snakemake.params.stats, setup=snakemake.params.setup)
        log.info("paper settings: %s %s", snakemake.params.stats, snakemake.params.setup)
    elif snakemake.rule == "paper_numbers":
        write_numbers(snakemake.output[0], qa_beta=snakemake.input.qa_beta, games_rl=snakemake.input.games_rl,
                      med_rl=snakemake.input.med_rl, default_beta=snakemake.params.default_beta)
        log.info("paper numbers: %s", snakemake.output[0])
    else:
        latex_log = str(snakemake.log[0]).removesuffix(".log") + ".latexmk.log"
        pdf = build_paper(snakemake.input.tex, snakemake.output.pdf, log=latex_log)
        log.info("paper built: %s (latexmk output: %s)", pdf, latex_log)
