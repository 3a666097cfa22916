"""The README and docs/ stay true of the repository.

* docs/configuration.md documents every config key: every key of config.yaml and every property
  of workflow/schemas/config.schema.yaml, at every nesting level, is the first cell of a table
  row (`` `model.pretrain.lr` ``); every row names a key the schema defines; a default given in
  backticks equals the value in config.yaml.
* Every relative link and image of README.md and docs/*.md resolves to a file, and a link's
  ``#anchor`` into a markdown file to one of its headings.
* Every repository path the pages name in backticks (``src/...``, ``tests/...``, ...) exists.
* Every Snakemake target the README names plans (one ``snakemake -n`` over all of them) and
  every ``make`` target it names exists (``make -n``).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
CONFIG_DOC = REPO / "docs" / "configuration.md"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


# ------------------------------------------------------------------ markdown helpers
def prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)


def code_blocks(path: Path) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def code_spans(text: str) -> list[str]:
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)


def table_rows(path: Path) -> list[list[str]]:
    """The cells of every table row (``\\|`` is a pipe inside a cell), header and rule rows left out."""
    rows = []
    for line in prose(path).splitlines():
        if line.startswith("|") and not re.fullmatch(r"[|\s:-]+", line):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
    return rows


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


# ------------------------------------------------------------------ config keys
def schema_keys() -> set[str]:
    schema = yaml.safe_load(SCHEMA.read_text())

    def deref(node):
        while "$ref" in node:
            target = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def walk(node, prefix):
        node = deref(node)
        keys = set()
        for branch in [node] + [deref(b) for b in node.get("oneOf", []) + node.get("anyOf", [])]:
            for name, sub in branch.get("properties", {}).items():
                keys.add(prefix + name)
                keys |= walk(sub, f"{prefix}{name}.")
        return keys

    return walk(schema, "")


def config_values(node=None, prefix="") -> dict[str, object]:
    """Every key of config.yaml (all nesting levels) with its value."""
    if node is None:
        node = yaml.safe_load((REPO / "config.yaml").read_text())
    out = {}
    for name, value in node.items():
        out[prefix + name] = value
        if isinstance(value, dict):
            out.update(config_values(value, f"{prefix}{name}."))
    return out


def documented() -> dict[str, str]:
    """key -> default cell of every row of docs/configuration.md whose first cell is a key in backticks."""
    rows = {}
    for cells in table_rows(CONFIG_DOC):
        m = re.fullmatch(r"`([A-Za-z0-9_.]+)`", cells[0])
        if m:
            assert m.group(1) not in rows, f"docs/configuration.md: two rows for {m.group(1)}"
            rows[m.group(1)] = cells[1]
    return rows


def test_every_config_key_is_documented():
    rows = documented()
    missing = sorted((schema_keys() | set(config_values())) - set(rows))
    assert not missing, f"config keys without a row in docs/configuration.md: {missing}"


def test_every_documented_key_exists_in_the_schema():
    unknown = sorted(set(documented()) - schema_keys())
    assert not unknown, f"docs/configuration.md documents keys the schema does not define: {unknown}"


def test_documented_defaults_equal_config_yaml():
    rows, values = documented(), config_values()
    wrong = []
    for key, value in values.items():
        if (isinstance(value, dict) and value) or key not in rows:
            continue  # a section (its keys have their own rows), or a key without a row (the test above)
        spans = code_spans(rows[key])
        if not spans:
            wrong.append(f"{key}: no default in backticks (config.yaml: {value!r})")
        elif yaml.safe_load(spans[0]) != value:
            wrong.append(f"{key}: documented {spans[0]!r}, config.yaml has {value!r}")
    assert not wrong, "docs/configuration.md defaults:\n" + "\n".join(wrong)


# ------------------------------------------------------------------ links and paths
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


#: Top-level folders whose paths a page may name: they are in the repository, not built by the workflow.
REPO_DIRS = ("src/", "tests/", "workflow/", "bench/", "profiles/", "recipes/", "envs/", "docs/", ".ci/")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_paths_exist(page):
    missing = []
    for span in code_spans(prose(page)):
        span = span.rstrip(":,.")
        if span.startswith(REPO_DIRS) and not re.search(r"[<>{}*|\s]", span) and not (REPO / span).exists():
            missing.append(span)
    assert not missing, f"{page.relative_to(REPO)} names paths that do not exist: {missing}"


# ------------------------------------------------------------------ README commands
#: snakemake options that take a value (the value is not a target)
VALUE_OPTIONS = {"--cores", "-c", "--jobs", "-j", "--profile", "--configfile", "--config", "--report",
                 "--software-deployment-method", "--sdm", "--directory", "-d", "--snakefile", "-s"}


def readme_commands() -> list[str]:
    """The command lines of the README: the lines of its code blocks (fenced, or indented by four
    spaces) and its inline code, comments cut."""
    indented = [line for line in prose(README).splitlines()
                if line.startswith("    ") and not line.lstrip().startswith("-")]
    fenced = [line for block in code_blocks(README) for line in block.splitlines()]
    lines = fenced + indented + code_spans(prose(README))
    return [line.split(" #")[0].strip() for line in lines if line.strip()]


def readme_snakemake_targets() -> list[str]:
    targets = []
    for cmd in readme_commands():
        words = shlex.split(cmd)
        if not words or words[0] != "snakemake":
            continue
        value = False  # the word is an option's value
        for word in words[1:]:
            if not value and not word.startswith("-"):
                targets.append(word)
            value = word in VALUE_OPTIONS
    return sorted(set(targets))


def readme_make_targets() -> list[str]:
    return sorted({cmd.split()[1] for cmd in readme_commands() if re.fullmatch(r"make [\w-]+", cmd)})


def test_readme_names_snakemake_and_make_targets():
    """The parsers below find something: the README shows how to run."""
    assert {"results/ablation_beta.csv", "all"} <= set(readme_snakemake_targets())
    assert {"run", "test"} <= set(readme_make_targets())


def test_readme_snakemake_targets_plan():
    targets = readme_snakemake_targets()
    res = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--quiet", "--nolock", "--cores", "1",
                          "--snakefile", str(REPO / "Snakefile"), "--directory", str(REPO), *targets],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"snakemake -n {' '.join(targets)}:\n{res.stdout[-2000:]}{res.stderr[-3000:]}"


@pytest.mark.parametrize("target", readme_make_targets())
def test_readme_make_targets_exist(target):
    res = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"make -n {target}: {res.stderr}"
