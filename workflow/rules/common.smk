# Config validation (at DAG time), run names and path helpers shared by every stage.
import os
import sys
from pathlib import Path

SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))
# Jobs import the package of *this* checkout (before any installed copy), so the code a job
# runs is the code its rule lists as input, also in a moved or copied checkout.
# (An optional variable, extended if set: no `envvars:` assertion, which would require it.)
_inherited = dict(os.environ).get("PYTHONPATH")
os.environ.update(PYTHONPATH=os.pathsep.join([str(SRC), *filter(None, [_inherited])]))

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from sft2rl.config import ConfigError, check_config
from sft2rl import fingerprint
from sft2rl.tasks.qa import runs  # the QA task's run names (its rules and ablation tables below)

SCHEMA = "../schemas/config.schema.yaml"
try:
    check_config(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(f"Invalid config: {err}") from None
validate(config, SCHEMA)

PROCESSED = config["data"]["processed_dir"]
TINY = config["model"]["base"] == "tiny"
BASE_DIR = "results/models/base" if TINY else config["model"]["base"]
#: the tiny base's pretraining corpus when it is a file of its own: the world's or
#: data.pretrain_corpus (rl_data searches it for test questions). None: a base pretrained
#: elsewhere, or the corpus built from your SFT and RL train rows (model.smk's BASE_CORPUS)
PRETRAIN_CORPUS = None if not TINY else (
    "data/raw/world_corpus.jsonl" if config["data"]["synthetic_world"] else config["data"].get("pretrain_corpus"))
SFT_RUN = runs.sft_name(config["sft"]["n_samples"], config["sft"]["seed"])
WORLD_STYLE = config["world"].get("sft_style", "hedge_only")
#: GPUs a model job of the local backend asks the scheduler for (config local.gpus: 0 or 1).
LOCAL_GPUS = int((config.get("local") or {}).get("gpus", 0))
LOCAL_GPU_RES = {"gpu": LOCAL_GPUS} if LOCAL_GPUS else {}


#: Files under workflow/scripts/ that the verl rules run from their shell: commands. Snakemake
#: tracks the script of a script: rule itself, not these, so code() lists them among the inputs.
SHELL_SCRIPTS = {"verl_export": "verl_export.py", "ray_on_slurm": "ray_on_slurm.sh"}


def code(*scripts, modules=()):
    """The package modules a job runs, as its inputs, so editing one reruns exactly the jobs that run it.

    Found, not listed: every ``sft2rl`` module the workflow scripts ``scripts`` (names under
    workflow/scripts/) import, plus ``modules``, and everything those import in turn; and the
    scripts a shell: command runs (:data:`SHELL_SCRIPTS`) themselves.
    Paths are relative to the working directory: a moved or re-cloned checkout keeps the
    same set of inputs, and Snakemake plans nothing new.
    """
    folder = Path(workflow.basedir) / "workflow" / "scripts"
    files = [folder / SHELL_SCRIPTS.get(s, f"{s}.py") for s in scripts]
    names = fingerprint.module_closure(modules, [f for f in files if f.suffix == ".py"])
    shell = [os.path.relpath(folder / SHELL_SCRIPTS[s]) for s in scripts if s in SHELL_SCRIPTS]
    return [os.path.relpath(fingerprint.module_file(m)) for m in names] + shell


def local_model_files(path):
    """The files of a model directory the workflow does not build (model.base, a patient model)
    as inputs, so new weights written into the same directory rerun every job that reads them
    (Snakemake compares a directory input's own time, which rewriting a file inside leaves as it
    was). Hidden paths (.git, .cache) are left out; a hub id (no such directory) adds none."""
    root = Path(path)
    if not root.is_dir():
        return []
    return sorted(str(f) for f in root.rglob("*")
                  if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))


def model_input(path):
    """A base model as a job's input: the directory when the workflow builds it (the tiny base),
    else the files of a local directory (nothing for a hub id)."""
    return [path] if TINY else local_model_files(path)


def base_input(wildcards=None):
    """The QA base model as an input (:func:`model_input`)."""
    return model_input(BASE_DIR)


def model_dir(name):
    """HF directory of a model name: base, sft<N>_seed<S> or rl-<init>-beta<b>-seed<s>."""
    return runs.model_dir(name, BASE_DIR)


# ---------------------------------------------------------------- stage input functions

def sft_files(sft_run):
    """The train and val rows of SFT run ``sft_run``."""
    p = runs.parse_sft(sft_run)
    d = f"{PROCESSED}/sft/n{p['n']}_seed{p['seed']}" + (f"_{p['style']}" if p["style"] else "")
    return {"train": f"{d}/train.parquet", "val": f"{d}/val.parquet"}


def sft_data(wildcards):
    return sft_files(wildcards.sft_run)


def rl_init_dir(wildcards):
    return model_dir(runs.parse_rl(wildcards.rl_run)["init"])


def sft_term_refusal(rl_run):
    """Why rl.sft_coef (PPO-ptx) refuses RL run ``rl_run``, or None: the SFT term trains on the init
    model's SFT rows, and the base model has none."""
    coef = config["rl"]["sft_coef"]
    if coef and runs.parse_rl(rl_run)["init"] == "base":
        return (f"config key 'rl.sft_coef' = {coef}: RL run {rl_run} starts from the base model, which has "
                "no SFT rows for the SFT term; set rl.sft_coef: 0")
    return None


def rl_sft_rows(wildcards):
    """The SFT train rows of an RL run's init model: the SFT term of rl.sft_coef (PPO-ptx); none
    when the term is off. From the base model there are none, and the term is refused."""
    if not config["rl"]["sft_coef"]:
        return []
    refusal = sft_term_refusal(wildcards.rl_run)
    if refusal:
        # Snakemake drops this error where the run's output exists (it takes the file as built):
        # the tables refuse such runs too (ablation_groups marks them)
        raise ValueError(refusal)
    return sft_files(runs.parse_rl(wildcards.rl_run)["init"])["train"]


def rl_params(wildcards):
    """Only what this run depends on, so editing one beta reruns only that run."""
    p = runs.parse_rl(wildcards.rl_run)
    return {"rl": dict(config["rl"], seed=p["seed"]), "reward": dict(config["reward"], beta=p["beta"])}


#: The eval keys the evaluate rule reads (sample_prompts is the samples rule's, the bootstrap
#: keys the tables'). The sampled answers per question are rl.n: the reward's group accuracy
#: is estimated on a group of the size training uses.
EVAL_KEYS = ("max_new_tokens", "batch_size", "temperature", "top_p", "seed")
BOOTSTRAP_KEYS = ("bootstrap_samples", "ci_level", "bootstrap_seed")


def eval_model_input(wildcards):
    return base_input() if wildcards.model == "base" else model_dir(wildcards.model)


def difficulty_ref(wildcards):
    """Unlabeled data: easy/hard split by the SFT model's sampled group accuracy."""
    if config["data"]["synthetic_world"] or wildcards.model == SFT_RUN:
        return []
    return [f"results/eval/{SFT_RUN}/answers.jsonl"]  # a list: the script reads input.ref[0]


def _models(models, ref=None):
    """Evaluations of a row's models and, for a GRPO row, of its init model (the paired reference)."""
    return {"models": models, "metrics": [f"results/eval/{m}/metrics.json" for m in models],
            "answers": [f"results/eval/{m}/answers.jsonl" for m in models],
            "ref_answers": f"results/eval/{ref}/answers.jsonl" if ref else None}


def ablation_groups(name):
    """Row groups of one ablation table, in row order (reference rows first); a GRPO row's
    ``ref_answers`` are its init model's answers (the paired difference RL - init)."""
    sft = lambda n, style=None: runs.sft_name(n, config["sft"]["seed"], style)
    rl = lambda init, beta, s: runs.rl_name(init, beta, s)
    if name == "beta":
        groups = [dict(variant="sft-only", kind="sft-only", **_models([SFT_RUN]))]
        groups += [
            dict(variant=f"beta={runs.fmt_beta(b)}", kind="rl", **_models([rl(SFT_RUN, b, s) for s in SEEDS], SFT_RUN))
            for b in config["ablations"]["beta"]
        ]
    elif name == "sft_samples":
        groups = []
        for n in config["ablations"]["sft_samples"]:
            groups.append(dict(variant=f"N={n} sft-only", kind="sft-only", **_models([sft(n)])))
            groups.append(dict(variant=f"N={n}", kind="rl", **_models([rl(sft(n), BETA, s) for s in SEEDS], sft(n))))
    elif name == "sft":
        groups = [
            dict(variant="base-only", kind="base-only", **_models(["base"])),
            dict(variant="sft-only", kind="sft-only", **_models([SFT_RUN])),
            dict(variant="RL from base", kind="rl", **_models([rl("base", BETA, s) for s in SEEDS], "base")),
            dict(variant="RL from SFT", kind="rl", **_models([rl(SFT_RUN, BETA, s) for s in SEEDS], SFT_RUN)),
        ]
    elif name == "sft_style":  # the embedded world's SFT targets in each style, RL at the default beta
        groups = []
        for style in runs.STYLES:
            init = SFT_RUN if style == WORLD_STYLE else sft(config["sft"]["n_samples"], style)
            groups.append(dict(variant=f"{style} sft-only", kind="sft-only", **_models([init])))
            groups.append(dict(variant=style, kind="rl", **_models([rl(init, BETA, s) for s in SEEDS], init)))
    else:
        raise ValueError(name)
    for g in groups:  # a row whose runs this config refuses: its table refuses it when it runs
        refusals = [r for r in map(sft_term_refusal, g["models"] if g["kind"] == "rl" else []) if r]
        if refusals:
            g["refused"] = refusals[0]
    return groups


def table_inputs(name):
    """Every evaluation file one ablation table reads (its rows' and their references')."""
    files = []
    for g in ablation_groups(name):
        files += g["metrics"] + g["answers"] + ([g["ref_answers"]] if g["ref_answers"] else [])
    return sorted(set(files))


def all_rl_runs():
    return sorted({m for a in ABLATIONS for g in ablation_groups(a) if g["kind"] == "rl" for m in g["models"]})


def report_figure(path):
    """A figure in `snakemake --report results/report.html`: the PNGs, grouped by what they show."""
    if not path.endswith(".png"):
        return path
    stem = Path(path).stem
    group = "Training curves" if stem.endswith("_curves") else "Ablations" if stem.startswith("ablation_") else "Hedging"
    return report(path, caption="../report/figure.rst", category="Figures", subcategory=group,
                  labels={"figure": stem})


def game_ablation_own_rows(wildcards):
    """The games' RL-init ablation compares SFT on the first N generated train levels with SFT
    on all of them: refused, before anything is built, for an env trained on your own SFT rows
    (games.sft_files; its main row would have trained on other data than its L<N> rows)."""
    own = [env for env in config["games"]["ablation_rl_init"]["envs"] if env in config["games"]["sft_files"]]
    if own:
        raise ValueError(f"results/games/ablation_rl_init.csv: games.sft_files gives your own SFT rows for "
                         f"{', '.join(own)}, so the main SFT model did not train on the generated levels its "
                         f"L<N> rows take the first N of; remove {', '.join(own)} from "
                         f"games.ablation_rl_init.envs (an empty list builds no ablation)")
    return []


def paper_world(wildcards):
    """The paper describes the embedded synthetic world (and its sft_style ablation) and the
    embedded clinic (its scripted and random doctors): refused, before anything is built, on
    your own data."""
    if not config["data"]["synthetic_world"]:
        raise ValueError("paper/main.pdf describes the embedded synthetic world (its text, its sft_style "
                         "ablation); with data.synthetic_world: false build the tables and figures instead "
                         "(snakemake all; results/tables/*.tex, results/figures/*.pdf)")
    if config["med"]["raw_files"]:
        raise ValueError("paper/main.pdf describes the embedded clinic (its cases, its scripted and random "
                         "doctors); with med.raw_files set build the tables and figures instead "
                         "(snakemake all; results/tables/*.tex, results/figures/*.pdf)")
    if config["games"]["sft_files"]:
        raise ValueError("paper/main.pdf describes the games' SFT rows as the solver's steps on the generated "
                         f"levels; with games.sft_files set ({', '.join(config['games']['sft_files'])}) build the "
                         "tables and figures instead (snakemake all; results/tables/*.tex, results/figures/*.pdf)")
    return []
