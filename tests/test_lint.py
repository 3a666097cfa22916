"""`snakemake --lint` has nothing to say about the workflow: `make test` (and so CI) lints every change."""
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO

#: Rule files whose findings are tolerated, as paths from the repository root: none.
EXEMPT: set[str] = set()


def test_snakemake_lint_is_clean():
    res = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--lint", "--snakefile",
                          str(REPO / "Snakefile"), "--directory", str(REPO)],
                         capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "Error" not in out.split("Lints for")[0], out[-3000:]
    # one block per linted item: "Lints for snakefile <path>:" or "Lints for rule <name> (line <n>, <path>):"
    findings = [b for b in re.split(r"^(?=Lints for )", out, flags=re.M) if b.startswith("Lints for ")]
    exempt = tuple(str(REPO / p) for p in EXEMPT)
    left = [b for b in findings if not any(p in b.splitlines()[0] for p in exempt)]
    assert not left, "snakemake --lint:\n" + "".join(left)
    if not findings:
        assert res.returncode == 0, out[-3000:]


def test_python_sources_compile_without_warnings():
    """Every Python file of the package, scripts, benches and tests compiles with warnings as
    errors (an invalid escape such as ``"\\<"`` in a docstring is a SyntaxWarning on Python 3.12,
    which pyproject allows)."""
    import warnings

    root = Path(__file__).resolve().parent.parent
    files = [f for d in ("src", "workflow/scripts", "bench", "tests") for f in sorted((root / d).rglob("*.py"))]
    assert len(files) > 50
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(f.read_text(), str(f), "exec")
