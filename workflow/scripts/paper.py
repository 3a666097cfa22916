import sys

from sft2rl.logutil import script_errors
from sft2rl.plots import PaperBuildError, build_paper

with script_errors(snakemake) as log:
    latex_log = str(snakemake.log[0]).removesuffix(".log") + ".latexmk.log"
    try:
        pdf = build_paper(snakemake.input.tex, snakemake.output.pdf, log=latex_log)
    except PaperBuildError as err:
        log.error("ERROR: %s", err)
        sys.exit(1)
    log.info("paper built: %s (latexmk output: %s)", pdf, latex_log)
