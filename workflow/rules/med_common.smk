# The medical task's settings and helper functions for workflow/rules/med.smk (kept apart from
# the rules, as Snakemake's linter asks): the SFT and RL run names, the doctors of each table,
# the model a doctor consults with, and the configuration checks made when the DAG is built.
import re as _re

from sft2rl.tasks.med import RL_MODES as MED_RL_MODES, rl_config as med_rl_config
from sft2rl.tasks.med.patient import local_model_dir

MED = config["med"]
MED_SYNTH = not MED["raw_files"]
MED_RAW = MED["raw_files"] or {s: f"data/raw/med/{s}.jsonl" for s in ("train", "val", "test")}
MED_DATA = f"{PROCESSED}/med"
MED_BASE = "results/med/models/base" if TINY else config["model"]["base"]
#: the sft: section with the doctor runs' overrides; the loss is on the doctor's turns only: the
#: last turn of a per-turn row, every turn of a consultation row (med.sft_rows)
MED_SFT = dict(sorted(dict(  # sorted: a rule's params compare in order, and an override moves a key
    {k: v for k, v in config["sft"].items() if k not in ("n_samples", "val_size", "merge_checkpoint", "with_thinking")},
    **{k: v for k, v in MED["sft"].items() if k not in ("merge_checkpoint", "with_thinking", "seed")},
    loss_turns="all" if MED["sft_rows"] == "consultation" else "last",
).items()))
MED_MERGE = MED["sft"].get("merge_checkpoint", config["sft"]["merge_checkpoint"])
MED_TAGS = ["think" if t else "nothink" for t in MED["with_thinking"]]
def med_run(tag, seed):
    return f"{MED['run_name']}-{tag}-seed{seed}"


MED_ABLATION_RUNS = [med_run(t, s) for t in MED_TAGS for s in MED["seeds"]]
MED_DOCTORS = ["base"] + [med_run(t, MED["seeds"][0]) for t in MED_TAGS] + (["scripted", "random"] if MED_SYNTH else [])
MED_EVAL_DOCTORS = list(dict.fromkeys(MED_DOCTORS + MED_ABLATION_RUNS))
MED_RUN_RE = _re.escape(MED["run_name"]) + r"-(think|nothink)-seed(\d+)"
#: medical RL: the shared trainer's settings with med.rl's, and the task's own keys
MED_RL = med_rl_config(config)
MED_RLC = MED["rl"]
MED_RL_TAG = "think" if MED_RLC["with_thinking"] else "nothink"
MED_RL_SFT = med_run(MED_RL_TAG, MED["seeds"][0])
MED_RL_INIT = f"results/models/{MED_RL_SFT}/merged"
#: the SFT train rows of the doctor RL starts from: the SFT term of med.rl.sft_coef (PPO-ptx)
MED_RL_SFT_ROWS = f"{MED_DATA}/{MED_RL_TAG}/train.parquet"
#: med.eval without the sampled evaluation's keys: what greedy consultations and RL depend on
#: (changing k_samples, temperature or top_p reruns only the sampled evaluation)
MED_SAMPLED_KEYS = ("k_samples", "temperature", "top_p")
MED_EVAL = {k: v for k, v in MED["eval"].items() if k not in MED_SAMPLED_KEYS}
#: what an RL run's task reads (the seeds and evaluation budgets of the ablation, and whether a
#: control is trained beside it, are not part of a run)
MED_RL_TASK = {"eval": MED_EVAL, "patient": MED["patient"],
               "rl": {k: v for k, v in MED_RLC.items() if k not in ("seeds", "seed", "eval_budgets", "no_signal_control")}}
#: RL doctors: rl-<budget>-seed<S>, and rl-<budget>-control-seed<S>, the no-signal control
#: (rl.shuffle_advantages) of the same budget and seed
MED_RL_RE = r"rl-(fixed|dynamic)(-control)?-seed(\d+)"
MED_RL_RUNS = [f"rl-{m}-seed{s}" for m in MED_RL_MODES for s in MED_RLC["seeds"]]
#: verl's GRPO cannot shuffle advantages: the control is trained on the local backend only
MED_RL_CONTROL = MED_RLC.get("no_signal_control", True) and config["backend"] == "local"
#: the doctors of rl_eval.csv: base, the SFT doctor RL starts from, RL with each budget (first
#: seed), the no-signal control of each budget (med.rl.no_signal_control), scripted, random
MED_RL_DOCTORS = ["base", MED_RL_SFT] + [f"rl-{m}-seed{MED_RLC['seeds'][0]}" for m in MED_RL_MODES] + \
    ([f"rl-{m}-control-seed{MED_RLC['seeds'][0]}" for m in MED_RL_MODES] if MED_RL_CONTROL else []) + \
    (["scripted", "random"] if MED_SYNTH else [])
if MED_RLC["with_thinking"] not in MED["with_thinking"]:
    raise ValueError(f"config key 'med.rl.with_thinking' is {MED_RLC['with_thinking']}, but med.with_thinking "
                     f"{MED['with_thinking']} trains no such SFT doctor to start RL from")
if MED_RLC["budget_range"][0] > MED_RLC["budget_range"][1]:
    raise ValueError(f"config key 'med.rl.budget_range' must be [low, high] with low <= high, got {MED_RLC['budget_range']}")
MED_RL_CASES = min(MED["world"]["cases"]["train"], MED_RLC.get("cases") or MED["world"]["cases"]["train"])
if MED_SYNTH and MED_RL["train_batch"] > MED_RL_CASES:
    raise ValueError(f"config key 'med.rl.train_batch' ({MED_RL['train_batch']}) is larger than the train cases RL "
                     f"uses ({MED_RL_CASES}: med.world.cases.train, med.rl.cases)")


def med_run_info(doctor):
    """with_thinking and seed of an SFT doctor's run name, or of an RL doctor (with_thinking of
    the SFT doctor it starts from, its budget, RL seed and whether it is the no-signal control);
    None for base, scripted, random."""
    m = _re.fullmatch(MED_RUN_RE, doctor)
    if m:
        return {"with_thinking": m.group(1) == "think", "seed": int(m.group(2))}
    m = _re.fullmatch(MED_RL_RE, doctor)
    return {"with_thinking": MED_RLC["with_thinking"], "budget": m.group(1), "seed": int(m.group(3)),
            "control": bool(m.group(2))} if m else None


def med_base_input(wildcards=None):
    return model_input(MED_BASE)


def med_doctor_model(wildcards):
    """The model directory a doctor consults with (none for the scripted and random doctors)."""
    if wildcards.doctor == "base":
        return MED_BASE
    if wildcards.doctor in ("scripted", "random"):
        return None
    if _re.fullmatch(MED_RL_RE, wildcards.doctor):
        return f"results/med/models/{wildcards.doctor}/final"
    return f"results/models/{wildcards.doctor}/merged"


def med_eval_model_input(wildcards):
    """The doctor's model directory as an input (none for scripted, random, a hub base)."""
    model = med_doctor_model(wildcards)
    if model is None:
        return []
    return med_base_input() if wildcards.doctor == "base" else [model]


def med_patient_input(wildcards=None):
    """A local patient model (med.patient: {model: <dir>}) as inputs, its files: new weights rerun
    every consultation and RL run; a hub id, an endpoint or the TF-IDF patient add none."""
    model = local_model_dir(MED["patient"])
    return local_model_files(model) if model else []


def med_sft_data(wildcards):
    return {"train": f"{MED_DATA}/{wildcards.thinking}/train.parquet",
            "val": f"{MED_DATA}/{wildcards.thinking}/val.parquet"}


MED_SFT_DIR = f"results/med/sft/{MED['run_name']}-{{thinking}}-seed{{seed}}"
MED_MERGED = f"results/models/{MED['run_name']}-{{thinking}}-seed{{seed}}/merged"

