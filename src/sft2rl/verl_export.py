"""The verl backend's run-time steps (need torch; run inside the jobs, never at DAG time).

``workflow/scripts/verl_export.py`` is their command line; :mod:`sft2rl.verl_launch` writes the
shell lines that call them. Before ``main_ppo``: :func:`prepare_rl_run` (the content-keyed
restart guard of :mod:`sft2rl.resume`, and the plan: how many steps the run must take).
After training: the SFT metrics, the checkpoint choice, verl's merger output folded into
a verified HF directory (with full fine-tuning, the checkpoint's own fp32 weights: the merger
casts them to bfloat16), and the RL summary, which fails the job when the steps run differ
from the steps planned.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from .errors import MergeError, RunError
from .fingerprint import module_closure, run_key
from .io import atomic_dir, read_parquet_rows, write_json
from .logutil import LOG
from .resume import planned_steps, prepare_run_dir
from .verl_launch import GROUP_REWARD_LOG, ROLLOUT_GENERATION_CONFIG, SFT_IGNORED

PLAN_FILE = "plan.json"
#: Libraries whose version is part of a verl GRPO run's restart key.
LIBRARIES = ("torch", "transformers", "verl", "vllm", "sglang")


def prepare_rl_run(run_dir: str | Path, *, init: str, train: str, config_hash: str, max_prompt_length: int,
                   train_batch: int, epochs: int, total_steps: int | None) -> dict[str, Any]:
    """Before ``main_ppo``: decide whether verl may resume from the checkpoints in ``run_dir``
    (same content key: init weights, train data, hook code, overrides) and write the plan.

    The plan counts the prompts verl keeps (its overlong filter, with the init model's
    tokenizer) and the steps the run must take (:func:`sft2rl.resume.planned_steps`), and
    records the rollout's stop ids, written for vLLM to ``<run_dir>/rollout_generation_config``
    (:func:`write_rollout_generation_config`).
    """
    from transformers import AutoTokenizer

    from .generation import filter_overlong_prompts

    key = run_key(models={"init": init}, data={"train": train},
                  modules=module_closure(["tasks.qa.verl_hooks", "verl_export"]),  # the hooks; the rollout's stop ids
                  params={"overrides": config_hash}, libraries=LIBRARIES)
    guard = prepare_run_dir(run_dir, key, also_clear=(GROUP_REWARD_LOG, PLAN_FILE))
    tokenizer = AutoTokenizer.from_pretrained(init)
    rows = read_parquet_rows(train)
    kept, dropped = filter_overlong_prompts(rows, tokenizer, max_prompt_length)
    if dropped:
        LOG.warning("%s: %d of %d prompts are longer than rl.max_prompt_length = %d tokens; verl leaves them out "
                    "(data.filter_overlong_prompts); first: row %d", train, len(dropped), len(rows),
                    max_prompt_length, dropped[0])
    stops = write_rollout_generation_config(init, Path(run_dir) / ROLLOUT_GENERATION_CONFIG)
    plan = {"planned_steps": planned_steps(len(kept), train_batch, epochs, total_steps), "train_rows": len(kept),
            "filtered_prompts": len(dropped), "run_key": key["key"], "start": guard["reason"],
            "stop_token_ids": stops}
    write_json(Path(run_dir) / PLAN_FILE, plan)
    return plan


#: An agent-loop RL run's files (the games', the medical consultation's; backend: verl), in its run directory.
GAME_TRAIN = "train.parquet"
AGENT_LOOPS = "agent_loops.yaml"
EPISODE_LOG = "episodes.jsonl"


def prepare_game_rl(run_dir: str | Path, *, init: str, levels: str, env: str, games: dict[str, Any], seed: int,
                    config_hash: str, train_batch: int, epochs: int, total_steps: int | None) -> dict[str, Any]:
    """Before ``main_ppo`` of a games run: the restart guard (init weights, levels, the agent
    loop's code, overrides, games config), verl's RL parquet of the train levels, the agent-loop
    file that registers :class:`sft2rl.tasks.games.verl_agent.GameAgentLoop` with this run's
    games config, the rollout's stop ids, and the plan. ``plan["response_length"]`` is the
    longest episode's response (:func:`~sft2rl.tasks.games.rl.episode_token_budget`): the
    command line passes it to ``data.max_response_length``."""
    import yaml
    from transformers import AutoTokenizer

    from .io import write_parquet, write_text
    from .tasks.games import VERL_AGENT_NAME
    from .tasks.games.play import check_reply_limit
    from .tasks.games.rl import episode_token_budget, rl_levels, verl_rows

    run = Path(run_dir).resolve()
    key = run_key(models={"init": init}, data={"levels": levels},
                  modules=module_closure(["tasks.games.verl_agent", "verl_export"]),
                  params={"overrides": config_hash, "games": games, "env": env, "seed": seed}, libraries=LIBRARIES)
    guard = prepare_run_dir(run, key, also_clear=(EPISODE_LOG, PLAN_FILE))
    train = rl_levels(levels, games)  # the levels the local task plays
    if not train:
        raise RunError(f"{levels}: no train levels")
    tokenizer = AutoTokenizer.from_pretrained(init)
    check_reply_limit(tokenizer, train, games["eval"]["max_new_tokens"], games["with_thinking"], levels)
    write_parquet(run / GAME_TRAIN, verl_rows(env, train, games, seed))
    loops = [{"name": VERL_AGENT_NAME, "_target_": "sft2rl.tasks.games.verl_agent.GameAgentLoop", "env": env,
              "games": games, "episode_log": str(run / EPISODE_LOG), "attempt": next_attempt(run / EPISODE_LOG)}]
    write_text(run / AGENT_LOOPS, yaml.safe_dump(loops, sort_keys=False))
    budget = episode_token_budget(tokenizer, env, train, games, _model_type(init))
    stops = write_rollout_generation_config(init, run / ROLLOUT_GENERATION_CONFIG)
    plan = {"planned_steps": planned_steps(len(train), train_batch, epochs, total_steps), "train_rows": len(train),
            "run_key": key["key"], "start": guard["reason"], "stop_token_ids": stops, **budget}
    write_json(run / PLAN_FILE, plan)
    return plan


def prepare_med_rl(run_dir: str | Path, *, init: str, cases: str, mode: str, med: dict[str, Any], seed: int,
                   config_hash: str, max_prompt_length: int, train_batch: int, epochs: int,
                   total_steps: int | None) -> dict[str, Any]:
    """Before ``main_ppo`` of a medical run: the restart guard (init weights, cases, the agent
    loop's code, overrides, med config, budget mode, seed), verl's RL parquet of the train cases
    (:func:`med_verl_rows`: each with its turn budget), the agent-loop file that registers
    :class:`sft2rl.tasks.med.verl_agent.MedAgentLoop` with this run's med config and the rollout's
    stop ids, and the plan. A first-turn prompt over ``max_prompt_length`` tokens is an error (as
    on the local backend: verl would leave the case out). ``plan["response_length"]`` is the
    longest consultation's response (:func:`med_episode_token_budget`): the command line passes
    it to ``data.max_response_length``."""
    import yaml
    from transformers import AutoTokenizer

    from .generation import prompt_lengths
    from .io import write_parquet, write_text
    from .tasks.med import VERL_AGENT_NAME
    from .tasks.med.data import read_cases
    from .tasks.med.patient import patient_backend, run_key_parts

    run = Path(run_dir).resolve()
    # a local patient model keys by its files, not its path (as MedTask.key)
    patient_data, keyed_med, patient = run_key_parts(
        med, patient_backend(med.get("patient", "rule"), med["eval"]["patient_threshold"]).describe())
    key = run_key(models={"init": init}, data={"cases": cases, **patient_data},
                  modules=module_closure(["tasks.med.verl_agent", "tasks.med.rl", "verl_export"]),
                  params={"overrides": config_hash, "med": keyed_med, "mode": mode, "seed": seed, "patient": patient},
                  libraries=LIBRARIES)
    guard = prepare_run_dir(run, key, also_clear=(EPISODE_LOG, PLAN_FILE))
    train = read_cases(cases)
    if med["rl"].get("cases"):  # RL on the first ``med.rl.cases`` train cases only (as MedTask.load)
        train = train[:int(med["rl"]["cases"])]
    if not train:
        raise RunError(f"{cases}: no train cases")
    tokenizer = AutoTokenizer.from_pretrained(init)
    rows = med_verl_rows(train, med, mode, seed)
    longest = max(prompt_lengths(tokenizer, [r["prompt"] for r in rows]))
    if longest > max_prompt_length:
        raise RunError(f"{cases}: a first-turn prompt has {longest} tokens, more than rl.max_prompt_length = "
                       f"{max_prompt_length}; raise it (prompts are never cut)")
    write_parquet(run / GAME_TRAIN, rows)
    budget = med_episode_token_budget(tokenizer, train, max(r["extra_info"]["max_turns"] for r in rows), med,
                                      _model_type(init))
    stops = write_rollout_generation_config(init, run / ROLLOUT_GENERATION_CONFIG)
    loops = [{"name": VERL_AGENT_NAME, "_target_": "sft2rl.tasks.med.verl_agent.MedAgentLoop", "med": med,
              "episode_log": str(run / EPISODE_LOG), "attempt": next_attempt(run / EPISODE_LOG)}]
    write_text(run / AGENT_LOOPS, yaml.safe_dump(loops, sort_keys=False))
    plan = {"planned_steps": planned_steps(len(rows), train_batch, epochs, total_steps), "train_rows": len(rows),
            "run_key": key["key"], "start": guard["reason"], "stop_token_ids": stops, "mode": mode,
            "longest_prompt": longest, **budget}
    write_json(run / PLAN_FILE, plan)
    return plan


def med_verl_rows(cases: list[dict[str, Any]], med: dict[str, Any], mode: str, seed: int) -> list[dict[str, Any]]:
    """One row of verl's RL parquet per train case: the first turn's chat (``prompt``, what verl's
    dataset tokenises and filters by length, the budget stated), the agent loop that plays it,
    and in ``extra_info`` the case (JSON) and its turn budget: ``med.eval.max_turns`` (``fixed``)
    or drawn per case from ``med.rl.budget_range`` with ``seed`` (``dynamic``,
    :func:`sft2rl.tasks.med.rl.budgets`). The ``rollout.n`` consultations of a group share
    their case's budget, as on the local backend; but a case keeps its budget for the whole run
    here, where the local backend draws it again each step the case is trained (the same
    distribution within one epoch; over several epochs verl replays each case's one draw)."""
    from .tasks.med import VERL_AGENT_NAME
    from .tasks.med.consult import Consultation
    from .tasks.med.rl import budgets

    limits = budgets(mode, len(cases), med["eval"]["max_turns"], med["rl"]["budget_range"], seed)
    with_thinking = bool(med["rl"]["with_thinking"])
    return [{"data_source": "sft2rl/med", "prompt": Consultation(i, case, limit, with_thinking).prompt(),
             "agent_name": VERL_AGENT_NAME, "ability": "medical_consultation",
             "reward_model": {"style": "rule", "ground_truth": case["truth"]["diagnosis"]},
             "extra_info": {"case": json.dumps(case), "max_turns": int(limit), "index": i}}
            for i, (case, limit) in enumerate(zip(cases, limits))]


def _model_type(model_dir: str) -> str | None:
    """The HF ``model_type`` of a model directory (the agent loops' token builder follows it)."""
    from transformers import AutoConfig

    return getattr(AutoConfig.from_pretrained(model_dir), "model_type", None)


def med_episode_token_budget(tokenizer, cases: list[dict[str, Any]], max_turns: int, med: dict[str, Any],
                             model_type: str | None = None) -> dict[str, int]:
    """The most response tokens one consultation can take in the agent loop (its
    ``rollout.response_length``): ``max_turns`` replies of ``med.eval.max_new_tokens`` and,
    between them, ``max_turns - 1`` patient turns, each as long as the longest user turn the
    chat template renders for what the patient can say, with the forced-diagnosis line, plus two
    tokens of margin at the turn boundary (the newline after an end-of-turn token; a reply cut at
    the limit is followed directly by the patient's turn). What the patient can say: "Sorry, I do not understand.",
    and for the rule patient "Sorry, I do not know." and every recorded answer of the cases; a
    model patient's answer counts as twice its token limit (its tokenizer may split the text
    into fewer tokens than the doctor's). The longest turn is counted as the agent loop's token
    builder for ``model_type`` appends it (:func:`sft2rl.chat_tokens.message_tokens`: a
    template's think scaffold included)."""
    from .chat_tokens import message_tokens, rendered_length
    from .tasks.med.dialog import DONT_KNOW, FORCE, NOT_UNDERSTOOD
    from .tasks.med.patient import patient_backend, recorded_pairs

    head = [*cases[0]["first"], {"role": "assistant", "content": "x"}]
    base = rendered_length(tokenizer, head, False)

    def turn(text: str) -> int:
        return rendered_length(tokenizer, head + [{"role": "user", "content": text + "\n" + FORCE}], True) - base

    ev = med["eval"]
    patient = patient_backend(med.get("patient", "rule"), ev["patient_threshold"]).describe()
    said = {NOT_UNDERSTOOD}
    extra = 0
    if patient["kind"] == "rule":
        said |= {DONT_KNOW} | {a for c in cases for _, a in recorded_pairs(c["patient_information"])}
    else:
        extra = 2 * int(patient.get("max_new_tokens") or patient.get("max_tokens"))
        said |= {""}
    widest = max(sorted(said), key=turn)  # as the builder appends it (at least the template's count)
    observation = message_tokens(tokenizer, head, [{"role": "user", "content": widest + "\n" + FORCE}],
                                 model_type) + extra + 2
    reply = int(ev["max_new_tokens"])
    return {"observation_tokens": observation, "reply_tokens": reply, "max_turns": int(max_turns),
            "response_length": max_turns * reply + (max_turns - 1) * observation}


def _episode_records(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def next_attempt(path: str | Path) -> int:
    """The number of this start of an agent-loop run: one more than the episode log's latest
    (1 on a fresh run, whose log the restart guard has cleared)."""
    return 1 + max((int(r.get("attempt", 1)) for r in _episode_records(path)), default=0)


def episodes_by_step(path: str | Path) -> dict[int, list[dict[str, Any]]]:
    """An agent loop's episode log (one JSON line per finished episode) grouped by the weights
    version the rollout server reported (lines without one are left out). A step that a resumed
    run played again (verl restarts after its last checkpoint) keeps the episodes of the latest
    start (``attempt``) only, as the QA hook's log keeps a step's later record."""
    by_step: dict[int, list[dict]] = {}
    for rec in _episode_records(path):
        if rec.get("step") is not None:
            by_step.setdefault(int(rec["step"]), []).append(rec)
    for step, recs in by_step.items():
        latest = max(int(r.get("attempt", 1)) for r in recs)
        by_step[step] = [r for r in recs if int(r.get("attempt", 1)) == latest]
    return dict(sorted(by_step.items()))


def game_rl_history(path: str | Path) -> list[dict[str, Any]]:
    """Per training step (the weights version the rollout server reported), the mean of the
    agent loop's finished episodes: success, score (the reward), turns, invalid-action rate."""
    import numpy as np

    out = []
    for step, eps in episodes_by_step(path).items():
        steps = sum(e["steps"] for e in eps)
        out.append({"step": step + 1, "n": len(eps), "success": float(np.mean([e["won"] for e in eps])),
                    "reward_mean": float(np.mean([e["score"] for e in eps])),
                    "turns": float(np.mean([e["steps"] for e in eps])),
                    "invalid_rate": 1 - sum(e["valid"] for e in eps) / steps if steps else 0.0})
    return out


def med_rl_history(path: str | Path) -> list[dict[str, Any]]:
    """Per training step (the weights version the rollout server reported + 1), the means of the
    medical agent loop's consultations, with the local backend's keys
    (:func:`sft2rl.tasks.med.rl.episode_metrics`: episode_reward and every reward term, success,
    accuracy, turns, the rates) plus ``reward_mean`` (= episode_reward) and ``budget``."""
    import numpy as np

    from .tasks.med.rl import episode_metrics

    out = []
    for step, eps in episodes_by_step(path).items():
        metrics = episode_metrics(eps)
        out.append({"step": step + 1, "n": len(eps), "reward_mean": metrics["episode_reward"], **metrics,
                    "budget": float(np.mean([e["max_turns"] for e in eps]))})
    return out


def rollout_stop_ids(init: str) -> tuple[list[int], Any]:
    """The init model's stop ids (:func:`sft2rl.generation.stop_token_ids`, from its tokenizer,
    chat template and generation config) and that generation config, loaded as verl does
    (``generation_config.json``, else derived from ``config.json``; None if neither)."""
    from transformers import AutoTokenizer, GenerationConfig

    from .generation import stop_token_ids

    try:
        gen = GenerationConfig.from_pretrained(init)
    except OSError:
        try:
            from transformers import AutoConfig

            gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(init))
        except OSError:
            gen = None
    return stop_token_ids(None, AutoTokenizer.from_pretrained(init), gen), gen


def write_rollout_generation_config(init: str, out_dir: str | Path) -> list[int]:
    """The folder vLLM loads its generation config from (``--generation-config``, set by
    :func:`sft2rl.verl_launch.ppo_overrides`): the init model's generation config with
    ``eos_token_id`` = every stop id, so verl's rollout stops where the local backend's does.
    Returns the ids. The model directory itself is left as it is."""
    from transformers import GenerationConfig

    from .rollout import as_ids

    ids, gen = rollout_stop_ids(init)
    own = [] if gen is None else as_ids(gen.eos_token_id)
    if set(ids) - set(own):
        LOG.info("%s: its generation config stops at %s only; vLLM gets every stop id %s from %s (an SGLang "
                 "rollout would read the model's own)", init, own, ids, out_dir)
    gen = GenerationConfig() if gen is None else gen
    gen.eos_token_id = ids
    gen._from_model_config = False
    with atomic_dir(out_dir) as tmp:
        gen.save_pretrained(tmp)
    return ids


def check_planned_steps(run_dir: str | Path, step: int) -> int:
    """The step verl's last checkpoint reached must be the planned one; returns it."""
    plan_path = Path(run_dir) / PLAN_FILE
    if not plan_path.is_file():
        raise RunError(f"{plan_path}: missing (prepare-rl did not run before main_ppo)")
    planned = json.loads(plan_path.read_text())["planned_steps"]
    if step != planned:
        raise RunError(f"verl GRPO stopped at step {step} but {planned} steps were planned ({plan_path}); "
                       "refusing to export it as finished")
    return planned


def _checkpoints(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    out = []
    for d in Path(ckpt_root).glob("global_step_*"):
        m = re.fullmatch(r"global_step_(\d+)", d.name)
        if m and d.is_dir():
            out.append((int(m[1]), d))
    return sorted(out)


def sft_metrics(run_dir: str | Path, sft_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics.json of a verl SFT run: one entry per saved checkpoint (= epoch), with losses from TensorBoard."""
    from .tblog import read_scalars

    run = Path(run_dir)
    ckpts = _checkpoints(run / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"{run / 'checkpoints'}: no global_step_<N> checkpoint (did verl's SFT run?)")
    scalars = read_scalars(run / "tensorboard")
    val = dict(scalars.get("val/loss", []))
    train = dict(scalars.get("train/loss", []))
    epochs = [{"epoch": k, "step": step, "checkpoint": str(path.relative_to(run)),
               "train_loss": train.get(step), "val_loss": val.get(step)}
              for k, (step, path) in enumerate(ckpts, start=1)]
    # verl's validation loader drops a last partial batch: with fewer validation rows than a
    # batch it logs NaN, which no "best" may be chosen by
    nan = []
    for e in epochs:
        if e["val_loss"] is not None and math.isnan(e["val_loss"]):
            nan.append(e["step"])
            e["val_loss"] = None
    logged = [e for e in epochs if e["val_loss"] is not None]
    metrics = {
        "backend": "verl", "epochs": epochs, "steps": ckpts[-1][0],
        "val_loss_logged": bool(logged),
        "val_loss_nan_steps": nan,
        "best_epoch": min(logged, key=lambda e: e["val_loss"])["epoch"] if logged else None,
        "ignored_config_keys": {k: sft_cfg.get(k) for k in SFT_IGNORED} if sft_cfg else list(SFT_IGNORED),
    }
    return metrics


def choose_sft_checkpoint(run_dir: str | Path, which: str | int) -> tuple[Path, str]:
    """The step directory to merge and why: ``last``, ``best`` (lowest logged val loss) or an epoch number."""
    run = Path(run_dir)
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = metrics["epochs"]
    if which == "best":
        if metrics.get("val_loss_nan_steps"):
            raise RunError(f"{run}: sft.merge_checkpoint best, but verl logged val/loss NaN at steps "
                           f"{metrics['val_loss_nan_steps']}: its validation loader drops a last partial batch, "
                           "so fewer validation rows than a batch (sft.train_batch / GPUs) leave none; give SFT "
                           "more validation rows, or merge last or an epoch")
        if metrics.get("best_epoch") is not None:
            e = next(e for e in epochs if e["epoch"] == metrics["best_epoch"])
            return run / e["checkpoint"], f"best: lowest val loss {e['val_loss']:.4g} at step {e['step']}"
        return run / epochs[-1]["checkpoint"], ("best requested, but verl logged no val loss at the saved steps: "
                                                "using the last checkpoint")
    if which == "last":
        return run / epochs[-1]["checkpoint"], "last"
    match = [e for e in epochs if str(e["epoch"]) == str(which)]
    if not match:
        raise ValueError(f"config key 'sft.merge_checkpoint' = {which!r}: expected last, best or one of the run's "
                         f"epochs {[e['epoch'] for e in epochs]}")
    return run / match[0]["checkpoint"], f"epoch {which} (step {match[0]['step']})"


def latest_rl_checkpoint(ckpt_root: str | Path) -> Path:
    """verl's latest checkpoint (its tracker file, else the highest global_step_<N> with an actor/)."""
    root = Path(ckpt_root)
    tracker = root / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        step = int(tracker.read_text().strip())
        path = root / f"global_step_{step}"
        if (path / "actor").is_dir():
            return path
    ckpts = [(s, p) for s, p in _checkpoints(root) if (p / "actor").is_dir()]
    if not ckpts:
        raise FileNotFoundError(f"{root}: no global_step_<N>/actor checkpoint (did main_ppo save one?)")
    return ckpts[-1][1]


def fold_lora(merger_dir: str | Path, base: str, out_dir: str | Path) -> dict[str, Any]:
    """Fold the ``lora_adapter/`` that verl's merger wrote into ``base`` (verified, atomic).

    ``base`` is the model the run started from (the SFT base, or the GRPO init model), not the
    merger's own copy of the base weights, which verl's merger casts to bfloat16.
    """
    from .merge import merge_adapter

    merger_dir = Path(merger_dir)
    adapter = merger_dir / "lora_adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise MergeError(f"{merger_dir}: no lora_adapter/adapter_config.json; verl's merger found no LoRA "
                         "weights in this checkpoint (was model.lora_rank > 0?)")
    return merge_adapter(str(base), str(adapter), str(out_dir))


def fsdp_state_dict(shards_dir: str | Path) -> dict[str, Any]:
    """The model weights of a verl FSDP checkpoint (``model_world_size_<W>_rank_<r>.pt`` and
    ``fsdp_config.json``), merged from the ranks in the dtype FSDP saved them (fp32 master
    weights by default). verl's merger casts every tensor to bfloat16, which rounds a weight to
    about 3 significant digits: an RL update of lr 1e-6 to 1e-4 per step is mostly below that,
    so its full-fine-tuning output is not the trained policy.

    A DTensor is sharded over the mesh's last (FSDP) dimension: its ranks' local tensors are
    concatenated along the shard dimension, or one is kept when replicated; with a
    ``("ddp", "fsdp")`` mesh the first FSDP group holds one whole copy. A plain tensor (a buffer,
    an unsharded parameter) must be the same on every rank."""
    import torch
    from torch.distributed.tensor import DTensor

    shards_dir = Path(shards_dir)
    config = shards_dir / "fsdp_config.json"
    if not config.is_file():
        raise MergeError(f"{shards_dir}: no fsdp_config.json (not a verl FSDP checkpoint)")
    world = int(json.loads(config.read_text())["world_size"])

    def load(rank: int) -> dict[str, Any]:
        path = shards_dir / f"model_world_size_{world}_rank_{rank}.pt"
        if not path.is_file():
            raise MergeError(f"{path}: missing (fsdp_config.json says world_size {world})")
        return torch.load(path, map_location="cpu", weights_only=False)

    first = load(0)
    pivot = next((v for v in first.values() if isinstance(v, DTensor)), None)
    names = tuple(pivot.device_mesh.mesh_dim_names or ()) if pivot is not None else ("fsdp",)
    if names not in (("fsdp",), ("ddp", "fsdp")):
        raise MergeError(f"{shards_dir}: device mesh {names} is not supported (FSDP, optionally with DDP)")
    group = int(pivot.device_mesh.mesh.shape[-1]) if pivot is not None and len(names) == 2 else world
    ranks = [first] + [load(r) for r in range(1, group)]
    state: dict[str, Any] = {}
    for key in first:
        parts = [r[key] for r in ranks]
        if isinstance(parts[0], DTensor):
            placement = parts[0].placements[-1]
            local = [t.to_local() for t in parts]
            if placement.is_shard():
                state[key] = torch.cat(local, dim=placement.dim).contiguous()
            elif placement.is_replicate():
                state[key] = local[0]
            else:
                raise MergeError(f"{shards_dir}: {key} has placement {placement}, which cannot be merged")
        else:
            if any(t.shape != parts[0].shape or not torch.equal(t, parts[0]) for t in parts[1:]):
                raise MergeError(f"{shards_dir}: {key} is a plain tensor that differs between ranks")
            state[key] = parts[0]
    return state


def export_full_checkpoint(shards_dir: str | Path, merger_dir: str | Path, base: str,
                           out_dir: str | Path) -> dict[str, Any]:
    """Full fine-tuning on verl: the trained weights as FSDP saved them (:func:`fsdp_state_dict`)
    into the model verl's merger wrote (its config, tokenizer and generation config; its weights,
    rounded to bfloat16, are all replaced), then exported and verified as the local backend's
    (:func:`sft2rl.merge.export_full`: trained, and the written model computes the checkpoint's
    logits). ``base``: the model the run started from."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .merge import export_full

    merger_dir = Path(merger_dir)
    if (merger_dir / "lora_adapter").exists():
        raise MergeError(f"{merger_dir}: has a lora_adapter/ but the run trained every weight (train_mode full)")
    state = fsdp_state_dict(shards_dir)
    model = AutoModelForCausalLM.from_pretrained(merger_dir, dtype=torch.float32)
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise MergeError(f"{shards_dir}: weights the model of {merger_dir} does not have: {unexpected[:5]}")
    loaded_ptrs = {own[k].data_ptr() for k in state}
    untied = sorted(k for k in set(own) - set(state) if own[k].data_ptr() not in loaded_ptrs)
    if untied:
        raise MergeError(f"{shards_dir}: no weights for {untied[:5]} (and they are not tied to saved ones)")
    rounding = max(float((own[k].float() - state[k].float()).abs().max()) for k in state)
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
    del own, state
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # one staging name per output: a killed export's copy is removed by the next one
    staging = out_dir.parent / f".{out_dir.name}.weights.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        del model  # export_full loads it again (with the base): one fp32 copy at a time here
        gc.collect()
        AutoTokenizer.from_pretrained(merger_dir).save_pretrained(staging)
        for extra in ("generation_config.json",):
            if (merger_dir / extra).is_file() and not (staging / extra).is_file():
                shutil.copy2(merger_dir / extra, staging / extra)
        report = export_full(str(base), str(staging), str(out_dir))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report["verl_merger_max_rounding"] = rounding
    LOG.info("full weights from %s (verl's bfloat16 merger output differed by up to %.3g)", shards_dir, rounding)
    return report


def read_group_reward_log(path: str | Path) -> list[dict[str, Any]]:
    """The hook's per-step records; for a step logged twice (a resumed run) the later one wins."""
    path = Path(path)
    if not path.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def rl_summary(run_dir: str | Path, step_dir: str | Path, train_mode: str, total_steps: int | None,
               export: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """summary.json of a verl GRPO run (same keys as the local backend's), and rl/* TensorBoard tags.

    The tags the figures read (``rl/reward_mean``, ``rl/kl``) are written next to verl's own
    events: rewards from the hook's log (verl's ``critic/score`` holds the per-rollout codes),
    or ``history`` where the run has its own (an agent-loop run: :func:`game_rl_history`,
    :func:`med_rl_history`), KL from
    verl's ``actor/kl_loss``.
    """
    import numpy as np

    from .tblog import read_scalars

    run = Path(run_dir)
    history = read_group_reward_log(run / GROUP_REWARD_LOG) if history is None else history
    scalars = read_scalars(run / "tensorboard")
    kl_tag = "actor/kl_loss" if "actor/kl_loss" in scalars else next(
        (t for t in scalars if t.endswith("kl_loss")), None)
    kl = dict(scalars.get(kl_tag, [])) if kl_tag else {}
    for rec in history:
        if rec["step"] in kl:
            rec["kl"] = kl[rec["step"]]
    if history:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tensorboard"), filename_suffix=".sft2rl")
        for rec in history:
            for k, v in rec.items():
                if k not in ("step", "n") and isinstance(v, (int, float)):
                    writer.add_scalar(f"rl/{k}", v, rec["step"])
        writer.close()

    def avg(hist: list[dict], key: str) -> float | None:
        vals = [h[key] for h in hist if key in h]
        return float(np.mean(vals)) if vals else None

    step = int(Path(step_dir).name.split("_")[-1])
    plan = json.loads((run / PLAN_FILE).read_text()) if (run / PLAN_FILE).is_file() else {}
    step_times = [v for _, v in scalars.get("timing_s/step", [])]
    # as the local summary: the rows trained on, the prompts left out as too long, and the seconds
    # of training (here the steps' times verl logged, timing_s/step, summed: no start-up)
    return {"backend": "verl", "steps": step, "total_steps": total_steps, "train_mode": train_mode,
            "train_rows": plan.get("train_rows"), "filtered_prompts": plan.get("filtered_prompts", 0),
            "seconds": float(sum(step_times)) if step_times else None,
            "last_checkpoint": str(step_dir), "logged_steps": len(history),
            "first": history[0] if history else None, "last": history[-1] if history else None,
            "reward_first10": avg(history[:10], "reward_mean"), "reward_last10": avg(history[-10:], "reward_mean"),
            "history": history, "export": export}
