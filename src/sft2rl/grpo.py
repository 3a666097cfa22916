"""GRPO, local backend (one process, CPU or one GPU): one trainer for every task.

A task (:mod:`sft2rl.rl_task`) supplies its items, its rollouts (one-turn answers or
multi-turn episodes, as rows with a loss mask on the policy's own tokens), the rewards of
each group and its metrics; the trainer knows no task. Each trajectory's score is
normalised within its group and every policy token of the trajectory shares it; with
``rl.step_adv_weight`` > 0 (GiGPO) a multi-turn task's tokens add their turn's step advantage
(:func:`sft2rl.rl_task.step_advantages`: the turn's return against the group's other turns
from the same state). ``rl.shuffle_advantages`` is the no-signal control: the same
advantages given to the batch's trajectories in a random order (:func:`shuffled_advantages`),
to tell what a run learns from its reward from what its updates do by themselves.

The math is verl's own: group advantages (``compute_grpo_outcome_advantage``), the clipped
policy loss (``compute_policy_loss_vanilla``, with clip-higher through ``clip_ratio_low`` /
``clip_ratio_high``), the KL estimator (``kl_penalty``) and the loss aggregation
(``agg_loss``) are imported from ``verl.trainer.ppo.core_algos``, which is pure torch and
runs on CPU, so this loop computes exactly what verl computes. What verl cannot serve on CPU
is written here: rollouts (verl 0.9 only rolls out with vLLM/SGLang on GPU; we use the lean
engine or HF ``generate``), group rewards and the training loop itself. StarPO-S's variance
filter (``keep_group_fraction``: train only on the groups with the largest reward spread)
is :func:`sft2rl.rl_task.group_filter`.

Restart safety: every ``save_freq`` steps a checkpoint (policy, optimizer, step) is
written atomically. Where a job starts is decided by :mod:`sft2rl.resume` from a content
key (init weights, train data bytes, the source of every package module this stage runs,
parameters, library versions): a killed run with the same key resumes from its latest
checkpoint; anything else starts from step 0 in a clean run directory. Data order and
sampling seeds are functions of (seed, step), so a resumed run reaches the same final
step on the same batches.

Precision: full fine-tuning keeps fp32 master weights; on a GPU with bf16 the forward
passes run under bf16 autocast (as verl's FSDP mixed precision does), so small updates
are never rounded away.
"""
from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import RunError
from .fingerprint import module_closure, run_key
from .io import atomic_dir, write_json
from .logutil import LOG
from .model import load_model, pick_device, set_seed, train_dtype
from .resume import planned_steps, prepare_run_dir

@dataclass
class ActorLossConfig:
    """The fields of verl's ActorConfig that ``compute_policy_loss_vanilla`` reads."""

    clip_ratio: float
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0
    global_batch_info: dict = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


#: Libraries whose version is part of a GRPO run's restart key.
LIBRARIES = ("torch", "transformers", "peft", "verl")


def precision(device: torch.device, train_mode: str, requested: str = "auto") -> tuple[torch.dtype, torch.dtype | None]:
    """(parameter dtype, autocast dtype) of the policy.

    Full fine-tuning: fp32 parameters (AdamW's master weights) always, bf16 autocast where
    the device has bf16 (``requested='auto'``) or when asked (``'bf16'``, also on CPU).
    LoRA: the frozen base may sit in bf16; peft keeps the adapter weights in fp32.
    """
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {requested!r}")
    bf16 = requested == "bf16" or (requested == "auto" and train_dtype(device) == torch.bfloat16)
    amp = torch.bfloat16 if bf16 else None
    if train_mode == "full":
        return torch.float32, amp
    return (amp or torch.float32), amp


def reference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the policy as the KL reference, in the policy's own dtypes and run
    under the same autocast, so that before any update it computes the policy's function
    exactly (KL 0 at step 1). Casting its parameters to bf16 under bf16 autocast, as this did
    until now, made it another function: the policy keeps fp32 weights (its embeddings,
    norms and residual stream stay fp32 under autocast), the bf16 copy rounds them (KL about
    1e-5 between identical weights on the tiny model); casting the whole module also rounded
    the rotary position frequencies (``inv_freq``), an angle error that grows with the
    position. The price is the reference in fp32 in full fine-tuning, 4 bytes per parameter
    beside the policy's 16 (fp32 weights, gradients and AdamW's two moments)."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def _autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def grpo_advantages(scores: torch.Tensor, response_mask: torch.Tensor, group_ids: np.ndarray,
                    norm_by_std: bool) -> torch.Tensor:
    """verl's GRPO outcome advantage per response token: each row's group-normalised score
    (:func:`trajectory_advantages`) on every token of its response mask."""
    return trajectory_advantages(scores, group_ids, norm_by_std)[:, None] * response_mask.float()


def response_logprobs(model, gen_prompt_ids, prompt_mask, response_ids, response_mask, temperature: float,
                      with_entropy: bool = False, entropy_grad: bool = True):
    """Per-token log-probs (and entropy) of the response under ``model``, logits / temperature.

    Only the response positions go through the LM head (``logits_to_keep``). With
    ``entropy_grad=False`` the entropy is a metric only: computed outside the graph, so the
    backward pass does not run through it (as verl does when the entropy coefficient is 0)."""
    ids = torch.cat([gen_prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # what generate() used with left padding
    r = response_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=r + 1).logits
    return _token_logprobs(logits[:, :-1].float() / temperature, response_ids, with_entropy, entropy_grad)


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool, entropy_grad: bool):
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    logp = logprobs_from_logits(logits, ids)
    ent = None
    if with_entropy:
        with contextlib.nullcontext() if entropy_grad else torch.no_grad():
            ent = entropy_from_logits(logits if entropy_grad else logits.detach())
    return logp, ent


#: Rows per forward pass of the update and the reference (sorted by response length first).
MICRO_ROWS = 8


def length_chunks(prompt_mask: torch.Tensor, response_mask: torch.Tensor, rows: torch.Tensor,
                  size: int | None = None):
    """``rows`` sorted by response length, in chunks of ``size``: ``(row indices, first prompt
    column that is not padding in every row, response columns)``. Each chunk is cut to its own
    longest prompt and response, so short responses do not pay for the longest one's padding
    (verl's dynamic micro-batches do the same)."""
    size = size or MICRO_ROWS
    lengths = response_mask[rows].sum(dim=1)
    order = rows[torch.sort(lengths, stable=True).indices]
    for i in range(0, len(order), size):
        idx = order[i:i + size]
        p0 = int(prompt_mask[idx].any(dim=0).long().argmax())
        yield idx, p0, int(response_mask[idx].sum(dim=1).max())


class _Scorer:
    """Response log-probs of chunks of the rows ``rows`` of one rollout batch under ``model``.

    Rows with the same ``prompt_index`` share one prompt (the n answers of a one-turn group,
    or every turn of a batch of episodes after the common instruction): each distinct prompt
    of ``rows`` is computed once (:class:`sft2rl.shared_prefix.SharedPrefix`) where the model
    has the supported shape and some prompt is shared, else the plain forward pass per chunk.
    With ``grad``, call :meth:`finish` after the chunks' backward passes."""

    def __init__(self, model, ro, rows: torch.Tensor, grad: bool):
        from .rollout import supports
        from .shared_prefix import SharedPrefix

        self.model, self.ro = model, ro
        self.shared = None
        index = ro.prompt_index
        if index is None or not supports(model):
            return
        prompts = index[rows]
        unique, first = torch.unique(prompts, sorted=True, return_inverse=True)
        if len(unique) == len(rows):  # nothing shared
            return
        rep = torch.zeros(len(unique), dtype=torch.long, device=rows.device)
        rep[first] = rows  # a row of each distinct prompt (rows of one prompt hold the same ids)
        self.slot = torch.full((int(index.max()) + 1,), -1, dtype=torch.long, device=rows.device)
        self.slot[unique] = torch.arange(len(unique), device=rows.device)
        self.shared = SharedPrefix(model, ro.prompt_ids[rep], ro.prompt_mask[rep], grad)

    def __call__(self, idx: torch.Tensor, p0: int, r: int, response_mask: torch.Tensor, temperature: float,
                 with_entropy: bool = False, entropy_grad: bool = True):
        ro = self.ro
        if self.shared is None:
            return response_logprobs(self.model, ro.prompt_ids[idx, p0:], ro.prompt_mask[idx, p0:],
                                     ro.response_ids[idx, :r], response_mask[idx, :r], temperature,
                                     with_entropy=with_entropy, entropy_grad=entropy_grad)
        logits = self.shared.logits(self.slot[ro.prompt_index[idx]], ro.response_ids[idx, :r]) / temperature
        return _token_logprobs(logits, ro.response_ids[idx, :r], with_entropy, entropy_grad)

    def finish(self) -> None:
        if self.shared is not None:
            self.shared.backward()


def _chunked_logprobs(model, ro, response_mask: torch.Tensor, temperature: float):
    """Response log-probs of every row of a rollout batch (zeros past each response), chunk by chunk."""
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
    rows = torch.arange(response_mask.shape[0], device=response_mask.device)
    score = _Scorer(model, ro, rows, grad=False)
    for idx, p0, r in length_chunks(ro.prompt_mask, response_mask, rows):
        out[idx, :r] = score(idx, p0, r, response_mask, temperature)[0].float()
    return out


def needs_reference(cfg: dict[str, Any], diagnostic_step: bool) -> bool:
    """Whether a step runs the reference model's forward pass: always when the KL term is in
    the loss (``rl.use_kl_loss``); without it only on ``diagnostic_step`` (a validation step,
    and the last), where the KL to the reference is logged to watch the policy's drift. verl
    likewise runs no reference without a KL term; the pass is a quarter of an update."""
    return bool(cfg["use_kl_loss"]) or diagnostic_step


def on_policy(cfg: dict[str, Any]) -> bool:
    """One PPO epoch over one mini-batch: the update's policy is the rollout's, so the old
    log-probs are the training pass's own, detached (as verl's actor does); no extra forward."""
    return cfg["ppo_epochs"] == 1 and cfg["ppo_mini_batch"] >= cfg["train_batch"]


def _batches(n_rows: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i:i + batch] for i in range(0, n_rows - batch + 1, batch)]


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The highest complete ``step_<k>`` (an atomic write: a partial one is never named so)."""
    steps = [d for d in ckpt_root.glob("step_*") if (d / "trainer_state.json").is_file()]
    return max(steps, key=lambda p: int(p.name.split("_")[1]), default=None)


class SFTAnchor:
    """PPO-ptx's SFT term: the rows of an SFT train file (``messages``, the loss on the assistant
    turns ``loss_turns`` names, as :func:`sft2rl.sft.train_sft` trains them), ``batch`` of them
    per update in a seeded order that is a function of (seed, update), so a resumed run takes
    the same rows. A row longer than the model's window stops the run (never cut silently)."""

    def __init__(self, path: str, tokenizer, model, batch: int, seed: int, loss_turns: str = "all"):
        from .io import read_parquet_rows
        from .sft import check_lengths, encode_conversation

        limit = int(getattr(model.config, "max_position_embeddings", 0) or 10**9)
        rows = read_parquet_rows(path)
        if not rows:
            raise RunError(f"{path}: no rows for the SFT term (rl.sft_coef)")
        enc = [encode_conversation(tokenizer, r["messages"], limit, loss_turns) for r in rows]
        self.rows, _ = check_lengths(path, enc, limit, "the model's window", "error")
        self.batch, self.seed, self.pad = batch, seed, tokenizer.pad_token_id

    def rows_for(self, update: int) -> list[dict]:
        """The rows of update ``update`` (0, 1, ...): consecutive slices of a seeded order of the
        file, a new order for each pass over it."""
        n = len(self.rows)
        orders: dict[int, torch.Tensor] = {}  # one permutation per pass the update touches
        out = []
        for k in range(update * self.batch, (update + 1) * self.batch):
            rnd, pos = divmod(k, n)
            if rnd not in orders:
                orders[rnd] = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + rnd))
            out.append(self.rows[int(orders[rnd][pos])])
        return out

    def loss(self, model, update: int, device) -> torch.Tensor:
        """Token-mean NLL of the trained turns of update ``update``'s rows."""
        from .sft import collate, masked_lm_loss

        batch = {k: v.to(device) for k, v in collate(self.rows_for(update), self.pad).items()}
        total, n_tokens = masked_lm_loss(model, batch)
        return total / max(1, n_tokens)


def rl_run_key(init_model: str, task, cfg: dict[str, Any], sft_file: str | None = None, *,
               precision_used: list[str] | None = None, sft_loss_turns: str = "all") -> dict[str, Any]:
    """Content key of a local GRPO run (see :mod:`sft2rl.resume`): the init weights, the task's
    data, parameters and modules, the trainer's modules, ``cfg``, the precision it trains in
    (weights dtype and autocast: they follow the device, so a run begun on a GPU does not
    resume on a CPU), the library versions and, with the SFT term on, the SFT file's content
    and the turns its loss is on."""
    k = task.key()
    data = dict(k.get("data", {}))
    params = {"rl": cfg, **k.get("params", {}), "precision_used": precision_used}
    if sft_file and cfg.get("sft_coef", 0):
        data["sft_anchor"] = sft_file
        params["sft_loss_turns"] = sft_loss_turns
    return run_key(models={"init": init_model}, data=data,
                   modules=module_closure(["grpo", *k.get("modules", [])]), params=params, libraries=LIBRARIES)


def trajectory_advantages(scores: torch.Tensor, traj_group: np.ndarray, norm_by_std: bool) -> torch.Tensor:
    """verl's GRPO outcome advantage of each trajectory (its score normalised within its group)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    ones = torch.ones((len(scores), 1), dtype=torch.float32, device=scores.device)
    adv, _ = compute_grpo_outcome_advantage(scores.float()[:, None], ones, traj_group,
                                            norm_adv_by_std_in_grpo=norm_by_std)
    return adv[:, 0]


def shuffled_advantages(traj_adv: torch.Tensor, seed: int, step: int,
                        kept: torch.Tensor | None = None) -> torch.Tensor:
    """``rl.shuffle_advantages``, the no-signal control: the batch's trajectory advantages in a
    random order (a permutation drawn from ``seed`` and ``step``), so every update has the size,
    batch, tokens and advantage spread of the real one and no information on which trajectory
    scored well. What a run changes in the policy under it comes from the updates themselves
    (their noise, the entropy bonus, the KL term), not from the reward. ``kept`` (a bool per
    trajectory: the variance filter's groups) permutes among the kept trajectories only, so the
    trained ones get the advantages a real run trains on."""
    idx = torch.arange(len(traj_adv), device=traj_adv.device) if kept is None else kept.nonzero().flatten()
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    out = traj_adv.clone()
    out[idx] = traj_adv[idx[torch.randperm(len(idx), generator=g).to(idx.device)]]
    return out


def _with_step_advantages(adv: torch.Tensor, turns: list, scores: np.ndarray, ro, weight: float,
                          cfg: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """``adv`` plus ``weight`` x each sampled token's step advantage (its turn's, by ``ro.turn_of``);
    the task's turn rewards must sum to each trajectory's score."""
    from .rl_task import step_advantages

    if ro.turn_of is None:
        raise ValueError("rl.step_adv_weight > 0 needs rollouts that mark each sampled token's turn (turn_of)")
    sums = np.array([sum(r for _, r in t) for t in turns])
    if len(turns) != len(scores) or not np.allclose(sums, scores, atol=1e-5):
        raise RunError("the task's turn rewards do not sum to its trajectory scores")
    sa = torch.as_tensor(step_advantages(turns, ro.traj_group, cfg["step_adv_gamma"], cfg["norm_adv_by_std"]),
                         dtype=adv.dtype, device=adv.device)
    turn = ro.turn_of
    if int(turn.max()) >= sa.shape[1]:
        raise RunError("a sampled token's turn is past its trajectory's turns")
    tok = sa[ro.row_traj[:, None].expand_as(turn), turn.clamp(min=0)] * (turn >= 0) * ro.loss_mask
    n_turns = sum(len(t) for t in turns)
    return adv + weight * tok, {"step_adv_nonzero": float((sa != 0).sum()) / max(1, n_turns)}


def _minibatch_rows(ro, kept_traj: torch.Tensor, g0: int, g1: int) -> torch.Tensor:
    """The kept rows whose trajectory belongs to groups g0..g1-1, in row order."""
    group = torch.as_tensor(ro.traj_group, device=ro.row_traj.device)[ro.row_traj]
    sel = (group >= g0) & (group < g1) & kept_traj[ro.row_traj]
    return torch.nonzero(sel).flatten()


def train_rl(init_model: str, task, run_dir: str, cfg: dict[str, Any], stop_after: int | None = None,
             precision_mode: str = "auto", sft_file: str | None = None, sft_loss_turns: str = "all") -> dict[str, Any]:
    """Run GRPO on ``task`` (:class:`sft2rl.rl_task.RLTask`); checkpoints in run_dir/checkpoints,
    TensorBoard in run_dir/tensorboard. ``sft_file`` (parquet SFT rows, their loss on
    ``sft_loss_turns``) is the SFT term's data when ``cfg['sft_coef']`` > 0 (:class:`SFTAnchor`).

    Returns the summary; the policy of the last step is at ``summary['last_checkpoint']``,
    ``steps_trained`` counts the steps this call ran and ``resumed_from_step`` the step it
    resumed from (None: it started from step 0; see :mod:`sft2rl.resume` for when).
    ``stop_after`` ends the process early after that many steps (used to test resume).
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm
    from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_vanilla, kl_penalty

    from .rl_task import group_filter

    # options that contradict the task or each other: refused before the run directory is touched
    w_step = float(cfg.get("step_adv_weight", 0.0))
    if w_step and not hasattr(task, "turn_rewards"):
        raise ValueError(f"rl.step_adv_weight = {w_step}: step advantages need a multi-turn task that reports "
                         f"each turn's state and reward; {type(task).__name__} does not (set it to 0)")
    shuffle = bool(cfg.get("shuffle_advantages", False))
    if shuffle and w_step:
        raise ValueError("rl.shuffle_advantages (the no-signal control) with rl.step_adv_weight > 0: the step "
                         "advantages would still carry each turn's reward; set rl.step_adv_weight: 0 for the control")
    sft_coef = float(cfg.get("sft_coef", 0.0))
    if sft_coef < 0:
        raise ValueError(f"rl.sft_coef = {sft_coef}: must be >= 0")
    if sft_coef and not sft_file:
        raise ValueError(f"rl.sft_coef = {sft_coef}: the SFT term needs the SFT train rows, and this run was given none")
    run = Path(run_dir)
    ckpt_root = run / "checkpoints"
    device = pick_device()
    param_dtype, amp = precision(device, cfg["train_mode"], precision_mode)
    run_key_ = rl_run_key(init_model, task, cfg, sft_file, precision_used=[str(param_dtype), str(amp)],
                          sft_loss_turns=sft_loss_turns)
    guard = prepare_run_dir(run, run_key_)
    set_seed(cfg["seed"])
    model, tokenizer = load_model(init_model, device, param_dtype)
    items = task.load(tokenizer, cfg)
    steps_per_epoch = len(items) // cfg["train_batch"]
    if steps_per_epoch == 0:
        raise ValueError(f"{len(items)} training items are fewer than rl.train_batch = {cfg['train_batch']}")
    total = planned_steps(len(items), cfg["train_batch"], cfg["epochs"], cfg["total_steps"])

    resume = _latest_checkpoint(ckpt_root) if guard["resume"] else None
    if cfg["train_mode"] == "lora":
        from peft import LoraConfig, PeftModel

        from .model import attach_lora, sort_lora_targets

        if resume:
            model = sort_lora_targets(PeftModel.from_pretrained(model, resume / "policy", is_trainable=True))
        else:
            lc = cfg["lora"]
            model = attach_lora(model, LoraConfig(r=lc["r"], lora_alpha=lc["alpha"], lora_dropout=lc["dropout"],
                                                  target_modules=lc["target_modules"], task_type="CAUSAL_LM"))
        ref_model = None  # the reference is the same model with the adapter disabled
    else:
        ref_model = reference_copy(model)
        if resume:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(resume / "policy", dtype=param_dtype).to(device)
    model.train()
    anchor = SFTAnchor(sft_file, tokenizer, model, int(cfg.get("sft_batch", 8)), cfg["seed"],
                       sft_loss_turns) if sft_coef else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.0)
    start = 0
    history: list[dict[str, float]] = []
    if resume:
        opt.load_state_dict(torch.load(resume / "optimizer.pt", map_location=device))
        state = json.loads((resume / "trainer_state.json").read_text())
        start, history = state["step"], state["history"]
        LOG.info("resuming from %s (step %d of %d)", resume, start, total)

    loss_cfg = ActorLossConfig(clip_ratio=cfg["clip_ratio"], clip_ratio_low=cfg.get("clip_ratio_low"),
                               clip_ratio_high=cfg.get("clip_ratio_high"))
    keep = cfg.get("keep_group_fraction", 1.0)
    val_every = cfg.get("val_every") or 0
    n, bsz, mini = cfg["n"], cfg["train_batch"], cfg["ppo_mini_batch"]
    writer = SummaryWriter(str(run / "tensorboard"), purge_step=start + 1 if start else None)
    t0, tokens_done = time.time(), 0
    bar = tqdm(total=total, initial=start, desc="grpo", mininterval=5)
    last_ckpt = resume
    if val_every and start == 0:  # the init policy's validation, step 0
        history.append({"step": 0, **{f"val_{k}": v for k, v in task.validate(model, tokenizer).items()}})
        _log_scalars(writer, history[-1])
    for step in range(start + 1, total + 1):
        t_step = time.perf_counter()
        epoch, pos = divmod(step - 1, steps_per_epoch)
        batch_items = [items[i] for i in _batches(len(items), bsz, cfg["seed"], epoch)[pos]]
        with _autocast(device, amp):
            ro = task.rollout(model, tokenizer, batch_items, n, cfg, cfg["seed"] * 1_000_003 + step)
        scores_np, task_metrics = task.rewards(batch_items, ro)
        scores = torch.tensor(scores_np, dtype=torch.float32, device=device)
        kept_groups = group_filter(scores_np, ro.traj_group, keep)
        kept_traj = torch.as_tensor(kept_groups[ro.traj_group], device=device)
        lmask = ro.loss_mask
        traj_adv = trajectory_advantages(scores, ro.traj_group, cfg["norm_adv_by_std"])
        if shuffle:  # the no-signal control: the same advantages, each given to a random trajectory
            traj_adv = shuffled_advantages(traj_adv, cfg["seed"], step, kept_traj)
        adv = traj_adv[ro.row_traj][:, None] * lmask
        step_metrics: dict[str, float] = {}
        if w_step:  # GiGPO: plus each turn's advantage among the group's turns from the same state
            adv, step_metrics = _with_step_advantages(adv, task.turn_rewards(batch_items, ro), scores_np, ro, w_step, cfg)
        skip_old = on_policy(cfg)
        validate_now = bool(val_every) and (step % val_every == 0 or step == total)
        with_ref = needs_reference(cfg, validate_now or step == total)
        model.eval()  # the rollout policy's own function: no (LoRA) dropout in the old log-probs
        with torch.inference_mode(), _autocast(device, amp):
            old_logp = None if skip_old else _chunked_logprobs(model, ro, ro.response_mask, cfg["temperature"])
            ref_logp = None
            if with_ref and ref_model is None:  # LoRA: the reference is the model with its adapter off
                with model.disable_adapter():
                    ref_logp = _chunked_logprobs(model, ro, ro.response_mask, cfg["temperature"])
            elif with_ref:
                ref_logp = _chunked_logprobs(ref_model, ro, ro.response_mask, cfg["temperature"])
        model.train()
        ref_logp = ref_logp.clone() if ref_logp is not None else None  # out of inference mode: it enters the loss
        old_logp = old_logp.clone() if old_logp is not None else None
        stats: dict[str, list[float]] = {"pg_loss": [], "kl": [], "entropy": [], "clipfrac": [], "grad_norm": [],
                                         "ppo_kl": [], "rollout_logprob_diff_max": [], "sft_nll": []}
        starts = range(0, bsz, mini)
        for epoch_i in range(cfg["ppo_epochs"]):
            for mb_i, m0 in enumerate(starts):
                # the update's index in the run: the SFT term's rows are a function of (seed, update)
                update = ((step - 1) * cfg["ppo_epochs"] + epoch_i) * len(starts) + mb_i
                rows_mb = _minibatch_rows(ro, kept_traj, m0, min(m0 + mini, bsz))
                total_tokens = lmask[rows_mb].sum()
                if len(rows_mb) == 0 or total_tokens == 0:  # every group of this mini-batch filtered out
                    continue
                opt.zero_grad(set_to_none=True)
                acc = dict.fromkeys(("pg_loss", "entropy", "clipfrac", "ppo_kl"), 0.0)
                diff_max = None
                with _autocast(device, amp):  # the mini-batch's prompts, each computed once
                    score = _Scorer(model, ro, rows_mb, grad=True)
                # gradient accumulation over length-sorted micro-batches, each weighted by its share of
                # the tokens: the token-mean loss and gradient of the whole mini-batch, less padding
                for idx, p0, r in length_chunks(ro.prompt_mask, ro.response_mask, rows_mb):
                    with _autocast(device, amp):
                        logp, ent = score(idx, p0, r, ro.response_mask, cfg["temperature"], with_entropy=True,
                                          entropy_grad=cfg["entropy_coef"] != 0)
                    mask = lmask[idx, :r].float()
                    w = mask.sum() / total_tokens
                    old = logp.detach() if skip_old else old_logp[idx, :r]
                    pg_loss, pg_m = compute_policy_loss_vanilla(old, logp, adv[idx, :r], mask, "token-mean", loss_cfg)
                    if ro.logprobs is not None:  # the engine's log-probs against the rollout policy's
                        # training-side pass (verl logs it): the old log-probs, which are the
                        # first update's pass when on policy; later updates' passes have moved
                        d = float(((ro.logprobs[idx, :r] - old).abs() * mask).max())
                        diff_max = d if diff_max is None else max(diff_max, d)
                    entropy = agg_loss(ent, mask, "token-mean")
                    loss = pg_loss - cfg["entropy_coef"] * entropy if cfg["entropy_coef"] != 0 else pg_loss
                    kl = None
                    if ref_logp is not None:
                        kl = agg_loss(kl_penalty(logp, ref_logp[idx, :r], cfg["kl_type"]), mask, "token-mean")
                    if cfg["use_kl_loss"]:
                        loss = loss + cfg["kl_coef"] * kl
                    (loss * w).backward()
                    w = float(w)
                    acc["pg_loss"] += w * pg_loss.item()
                    if kl is not None:
                        acc["kl"] = acc.get("kl", 0.0) + w * kl.item()
                    acc["entropy"] += w * entropy.item()
                    acc["clipfrac"] += w * float(pg_m["actor/pg_clipfrac"])
                    acc["ppo_kl"] += w * float(pg_m["actor/ppo_kl"])
                score.finish()  # the prompts' share of the gradient, in one backward pass
                if anchor is not None:  # PPO-ptx: the SFT loss of this update's rows, weighted sft_coef
                    with _autocast(device, amp):
                        nll = anchor.loss(model, update, device)
                    (sft_coef * nll).backward()
                    stats["sft_nll"].append(float(nll.detach()))
                gnorm = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
                if torch.isfinite(gnorm):
                    opt.step()
                for k, v in acc.items():
                    stats[k].append(v)
                stats["grad_norm"].append(float(gnorm))
                if diff_max is not None:
                    stats["rollout_logprob_diff_max"].append(diff_max)
        tokens_done += int(lmask.sum())
        metrics = {
            "step": step,
            "reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
            **task_metrics, **ro.metrics, **step_metrics,
            "response_length": float(lmask.sum(dim=1).float().mean()),
            "tokens_per_s": tokens_done / (time.time() - t0),
            "step_seconds": time.perf_counter() - t_step,  # rollout, reward, forwards and update; no checkpoint
            **{k: float((np.max if k == "rollout_logprob_diff_max" else np.mean)(v)) for k, v in stats.items() if v},
        }
        # groups whose trajectories differ in reward: the only ones with a gradient (none left: collapse)
        metrics["groups_with_spread"] = float(np.mean([scores_np[ro.traj_group == g].std() > 0
                                                       for g in range(len(batch_items))]))
        if keep < 1.0:
            metrics["kept_groups"] = float(kept_groups.mean())
        if validate_now:
            metrics.update({f"val_{k}": v for k, v in task.validate(model, tokenizer).items()})
        history.append(metrics)
        _log_scalars(writer, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}",  # the KL where this step computed it
                        **({"kl": f"{metrics['kl']:.4f}"} if "kl" in metrics else {}))
        if step % cfg["save_freq"] == 0 or step == total:
            last_ckpt = _save_checkpoint(ckpt_root / f"step_{step}", model, tokenizer, opt, step, history)
        if stop_after is not None and step >= start + stop_after:
            break
    bar.close()
    writer.close()
    trained = [h for h in history if h["step"] > 0]
    done = trained[-1]["step"] if trained else 0
    summary = {"backend": "local", "steps": done, "total_steps": total, "steps_trained": done - start,
               "resumed_from_step": start if resume else None, "start": guard["reason"],
               "seconds": time.time() - t0, "run_key": run_key_["key"], "train_rows": len(items),
               "filtered_prompts": getattr(task, "filtered", 0),
               "precision": {"params": str(param_dtype), "autocast": str(amp)},
               "last_checkpoint": str(last_ckpt) if last_ckpt else None, "train_mode": cfg["train_mode"],
               "first": trained[0] if trained else None, "last": trained[-1] if trained else None,
               "reward_first10": _avg(trained[:10], "reward_mean"), "reward_last10": _avg(trained[-10:], "reward_mean"),
               "history": history}
    return summary


def _log_scalars(writer, metrics: dict[str, float]) -> None:
    """One history entry to TensorBoard: ``val_*`` under ``val/``, the rest under ``rl/``."""
    for k, v in metrics.items():
        if k != "step":
            writer.add_scalar(f"val/{k[4:]}" if k.startswith("val_") else f"rl/{k}", v, metrics["step"])


def check_steps(summary: dict[str, Any]) -> None:
    """Fail the job when the steps run differ from the steps planned (a run that looks finished but is not)."""
    if summary.get("steps") != summary.get("total_steps"):
        raise RunError(f"GRPO ran {summary.get('steps')} steps but {summary.get('total_steps')} were planned "
                       f"(last checkpoint: {summary.get('last_checkpoint')}); refusing to export it as finished")


def run_job(init_model: str, task, cfg: dict[str, Any], final_dir: str, summary_path: str,
            sft_file: str | None = None, sft_loss_turns: str = "all") -> dict[str, Any]:
    """One RL job of any task, as a workflow rule runs it: train (resuming where the run key
    allows), refuse a run whose steps differ from the plan, export the last policy to
    ``final_dir``, write the summary and mark the run directory (the summary's) complete.
    ``sft_file``/``sft_loss_turns``: the SFT term's rows (``rl.sft_coef``)."""
    from .resume import mark_complete

    run_dir = Path(summary_path).parent
    summary = train_rl(init_model, task, str(run_dir), cfg, sft_file=sft_file, sft_loss_turns=sft_loss_turns)
    check_steps(summary)
    summary["export"] = export_final(init_model, summary, final_dir)
    write_json(summary_path, summary)
    mark_complete(run_dir)
    return summary


def _avg(hist: list[dict], key: str) -> float | None:
    vals = [h[key] for h in hist if key in h]
    return float(np.mean(vals)) if vals else None


def _save_checkpoint(path: Path, model, tokenizer, opt, step: int, history: list) -> Path:
    with atomic_dir(path) as tmp:
        model.save_pretrained(Path(tmp) / "policy")
        tokenizer.save_pretrained(Path(tmp) / "policy")
        torch.save(opt.state_dict(), Path(tmp) / "optimizer.pt")
        write_json(Path(tmp) / "trainer_state.json", {"step": step, "history": history})
    return path


def export_final(init_model: str, summary: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Write the last policy as a plain HF directory (LoRA folded in and verified).

    A LoRA policy whose adapter never moved (every lora_B still zero: no group ever had a
    reward spread, so every advantage was 0) *is* the init model; it is exported as such
    and reported with ``policy_changed: false`` rather than passed to the merge, which
    rightly refuses a merge that changes nothing.
    """
    from .merge import merge_adapter

    policy = Path(summary["last_checkpoint"]) / "policy"
    if summary["train_mode"] == "lora":
        if not _adapter_moved(policy):
            LOG.warning("GRPO made no update (all advantages were zero): exporting the init model unchanged")
            with atomic_dir(out_dir) as tmp:
                model, tokenizer = load_model(init_model, torch.device("cpu"), torch.float32)
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
            return {"policy_changed": False}
        return {"policy_changed": True, **merge_adapter(init_model, str(policy), out_dir)}
    with atomic_dir(out_dir) as tmp:
        for f in policy.iterdir():
            shutil.copy2(f, Path(tmp) / f.name)
    return {"policy_changed": True, "copied": str(policy)}


def _adapter_moved(policy: Path) -> bool:
    from safetensors.torch import load_file

    weights = load_file(str(policy / "adapter_model.safetensors"))
    return any(t.abs().max() > 0 for k, t in weights.items() if "lora_B" in k)
