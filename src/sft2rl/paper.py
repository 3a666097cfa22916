"""The paper: build paper/main.tex with latexmk (reproducible dates), and list what it pulls in."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .errors import PaperBuildError  # noqa: F401  (re-exported: paper.PaperBuildError)

LATEXMK = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error"]


def build_paper(tex: str | os.PathLike, pdf: str | os.PathLike, *, log: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """Build ``tex`` with latexmk, run in the directory of ``tex`` (relative ``\\input`` and
    ``\\includegraphics`` paths resolve from there), into a temporary ``-outdir``; then move
    the PDF onto ``pdf`` (atomic) and remove the temporary directory. Nothing is written next
    to ``tex`` but the final PDF. ``log``: where to copy latexmk's output and the LaTeX log."""
    tex, pdf = Path(tex).resolve(), Path(pdf).resolve()
    if shutil.which("latexmk") is None:
        raise PaperBuildError("latexmk not found on PATH; install TeX: apt-get install -y --no-install-recommends "
                              "latexmk texlive-latex-base texlive-latex-recommended")
    if not tex.is_file():
        raise PaperBuildError(f"{tex}: file not found")
    pdf.parent.mkdir(parents=True, exist_ok=True)
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("SOURCE_DATE_EPOCH", "0")  # reproducible PDF dates and ID
    outdir = Path(tempfile.mkdtemp(prefix=f".{pdf.stem}.latexmk.", suffix=".tmp", dir=pdf.parent))
    try:
        proc = subprocess.run([*LATEXMK, f"-outdir={outdir}", tex.name], cwd=tex.parent, env=run_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              stdin=subprocess.DEVNULL)
        tex_log = outdir / f"{tex.stem}.log"
        if log:
            text = proc.stdout + ("\n==== LaTeX log ====\n" + tex_log.read_text(errors="replace")
                                  if tex_log.is_file() else "")
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            Path(log).write_text(text)
        built = outdir / f"{tex.stem}.pdf"
        if proc.returncode != 0 or not built.is_file():
            errors = [ln for ln in (tex_log.read_text(errors="replace").splitlines() if tex_log.is_file() else [])
                      if ln.startswith("!")]
            detail = "; ".join(errors[:3]) or (proc.stdout.strip().splitlines() or ["no output"])[-1]
            raise PaperBuildError(f"latexmk failed on {tex} (exit {proc.returncode}): {detail}"
                                  + (f" (full log: {log})" if log else ""))
        os.replace(built, pdf)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)
    return str(pdf)


def paper_inputs(tex: str | os.PathLike) -> dict[str, Any]:
    """Files ``tex`` pulls in through ``\\input{...}`` and ``\\includegraphics{...}`` (for checks)."""
    import re

    text = Path(tex).read_text()
    text = re.sub(r"(?<!\\)%.*", "", text)  # drop comments, keep \%
    return {"inputs": re.findall(r"\\input\{([^}]+)\}", text),
            "graphics": re.findall(r"\\includegraphics(?:\[[^]]*\])?\{([^}]+)\}", text)}
