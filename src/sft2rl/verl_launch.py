"""The verl backend (``backend: verl``): command lines generated at DAG time, and the export steps.

Snakemake's ``sft``, ``merge`` and ``grpo`` rules of ``workflow/rules/verl.smk`` run shell
commands built here from the same config sections the local backend reads (``sft``, ``rl``,
``reward``) plus ``verl`` (cluster shape, rollout engine), so ``snakemake -n -p`` shows every
``torchrun ... -m verl.trainer.sft_trainer`` and ``python -m verl.trainer.main_ppo`` line with
its Hydra overrides. Importing this module costs nothing (no torch, no verl): it is imported
while Snakemake builds the DAG.

Key facts of verl 0.9.1 this relies on (checked against its source and Hydra configs):

* SFT: ``verl.trainer.sft_trainer`` (config ``sft_trainer_engine.yaml``) reads chat
  ``messages`` parquet (our ``sft_data`` output), trains LoRA when ``model.lora_rank > 0``,
  writes ``<trainer.default_local_dir>/global_step_<N>/`` (FSDP shards, ``huggingface/``,
  ``lora_train_meta.json``), logs ``train/loss`` and, at ``trainer.test_freq``, ``val/loss``
  to TensorBoard (``TENSORBOARD_DIR``). Its LR schedules are ``constant`` and ``cosine``
  only, LoRA has no dropout key, and peft's ``trainable_token_indices`` (our
  ``sft.train_tokens``) has no equivalent: those keys are refused or reported, see
  :data:`SFT_IGNORED`.
* GRPO: ``verl.trainer.main_ppo`` (``ppo_trainer.yaml``, the V1 trainer by default). Reward
  function keys live under ``reward.custom_reward_function.*`` (the old top-level
  ``custom_reward_function.*`` and ``reward_model.reward_manager`` keys are never emitted).
  The reward function is called once per rollout, so the group-aware reward is computed in
  an advantage estimator registered by :mod:`sft2rl.tasks.qa.verl_hooks`, loaded in every process
  through ``VERL_USE_EXTERNAL_MODULES`` (read by ``verl/__init__.py``); its options travel
  in ``algorithm.group_reward`` (see that module).
* ``clip_ratio_low``/``clip_ratio_high`` default to 0.2 in verl's YAML and win over
  ``clip_ratio``: all three are set.
* Stop ids: verl's rollout passes no stop ids of its own (``AgentLoopWorker`` sends
  temperature, top_p, top_k, repetition_penalty, logprobs; ``vLLMHttpServer.generate`` adds
  max_tokens and ``ignore_eos=False``), and ``vllm serve`` gets the model directory plus
  ``rollout.engine_kwargs.vllm`` as CLI flags. vLLM then stops at its tokenizer's EOS and at
  every ``eos_token_id`` of the generation config it loads (``SamplingParams.
  update_from_generation_config``), from the model directory unless ``--generation-config``
  names a folder. A Qwen2.5 base's own file lists ``<|endoftext|>`` only, so each run points
  vLLM at ``<run_dir>/rollout_generation_config``, written by ``prepare-rl``: the init
  model's generation config with ``eos_token_id`` = :func:`sft2rl.generation.stop_token_ids`,
  the ids the local backend stops at. SGLang reads only the model's own files.
* ``python -m verl.model_merger merge --backend fsdp`` writes the base weights plus a
  separate ``lora_adapter/``; folding the adapter in (verified) is ours:
  :func:`fold_lora` calls :func:`sft2rl.merge.merge_adapter` with the run's own base model
  (the merger's copy of the base weights is cast to bfloat16). With full fine-tuning the
  merger's bfloat16 weights are replaced by the checkpoint's own
  (:func:`sft2rl.verl_export.export_full_checkpoint`), the merger giving the model's config and
  tokenizer.
"""
from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Any

from .errors import VerlConfigError  # noqa: F401  (re-exported: verl_launch.VerlConfigError)

HOOK_MODULE = "sft2rl.tasks.qa.verl_hooks"
ADV_ESTIMATOR = "group_aware_grpo"
REWARD_FN_PATH = f"pkg://{HOOK_MODULE}"
REWARD_FN_NAME = "compute_score"
#: Keys of ``algorithm.group_reward`` the advantage estimator reads (the group step).
GROUP_REWARD_KEYS = ("beta", "format_bonus", "acc_over")
#: Reward options the per-rollout function reads (``reward.custom_reward_function.reward_kwargs``).
ROLLOUT_REWARD_KEYS = ("min_proactive_length", "match")
#: Legacy reward keys verl 0.9.1 does not read where we mean them; never emitted.
LEGACY_KEYS = ("custom_reward_function.", "reward_model.reward_manager", "reward_model.")
#: SFT keys of our config without a verl 0.9.1 equivalent (recorded in metrics.json).
SFT_IGNORED = ("train_tokens",)
VERL_DEFAULTS: dict[str, Any] = {
    "nnodes": 1,
    "gpus_per_node": 1,
    "rollout_name": "vllm",
    "gpu_memory_utilization": 0.5,
    "tensor_model_parallel_size": 1,
    "max_token_len_per_gpu": 16384,
    "rdzv_port": 29500,
    "cpus_per_node": 16,
    "mem_mb": 128000,
    "sft_runtime": 240,
    "grpo_runtime": 1440,
}
PROJECT = "sft2rl"
GROUP_REWARD_LOG = "group_reward.jsonl"
VERL_HF = "verl_hf"  # where verl.model_merger writes (base weights + lora_adapter/), per run
#: Per GRPO run: the init model's generation config with ``eos_token_id`` = every stop id
#: (sft2rl.generation.stop_token_ids), written by ``prepare-rl``, read by vLLM (``--generation-config``).
ROLLOUT_GENERATION_CONFIG = "rollout_generation_config"
_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./\-]+$")




# ------------------------------------------------------------------ helpers
def verl_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The ``verl`` config section with defaults filled in."""
    return {**VERL_DEFAULTS, **(config.get("verl") or {})}


def _v(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_v(v) for v in value) + "]"
    return str(value)


def _kv(key: str, value: Any) -> str:
    return f"{key}={_v(value)}"


#: The shell variables a generated command may expand when the job runs (the working
#: directory, SLURM's job variables, ours, PYTHONPATH); any other ``$``, ``$(…)`` or backtick
#: in an argument (a config value) stays literal.
KNOWN_VARS = re.compile(r"\$(?:PWD\b|SLURM_[A-Z_]+|SFT2RL_[A-Z_]+|\{PYTHONPATH:\+:\$PYTHONPATH\}|PYTHONPATH\b)")


def quote(arg: str) -> str:
    """Shell-quote one argument so that only :data:`KNOWN_VARS` expand when the job runs.

    An argument whose only ``$`` are known variables (and no backtick, ``"`` or ``\\``) is
    double-quoted whole (``"model.path=$PWD/x"``); anything else with a known variable is
    single-quoted piece by piece around the variables; the rest is single-quoted as needed.
    So a config value such as ``$(rm -rf ~)`` or a backtick is passed on as text, never run.
    """
    if not KNOWN_VARS.search(arg):
        return arg if _SAFE.match(arg) else shlex.quote(arg)
    literal = KNOWN_VARS.sub("", arg)
    if not re.search(r'[$`"\\]', literal):
        return f'"{arg}"'
    out, pos = [], 0
    for m in KNOWN_VARS.finditer(arg):
        if m.start() > pos:
            out.append(shlex.quote(arg[pos:m.start()]))
        out.append(f'"{m.group(0)}"')
        pos = m.end()
    if pos < len(arg):
        out.append(shlex.quote(arg[pos:]))
    return "".join(out)


def _cmd(argv: list[str]) -> str:
    return " ".join(quote(a) for a in argv)


def _lines(launcher: list[str], overrides: list[str]) -> str:
    """One shell command: the launcher on the first line, then one override per continuation line."""
    return " \\\n    ".join([_cmd(launcher), *(quote(o) for o in overrides)])


def _target_modules(tm: str | list[str]) -> str | list[str]:
    return tm if isinstance(tm, str) else list(tm)


def _alpha(alpha: float, key: str) -> int:
    # verl stores lora_alpha as an int (HFModelConfig, lora_train_meta.json).
    if float(alpha) != int(alpha):
        raise VerlConfigError(f"config key '{key}' = {alpha!r}: verl 0.9.1 needs an integer LoRA alpha")
    return int(alpha)


def job_resources(verl: dict[str, Any], runtime: int) -> dict[str, Any]:
    """Snakemake resources of a verl GPU job. ``gpu`` is the job's total (the SLURM executor's
    ``--gpus``), ``nodes`` its node count; on several nodes the rule's shell runs on the first
    node without the executor's srun wrapper (``mpi``), and places its own tasks (srun, Ray)."""
    nodes = int(verl["nnodes"])
    res: dict[str, Any] = {"gpu": nodes * int(verl["gpus_per_node"]), "nodes": nodes, "mem_mb": verl["mem_mb"],
                           "runtime": runtime}
    if nodes > 1:
        res.update(mpi="srun", tasks=nodes, tasks_per_gpu=0)
    return res


def gpus_per_node(resources: Any) -> int:
    """GPUs per node of a job, from its resources (``gpu`` total over ``nodes``)."""
    if resources.gpu % resources.nodes:
        raise VerlConfigError(f"resources gpu={resources.gpu} do not divide over nodes={resources.nodes}")
    return resources.gpu // resources.nodes


def check_world(nnodes: int, gpus_per_node: int) -> int:
    if nnodes < 1 or gpus_per_node < 1:
        raise VerlConfigError(f"verl needs at least one GPU: nnodes={nnodes}, gpus_per_node={gpus_per_node}")
    return nnodes * gpus_per_node


# ------------------------------------------------------------------ SFT
def sft_overrides(*, base: str, train: str, val: str, run_dir: str, run_name: str, sft: dict[str, Any],
                  seed: int, nnodes: int, gpus_per_node: int) -> list[str]:
    """Hydra overrides of ``verl.trainer.sft_trainer`` (config ``sft_trainer_engine``).

    The data go through our dataset classes (``sft2rl.verl_sft_data``), which tokenise each
    conversation as the local backend does: every assistant turn trained, or with
    ``sft.loss_turns: last`` (prompt/response rows: games, medical) the final one only.
    """
    world = check_world(nnodes, gpus_per_node)
    if sft["lr_scheduler"] not in ("cosine", "constant"):
        raise VerlConfigError(f"config key 'sft.lr_scheduler' = {sft['lr_scheduler']!r}: verl 0.9.1 supports "
                              "'cosine' and 'constant' only")
    if sft["lora"]["dropout"]:
        raise VerlConfigError(f"config key 'sft.lora.dropout' = {sft['lora']['dropout']!r}: verl 0.9.1 has no "
                              "LoRA dropout; set it to 0.0")
    if sft["train_batch"] % world or (sft["train_batch"] // world) % sft["micro_batch"]:
        raise VerlConfigError(f"config key 'sft.train_batch' = {sft['train_batch']} must be a multiple of "
                              f"'sft.micro_batch' x GPUs = {sft['micro_batch']} x {world} (a task's sft: "
                              f"section sets its own)")
    lora = sft["lora"]
    loss_turns = sft.get("loss_turns", "all")
    if loss_turns not in ("all", "last"):
        raise VerlConfigError(f"sft loss_turns = {loss_turns!r}: expected all or last")
    dataset = [_kv("data.custom_cls.path", "pkg://sft2rl.verl_sft_data"),
               _kv("data.custom_cls.name", "LastTurnSFTDataset" if loss_turns == "last" else "ConversationSFTDataset")]
    return [
        _kv("data.train_files", train),
        _kv("data.val_files", val),
        _kv("data.messages_key", "messages"),
        _kv("data.train_batch_size", sft["train_batch"]),
        _kv("data.micro_batch_size_per_gpu", sft["micro_batch"]),
        _kv("data.use_dynamic_bsz", False),
        _kv("data.max_length", sft["max_length"]),
        _kv("data.truncation", "error"),  # a row over max_length stops the job (never cut), as the local backend
        _kv("model.path", base),
        *([_kv("model.lora_rank", lora["r"]),
           _kv("model.lora_alpha", _alpha(lora["alpha"], "sft.lora.alpha")),
           _kv("model.target_modules", _target_modules(lora["target_modules"]))]
          if sft.get("train_mode", "lora") == "lora" else [_kv("model.lora_rank", 0)]),
        _kv("model.enable_gradient_checkpointing", sft["gradient_checkpointing"]),
        _kv("optim.lr", sft["lr"]),
        _kv("optim.lr_scheduler_type", sft["lr_scheduler"]),
        _kv("optim.lr_warmup_steps_ratio", sft["warmup_ratio"]),
        _kv("optim.weight_decay", sft["weight_decay"]),
        _kv("optim.clip_grad", sft["grad_clip"]),
        _kv("trainer.default_local_dir", f"{run_dir}/checkpoints"),
        _kv("trainer.project_name", PROJECT),
        _kv("trainer.experiment_name", run_name),
        _kv("trainer.total_epochs", sft["epochs"]),
        _kv("trainer.save_freq", "after_each_epoch"),
        _kv("trainer.test_freq", "after_each_epoch"),
        _kv("trainer.max_ckpt_to_keep", None),
        _kv("trainer.resume_mode", "auto"),
        _kv("trainer.seed", seed),
        _kv("trainer.logger", ["console", "tensorboard"]),
        _kv("trainer.nnodes", nnodes),
        _kv("trainer.n_gpus_per_node", gpus_per_node),
        *dataset,
    ]


def _model_path(path: str, workdir: str) -> str:
    """A model built by the workflow (``results/...``) or an existing local directory becomes absolute;
    anything else (a hub id, an absolute path) is passed on as it is."""
    if path.startswith("/") or "://" in path:
        return path
    if Path(path).parts[:1] == ("results",) or Path(path).exists():
        return f"{workdir}/{path}"
    return path


def _env(assignments: dict[str, str]) -> str:
    return "export " + " ".join(f"{k}={quote(v)}" for k, v in assignments.items())


def _pythonpath(code_root: str) -> str:
    return f"{code_root}/src" + "${PYTHONPATH:+:$PYTHONPATH}"


def sft_command(*, sft_run: str, base: str, train: str, val: str, sft: dict[str, Any], seed: int,
                nnodes: int, gpus_per_node: int, code_root: str, workdir: str = "$PWD",
                rdzv_port: int = 29500, run_dir: str | None = None) -> str:
    """Shell lines of the ``sft`` rule: torchrun verl's SFT trainer, then write metrics.json.
    ``run_dir``: the run's directory (default ``results/sft/<sft_run>``; a task's own, e.g. results/games/sft/...)."""
    run_dir = run_dir or f"results/sft/{sft_run}"
    absolute = lambda p: p if p.startswith("/") or "://" in p else f"{workdir}/{p}"  # noqa: E731
    overrides = sft_overrides(base=_model_path(base, workdir),
                              train=absolute(train), val=absolute(val), run_dir=absolute(run_dir),
                              run_name=sft_run, sft=sft, seed=seed, nnodes=nnodes, gpus_per_node=gpus_per_node)
    env = _env({"PYTHONPATH": _pythonpath(code_root), "TENSORBOARD_DIR": absolute(f"{run_dir}/tensorboard")})
    if nnodes == 1:
        launcher = ["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", str(gpus_per_node)]
        head = ""
    else:  # one torchrun per node, rendezvous on the first node of the SLURM allocation
        head = 'SFT2RL_HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        launcher = ["srun", f"--nodes={nnodes}", "--ntasks-per-node=1", f"--gpus-per-node={gpus_per_node}",
                    "torchrun", "--nnodes", str(nnodes), "--nproc_per_node", str(gpus_per_node),
                    "--rdzv_id", "$SLURM_JOB_ID", "--rdzv_backend", "c10d",
                    "--rdzv_endpoint", f"$SFT2RL_HEAD:{rdzv_port}"]
    train_cmd = _lines([*launcher, "-m", "verl.trainer.sft_trainer"], overrides)
    metrics = _cmd(["python", f"{code_root}/workflow/scripts/verl_export.py", "sft-metrics", "--run-dir", run_dir])
    return f"{env}\n{head}{train_cmd}\n{metrics}"


def merge_command(*, sft_run: str, which: str, base: str, out_dir: str, code_root: str,
                  run_dir: str | None = None, train_mode: str = "lora") -> str:
    """Shell lines of the ``merge`` rule: pick the step, verl's merger, then our verified LoRA fold-in."""
    run_dir = run_dir or f"results/sft/{sft_run}"
    script = f"{code_root}/workflow/scripts/verl_export.py"
    target = f"{run_dir}/{VERL_HF}"
    return "\n".join([
        _env({"PYTHONPATH": _pythonpath(code_root)}),
        "SFT2RL_STEP=$(" + _cmd(["python", script, "choose-step", "--run-dir", run_dir, "--which", str(which)]) + ")",
        _cmd(["rm", "-rf", target]),
        _cmd(["python", "-m", "verl.model_merger", "merge", "--backend", "fsdp",
              "--local_dir", "$SFT2RL_STEP", "--target_dir", target]),
        _cmd(["python", script, "fold", "--merger-dir", target, "--base", base, "--out", out_dir,
              "--which", str(which), "--step-dir", "$SFT2RL_STEP", "--train-mode", train_mode]),
        _cmd(["rm", "-rf", target]),  # the merger's full bf16 copy, no longer needed
    ])


# ------------------------------------------------------------------ GRPO
def ppo_overrides(*, init: str, train: str, run_dir: str, run_name: str, rl: dict[str, Any],
                  reward: dict[str, Any], verl: dict[str, Any], nnodes: int, gpus_per_node: int,
                  code_root: str) -> list[str]:
    """Hydra overrides of ``verl.trainer.main_ppo`` (config ``ppo_trainer``): GRPO, group-aware reward."""
    algorithm = [
        # algorithm: GRPO advantages over the group-aware reward (sft2rl.tasks.qa.verl_hooks)
        _kv("algorithm.adv_estimator", ADV_ESTIMATOR),
        _kv("algorithm.norm_adv_by_std_in_grpo", rl["norm_adv_by_std"]),
        _kv("algorithm.use_kl_in_reward", False),
        *[_kv(f"+algorithm.group_reward.{k}", reward[k]) for k in GROUP_REWARD_KEYS],
        _kv("+algorithm.group_reward.log_path", f"{run_dir}/{GROUP_REWARD_LOG}"),
        _kv("+algorithm.group_reward.checkpoint_dir", f"{run_dir}/checkpoints"),
    ]
    reward_fn = [
        # the per-rollout half of the reward (verl 0.9.1 key location)
        _kv("reward.custom_reward_function.path", REWARD_FN_PATH),
        _kv("reward.custom_reward_function.name", REWARD_FN_NAME),
        *[_kv(f"+reward.custom_reward_function.reward_kwargs.{k}", reward[k]) for k in ROLLOUT_REWARD_KEYS],
    ]
    hook = [_kv("+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES", HOOK_MODULE)]
    return _ppo(algorithm=algorithm, reward_fn=reward_fn, hook=hook, init=init, train=train, run_dir=run_dir,
                run_name=run_name, rl=rl, verl=verl, nnodes=nnodes, gpus_per_node=gpus_per_node, code_root=code_root)


def agent_ppo_overrides(*, init: str, train: str, run_dir: str, run_name: str, rl: dict[str, Any],
                        agent_loops: str, agent_name: str, response_length: str, verl: dict[str, Any], nnodes: int,
                        gpus_per_node: int, code_root: str) -> list[str]:
    """Overrides of ``main_ppo`` for a multi-turn task played by an agent loop (the games, the
    medical consultation):
    verl's own ``grpo`` estimator over the episodes of a prompt, the reward each episode's loop
    returns (``reward_score``, so no reward function is called), the loops listed in
    ``agent_loops`` and chosen by the rows' ``agent_name`` (``agent_name`` also the default),
    the raw chat handed to the loop, and ``response_length`` tokens for a whole episode's
    replies and observations (a value or a ``$SFT2RL_*`` variable set by the job)."""
    algorithm = [
        _kv("algorithm.adv_estimator", "grpo"),
        _kv("algorithm.norm_adv_by_std_in_grpo", rl["norm_adv_by_std"]),
        _kv("algorithm.use_kl_in_reward", False),
    ]
    r = "actor_rollout_ref.rollout"
    agent = [
        _kv(f"{r}.mode", "async"),
        _kv(f"{r}.agent.agent_loop_config_path", agent_loops),
        _kv(f"{r}.agent.default_agent_loop", agent_name),
        _kv("data.return_raw_chat", True),
    ]
    return _ppo(algorithm=algorithm, reward_fn=agent, hook=[], init=init, train=train, run_dir=run_dir,
                run_name=run_name, rl=dict(rl, max_response_length=response_length), verl=verl, nnodes=nnodes,
                gpus_per_node=gpus_per_node, code_root=code_root)


def _ppo(*, algorithm: list[str], reward_fn: list[str], hook: list[str], init: str, train: str, run_dir: str,
         run_name: str, rl: dict[str, Any], verl: dict[str, Any], nnodes: int, gpus_per_node: int,
         code_root: str) -> list[str]:
    """The overrides every GRPO run of ``main_ppo`` shares: data, policy, rollout, trainer; the
    run's ``algorithm``, reward (``reward_fn``) and hook-module (``hook``) overrides in place."""
    world = check_world(nnodes, gpus_per_node)
    if (rl["train_batch"] * rl["n"]) % world:
        raise VerlConfigError(f"config keys 'rl.train_batch' x 'rl.n' = {rl['train_batch'] * rl['n']} must be a "
                              f"multiple of the number of GPUs ({world})")
    if verl["tensor_model_parallel_size"] > world:
        raise VerlConfigError(f"config key 'verl.tensor_model_parallel_size' = {verl['tensor_model_parallel_size']} "
                              f"is larger than the number of GPUs ({world})")
    a, r = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    out = [
        *algorithm,
        # data: our RL parquet (verl's RL schema)
        _kv("data.train_files", train),
        # the test split is the evaluation's alone: verl builds a validation loader from
        # val_files, so it gets the train file, and validation never runs (no test_freq,
        # no val_before_train)
        _kv("data.val_files", train),
        _kv("data.prompt_key", "prompt"),
        _kv("data.train_batch_size", rl["train_batch"]),
        _kv("data.max_prompt_length", rl["max_prompt_length"]),
        _kv("data.max_response_length", rl["max_response_length"]),
        _kv("data.filter_overlong_prompts", True),
        _kv("data.truncation", "error"),
        _kv("data.seed", rl["seed"]),
        # policy
        _kv("actor_rollout_ref.model.path", init),
        _kv("actor_rollout_ref.model.use_remove_padding", True),
        _kv("actor_rollout_ref.model.enable_gradient_checkpointing", True),
        _kv(f"{a}.optim.lr", rl["lr"]),
        _kv(f"{a}.optim.weight_decay", 0.0),
        _kv(f"{a}.optim.clip_grad", rl["grad_clip"]),
        _kv(f"{a}.grad_clip", rl["grad_clip"]),
        _kv(f"{a}.ppo_mini_batch_size", rl["ppo_mini_batch"]),
        _kv(f"{a}.ppo_epochs", rl["ppo_epochs"]),
        _kv(f"{a}.use_dynamic_bsz", True),
        _kv(f"{a}.ppo_max_token_len_per_gpu", verl["max_token_len_per_gpu"]),
        _kv(f"{a}.clip_ratio", rl["clip_ratio"]),
        _kv(f"{a}.clip_ratio_low", rl.get("clip_ratio_low") or rl["clip_ratio"]),
        _kv(f"{a}.clip_ratio_high", rl.get("clip_ratio_high") or rl["clip_ratio"]),
        _kv(f"{a}.loss_agg_mode", "token-mean"),
        _kv(f"{a}.entropy_coeff", rl["entropy_coef"]),
        _kv(f"{a}.use_kl_loss", rl["use_kl_loss"]),
        _kv(f"{a}.kl_loss_coef", rl["kl_coef"]),
        _kv(f"{a}.kl_loss_type", rl["kl_type"]),
        _kv(f"{a}.data_loader_seed", rl["seed"]),
        # rollout (vLLM/SGLang on GPU: verl 0.9 has no CPU or HF rollout)
        _kv(f"{r}.name", verl["rollout_name"]),
        _kv(f"{r}.n", rl["n"]),
        _kv(f"{r}.temperature", rl["temperature"]),
        _kv(f"{r}.top_p", rl["top_p"]),
        _kv(f"{r}.seed", rl["seed"]),
        _kv(f"{r}.gpu_memory_utilization", verl["gpu_memory_utilization"]),
        _kv(f"{r}.tensor_model_parallel_size", verl["tensor_model_parallel_size"]),
        # stop ids: vLLM stops at its tokenizer's EOS and at every eos_token_id of the generation
        # config it loads; point it at ours, which lists every end-of-turn id (see ROLLOUT_GENERATION_CONFIG)
        *([_kv(f"+{r}.engine_kwargs.vllm.generation_config", f"{run_dir}/{ROLLOUT_GENERATION_CONFIG}")]
          if verl["rollout_name"] == "vllm" else []),
        *reward_fn,
        _kv("critic.enable", False),
        # trainer
        _kv("trainer.project_name", PROJECT),
        _kv("trainer.experiment_name", run_name),
        _kv("trainer.default_local_dir", f"{run_dir}/checkpoints"),
        _kv("trainer.logger", ["console", "tensorboard"]),
        _kv("trainer.nnodes", nnodes),
        _kv("trainer.n_gpus_per_node", gpus_per_node),
        # verl's loop ends at trainer.total_training_steps *or* at the end of the last epoch,
        # whichever comes first: with total_steps set, allow as many epochs as steps (every
        # epoch has at least one step), so the run takes exactly total_steps steps
        _kv("trainer.total_epochs", rl["total_steps"] if rl["total_steps"] else rl["epochs"]),
        _kv("trainer.save_freq", rl["save_freq"]),
        _kv("trainer.test_freq", -1),
        _kv("trainer.val_before_train", False),
        _kv("trainer.resume_mode", "auto"),
        # every Ray worker imports the hook module (if any) and finds our package
        *hook,
        _kv("+ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH", f"{code_root}/src"),
        _kv("+ray_kwargs.ray_init.runtime_env.env_vars.TENSORBOARD_DIR", f"{run_dir}/tensorboard"),
    ]
    if rl["total_steps"]:
        out.append(_kv("trainer.total_training_steps", rl["total_steps"]))
    if rl["train_mode"] == "lora":
        lora = rl["lora"]
        if lora["dropout"]:
            raise VerlConfigError(f"config key 'rl.lora.dropout' = {lora['dropout']!r}: verl 0.9.1 has no LoRA "
                                  "dropout; set it to 0.0")
        out += [
            _kv("actor_rollout_ref.model.lora_rank", lora["r"]),
            _kv("actor_rollout_ref.model.lora_alpha", _alpha(lora["alpha"], "rl.lora.alpha")),
            _kv("actor_rollout_ref.model.target_modules", _target_modules(lora["target_modules"])),
            _kv(f"{r}.load_format", "safetensors"),
        ]
    return out


def verl_loop_steps(n_rows: int, overrides: list[str]) -> int:
    """Steps verl 0.9.1's V1 trainer (``verl.trainer.ppo.v1.trainer_base.PPOTrainer.fit``, what
    ``main_ppo`` runs with ``trainer.use_v1``, its default) runs on ``n_rows`` kept prompts
    under ``overrides``.

    An epoch holds ``n_rows // data.train_batch_size`` steps (its train loader drops the last
    partial batch); ``total_training_steps`` is ``trainer.total_training_steps`` when set, else
    that times ``trainer.total_epochs``; the loop stops at that step or after the last epoch,
    whichever comes first (``while current_epoch < total_epochs and global_steps <=
    total_training_steps: ... if is_last_step: return``).
    """
    values = {}
    for o in overrides:
        key, _, value = o.partition("=")
        values[key.lstrip("+")] = value
    per_epoch = n_rows // int(values["data.train_batch_size"])
    epochs = int(values["trainer.total_epochs"])
    total = per_epoch * epochs
    if values.get("trainer.total_training_steps", "null") != "null":
        total = int(values["trainer.total_training_steps"])
    return min(total, per_epoch * epochs)


def _refuse_local_only(rl: dict[str, Any], section: str) -> None:
    """The local trainer's options verl 0.9's trainer lacks (``section``: the config section of
    ``rl``, for the message): refused, never silently dropped."""
    if rl.get("keep_group_fraction", 1.0) < 1.0:
        raise VerlConfigError(f"config key '{section}.keep_group_fraction' < 1 (StarPO-S's variance filter) runs on "
                              "the local backend only; verl 0.9's trainer has no such filter")
    if rl.get("shuffle_advantages", False):
        raise VerlConfigError(f"config key '{section}.shuffle_advantages' (the no-signal control) runs on the local "
                              "backend only; verl 0.9's GRPO advantage has no such option")
    if rl.get("step_adv_weight", 0.0) > 0:
        raise VerlConfigError(f"config key '{section}.step_adv_weight' = {rl['step_adv_weight']} (GiGPO's step "
                              "advantages) runs on the local backend only; verl 0.9's GRPO advantage is per "
                              f"trajectory: set {section}.step_adv_weight: 0 on verl (RAGEN's trajectory-level GRPO)")
    if rl.get("sft_coef", 0.0) > 0:
        raise VerlConfigError(f"config key '{section}.sft_coef' = {rl['sft_coef']} (PPO-ptx's SFT term) runs on the "
                              "local backend only; verl 0.9's actor loss has no SFT term: set it to 0 on verl")


def _ppo_launcher(nnodes: int, gpus_per_node: int, code_root: str) -> list[str]:
    """``python`` on one node; on several, through ray_on_slurm.sh (Ray head and workers)."""
    return ["python"] if nnodes == 1 else ["bash", f"{code_root}/workflow/scripts/ray_on_slurm.sh",
                                           str(gpus_per_node), "--", "python"]


def _rl_export_lines(script: str, run_dir: str, init: str, train_mode: str, final: str, summary: str,
                     extra: list[str] = ()) -> list[str]:
    """After ``main_ppo``: the last checkpoint through verl's merger, then ``rl-export`` (verified
    HF directory and summary.json; ``extra``: more rl-export arguments)."""
    target = f"{run_dir}/{VERL_HF}"
    return [
        "SFT2RL_STEP=$(" + _cmd(["python", script, "latest-step", "--checkpoints", f"{run_dir}/checkpoints"]) + ")",
        _cmd(["rm", "-rf", target]),
        _cmd(["python", "-m", "verl.model_merger", "merge", "--backend", "fsdp",
              "--local_dir", "$SFT2RL_STEP/actor", "--target_dir", target]),
        _cmd(["python", script, "rl-export", "--run-dir", run_dir, "--merger-dir", target, "--init", init,
              "--step-dir", "$SFT2RL_STEP", "--train-mode", train_mode, "--final", final, "--summary", summary,
              *extra]),
        _cmd(["rm", "-rf", target]),
    ]


def grpo_command(*, rl_run: str, init: str, train: str, rl: dict[str, Any], reward: dict[str, Any],
                 verl: dict[str, Any], nnodes: int, gpus_per_node: int, code_root: str, final: str,
                 summary: str, workdir: str = "$PWD") -> str:
    """Shell lines of the ``grpo`` rule: main_ppo (through ray_on_slurm.sh on several nodes), then export."""
    _refuse_local_only(rl, "rl")
    run_dir = f"results/rl/{rl_run}"
    absolute = lambda p: p if p.startswith("/") or "://" in p else f"{workdir}/{p}"  # noqa: E731
    init_path = _model_path(init, workdir)
    overrides = ppo_overrides(init=init_path, train=absolute(train), run_dir=absolute(run_dir),
                              run_name=rl_run, rl=rl, reward=reward, verl=verl, nnodes=nnodes,
                              gpus_per_node=gpus_per_node, code_root=code_root)
    env = _env({"PYTHONPATH": _pythonpath(code_root), "VERL_USE_EXTERNAL_MODULES": HOOK_MODULE,
                "TENSORBOARD_DIR": absolute(f"{run_dir}/tensorboard")})
    launcher = _ppo_launcher(nnodes, gpus_per_node, code_root)
    train_cmd = _lines([*launcher, "-m", "verl.trainer.main_ppo"], overrides)
    script = f"{code_root}/workflow/scripts/verl_export.py"
    prepare = _cmd(["python", script, "prepare-rl", "--run-dir", run_dir, "--init", init, "--train", train,
                    "--config-hash", config_hash(overrides), "--max-prompt-length", str(rl["max_prompt_length"]),
                    "--train-batch", str(rl["train_batch"]), "--epochs", str(rl["epochs"])]
                   + (["--total-steps", str(rl["total_steps"])] if rl["total_steps"] else []))
    export = _rl_export_lines(script, run_dir, init, rl["train_mode"], final, summary)
    return "\n".join([env, prepare, train_cmd, *export])


def game_rl_command(*, rl_run: str, env: str, init: str, levels: str, rl: dict[str, Any], games: dict[str, Any],
                    verl: dict[str, Any], nnodes: int, gpus_per_node: int, code_root: str, run_dir: str, final: str,
                    summary: str, workdir: str = "$PWD") -> str:
    """Shell lines of the games' ``game_rl`` rule on verl: ``prepare-game-rl`` (restart guard,
    the train levels as verl rows, the agent-loop file, the episode's token budget), ``main_ppo``
    with :class:`sft2rl.tasks.games.verl_agent.GameAgentLoop` playing every episode, then the
    export (the summary's history from the loop's episode log)."""
    import json

    from .tasks.games import VERL_AGENT_NAME

    if games.get("history") is not True:
        raise VerlConfigError(f"config key 'games.history' = {games.get('history')!r}: on backend verl a game episode "
                              "is one sequence (verl's agent loop), so the prompt of each turn is the whole history; "
                              "set games.history: true (SFT and play then use it too)")
    _refuse_local_only(rl, "games.rl")
    return _agent_rl_command(
        prepare=["prepare-game-rl", "--levels", levels, "--env", env,
                 "--games-json", json.dumps(games, sort_keys=True)],
        episode_log=[], agent_name=VERL_AGENT_NAME, rl_run=rl_run, init=init, rl=rl, verl=verl, nnodes=nnodes,
        gpus_per_node=gpus_per_node, code_root=code_root, run_dir=run_dir, final=final, summary=summary,
        workdir=workdir)


def med_rl_command(*, rl_run: str, mode: str, init: str, cases: str, rl: dict[str, Any], med: dict[str, Any],
                   verl: dict[str, Any], nnodes: int, gpus_per_node: int, code_root: str, run_dir: str, final: str,
                   summary: str, workdir: str = "$PWD") -> str:
    """Shell lines of the medical ``med_rl`` rule on verl: ``prepare-med-rl`` (restart guard, the
    train cases as verl rows with their turn budgets, fixed or drawn per case (``mode``), the
    agent-loop file, the consultation's token budget), ``main_ppo`` with
    :class:`sft2rl.tasks.med.verl_agent.MedAgentLoop` playing every consultation against the
    patient of ``med.patient``, then the export (the summary's history from the loop's episode
    log). ``med``: ``eval``, ``patient`` and ``rl`` of the ``med:`` section; ``rl``: the trainer
    settings (:func:`sft2rl.tasks.med.rl_config`)."""
    import json

    from .tasks.med import RL_MODES, VERL_AGENT_NAME

    if mode not in RL_MODES:
        raise VerlConfigError(f"medical RL turn budget {mode!r}: expected one of {list(RL_MODES)}")
    _refuse_local_only(rl, "med.rl")
    return _agent_rl_command(
        prepare=["prepare-med-rl", "--cases", cases, "--mode", mode, "--med-json", json.dumps(med, sort_keys=True),
                 "--max-prompt-length", str(rl["max_prompt_length"])],
        episode_log=["--episode-task", "med"], agent_name=VERL_AGENT_NAME, rl_run=rl_run, init=init, rl=rl,
        verl=verl, nnodes=nnodes, gpus_per_node=gpus_per_node, code_root=code_root, run_dir=run_dir, final=final,
        summary=summary, workdir=workdir)


def _agent_rl_command(*, prepare: list[str], episode_log: list[str], agent_name: str, rl_run: str, init: str,
                      rl: dict[str, Any], verl: dict[str, Any], nnodes: int, gpus_per_node: int, code_root: str,
                      run_dir: str, final: str, summary: str, workdir: str) -> str:
    """The shell lines of a task played by an agent loop: ``prepare`` (the task's prepare
    subcommand and its own arguments; it prints the episode's token budget, kept in
    ``$SFT2RL_RESPONSE_LENGTH``), ``main_ppo`` (:func:`agent_ppo_overrides` with the run's
    ``train.parquet`` and ``agent_loops.yaml``), then the export with the history from
    ``episodes.jsonl`` (``episode_log``: more rl-export arguments)."""
    absolute = lambda p: p if p.startswith("/") or "://" in p else f"{workdir}/{p}"  # noqa: E731
    overrides = agent_ppo_overrides(
        init=_model_path(init, workdir), train=absolute(f"{run_dir}/train.parquet"), run_dir=absolute(run_dir),
        run_name=rl_run, rl=rl, agent_loops=absolute(f"{run_dir}/agent_loops.yaml"), agent_name=agent_name,
        response_length="$SFT2RL_RESPONSE_LENGTH", verl=verl, nnodes=nnodes, gpus_per_node=gpus_per_node,
        code_root=code_root)
    env_line = _env({"PYTHONPATH": _pythonpath(code_root), "TENSORBOARD_DIR": absolute(f"{run_dir}/tensorboard")})
    launcher = _ppo_launcher(nnodes, gpus_per_node, code_root)
    script = f"{code_root}/workflow/scripts/verl_export.py"
    prepare_line = "SFT2RL_RESPONSE_LENGTH=$(" + _cmd(
        ["python", script, prepare[0], "--run-dir", run_dir, "--init", init, *prepare[1:], "--seed", str(rl["seed"]),
         "--config-hash", config_hash(overrides), "--train-batch", str(rl["train_batch"]), "--epochs", str(rl["epochs"])]
        + (["--total-steps", str(rl["total_steps"])] if rl["total_steps"] else [])) + ")"
    export = _rl_export_lines(script, run_dir, init, rl["train_mode"], final, summary,
                              ["--episode-log", f"{run_dir}/episodes.jsonl", *episode_log])
    train_cmd = _lines([*launcher, "-m", "verl.trainer.main_ppo"], overrides)
    return "\n".join([env_line, prepare_line, train_cmd, *export])


def config_hash(overrides: list[str]) -> str:
    """Digest of a GRPO run's overrides (paths unexpanded, so it does not depend on the machine);
    one part of the run's content key (see sft2rl.verl_export.prepare_rl_run)."""
    return hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:16]


def has_legacy_keys(overrides: list[str]) -> list[str]:
    """Overrides that use a legacy reward key location (must be empty)."""
    bad = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.startswith(LEGACY_KEYS):
            bad.append(o)
    return bad
