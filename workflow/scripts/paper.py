from sft2rl.logutil import script_errors
from sft2rl.paper import build_paper

with script_errors(snakemake) as log:  # a failed LaTeX build (PaperBuildError) ends in one line
    latex_log = str(snakemake.log[0]).removesuffix(".log") + ".latexmk.log"
    pdf = build_paper(snakemake.input.tex, snakemake.output.pdf, log=latex_log)
    log.info("paper built: %s (latexmk output: %s)", pdf, latex_log)
