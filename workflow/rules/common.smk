# Config validation (at DAG time), run names and path helpers shared by every stage.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from sft2rl.config import ConfigError, check_config
from sft2rl import runs

SCHEMA = "../schemas/config.schema.yaml"
try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(f"Invalid config: {err}") from None
validate(config, SCHEMA)

PROCESSED = config["data"]["processed_dir"]
TINY = config["model"]["base"] == "tiny"
BASE_DIR = "results/models/base" if TINY else config["model"]["base"]
SFT_RUN = runs.sft_name(config["sft"]["n_samples"], config["sft"]["seed"])
PY = sys.executable


wildcard_constraints:
    sft_run=runs.SFT_RE,
    rl_run=runs.RL_RE,
    model=runs.MODEL_RE,


def code(*modules):
    """Package modules a rule runs: inputs, so a code change reruns what it touched."""
    return [str(Path(workflow.basedir) / "src" / "sft2rl" / f"{m}.py") for m in modules]


def base_input(wildcards=None):
    """The base model as a rule input when the workflow builds it, else nothing."""
    return [BASE_DIR] if TINY else []


def model_dir(name):
    """HF directory of a model name: base, sft<N>_seed<S> or rl-<init>-beta<b>-seed<s>."""
    return runs.model_dir(name, BASE_DIR)


def threads_for(kind):
    return {"train": 1, "light": 1}[kind]
