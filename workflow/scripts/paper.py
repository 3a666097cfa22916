from sft2rl.logutil import script_errors
from sft2rl.paper import build_paper, write_settings

with script_errors(snakemake) as log:  # a failed LaTeX build (PaperBuildError) ends in one line
    if snakemake.rule == "paper_settings":
        write_settings(snakemake.output[0], **snakemake.params.stats)
        log.info("paper settings: %s", snakemake.params.stats)
    else:
        latex_log = str(snakemake.log[0]).removesuffix(".log") + ".latexmk.log"
        pdf = build_paper(snakemake.input.tex, snakemake.output.pdf, log=latex_log)
        log.info("paper built: %s (latexmk output: %s)", pdf, latex_log)
