"""One GRPO step: sft2rl's local backend now, the same backend before issue 14, and TRL.

Same model (the headline's merged SFT model, the GRPO init), same RL prompts, one thread
each (as a GRPO job), the settings of config.yaml's ``rl`` section on all three:

    prompts per step 8, rollouts per prompt n = 8, <= 64 new tokens, temperature 1, top-p 1,
    full fine-tuning, AdamW lr 5e-5 (constant, no weight decay), grad clip 1.0, clip ratio 0.2,
    KL loss with coefficient 0.001 against a frozen reference model, one PPO epoch over one
    mini-batch (on-policy), token-mean loss, group advantages normalised by the std,
    the group-aware reward of sft2rl.tasks.qa.reward; no gradient checkpointing.

What could not be matched, stated in the output: TRL's KL is the k3 estimator unclamped
(verl's ``low_var_kl`` clamps it to [-10, 10]); TRL's std normalisation adds 1e-4 (verl
1e-6); TRL samples its batches with its own sampler (other prompts, same shape).

Contenders, each run in a fresh process, interleaved round by round (each run: ``--steps``
steps; the first step of a run is its warm-up and not counted). A step is timed from one
rollout's start to the next's (TRL: from its step-begin to its step-end callback):

- ``sft2rl``: ``train_grpo`` (the QA task on the shared trainer) of this checkout (lean rollout engine, no old-log-prob
  forward, length-sorted micro-batches, LM head on response positions only);
- ``sft2rl_before``: ``train_grpo`` of commit ``--before`` (default: the last commit before
  this work; ``model.generate`` rollouts, three full forward passes per step), its ``src/``
  taken with ``git archive``;
- ``trl``: ``trl.GRPOTrainer`` 1.16 (``pip install -e '.[bench]'``).

    python bench/grpo_step.py   -> bench/results/grpo_step.json, grpo_step.csv
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, publish

DEFAULT_MODEL = REPO / "results/models/sft50_seed42/merged"
DEFAULT_DATA = REPO / "data/processed/rl/train.parquet"
BEFORE = "351087c"

#: A contender's process: argv = kind, src dir, model, data, steps, seed, workdir; prints step times (JSON).
CHILD = r"""
import json, sys, tempfile, time
kind, src, model, data, steps, seed, work = sys.argv[1:8]
steps, seed = int(steps), int(seed)
sys.path.insert(0, src)
import torch, yaml
torch.set_num_threads(1)
cfg = yaml.safe_load(open(sys.argv[8]))
rl, reward = cfg["rl"], cfg["reward"]
marks = []
if kind == "trl":
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from sft2rl.io import read_parquet_rows
    from sft2rl.model import load_model
    from sft2rl.tasks.qa.reward import group_aware_details, options_from_config
    m, tok = load_model(model, torch.device("cpu"), torch.float32)
    rows = read_parquet_rows(data)
    ds = Dataset.from_list([{"prompt": r["prompt"], "ground_truth": r["reward_model"]["ground_truth"]} for r in rows])
    n, rkw = rl["n"], options_from_config(reward)
    def group_aware(completions, ground_truth, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        out = []
        for g in range(0, len(texts), n):  # TRL puts a prompt's n completions next to each other
            out += [d.reward for d in group_aware_details(texts[g:g + n], ground_truth[g], **rkw)]
        return out
    times = []
    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(dir=work), max_steps=steps, seed=seed,
        per_device_train_batch_size=rl["train_batch"] * n, num_generations=n,
        generation_batch_size=rl["train_batch"] * n, gradient_accumulation_steps=1,
        max_completion_length=rl["max_response_length"], temperature=rl["temperature"], top_p=rl["top_p"], top_k=0,
        beta=rl["kl_coef"], epsilon=rl["clip_ratio"], num_iterations=rl["ppo_epochs"], loss_type="dapo",
        scale_rewards="group" if rl["norm_adv_by_std"] else "none", learning_rate=rl["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=rl["grad_clip"],
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
        logging_steps=10 ** 6, disable_dropout=True, dataloader_num_workers=0, disable_tqdm=True)
    GRPOTrainer(model=m, reward_funcs=group_aware, args=args, train_dataset=ds, processing_class=tok,
                callbacks=[Timer()]).train()
else:
    import sft2rl.grpo as grpo
    try:  # the QA task's own module (the shared trainer) or, before it, the trainer
        import sft2rl.tasks.qa.rl as qa
    except ImportError:
        qa = grpo
    real = qa.generate
    def timed_generate(*a, **k):
        marks.append(time.perf_counter())
        return real(*a, **k)
    qa.generate = timed_generate
    qa.train_grpo(model, data, tempfile.mkdtemp(dir=work), dict(rl, seed=seed, total_steps=steps + 1,
                    save_freq=10 ** 6), reward)
    times = [b - a for a, b in zip(marks, marks[1:])]  # rollout to rollout: the last step (and its save) left out
print("STEP_TIMES " + json.dumps(times))
"""


def run_child(kind: str, src: Path, model: str, data: str, steps: int, seed: int, work: Path) -> list[float]:
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(src), model, data, str(steps), str(seed), str(work),
                           str(REPO / "config.yaml")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
                               "HOME": str(work), "TOKENIZERS_PARALLELISM": "false"})
    line = [x for x in proc.stdout.splitlines() if x.startswith("STEP_TIMES ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[-1].split(" ", 1)[1])[1:]  # the first step is the warm-up


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--steps", type=int, default=5, help="steps per run (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", default=BEFORE, help="commit of the 'before' contender")
    ap.add_argument("--no-trl", action="store_true")
    a = ap.parse_args(argv)
    if not Path(a.model).is_dir() or not Path(a.data).is_file():
        print(f"needs the headline's SFT model and RL data ({a.model}, {a.data}): run `make run` first",
              file=sys.stderr)
        return 2
    names = ["sft2rl", "sft2rl_before"] + ([] if a.no_trl else ["trl"])
    times: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        before_src = work / "before"
        before_src.mkdir()
        archive = subprocess.run(["git", "archive", a.before, "src"], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive, check=True)
        srcs = {"sft2rl": REPO / "src", "sft2rl_before": before_src / "src", "trl": REPO / "src"}
        for r in range(a.rounds):
            for name in names:
                got = run_child(name, srcs[name], a.model, a.data, a.steps, r + 1, work)
                times[name] += got
                print(f"round {r + 1}/{a.rounds} {name}: " + " ".join(f"{t:.2f}" for t in got), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"contender": k, "median_s_per_step": med[k], "min_s": min(v), "max_s": max(v), "steps_timed": len(v),
             "time_vs_sft2rl": med[k] / med["sft2rl"]} for k, v in times.items()]
    import yaml

    rl = yaml.safe_load((REPO / "config.yaml").read_text())["rl"]
    payload = {"what": "one GRPO step, identical settings, 1 thread each", "model": a.model, "data": a.data,
               "before_commit": a.before,
               "settings": {k: rl[k] for k in ("n", "train_batch", "ppo_mini_batch", "ppo_epochs",
                                               "max_response_length", "temperature", "top_p", "lr", "grad_clip",
                                               "clip_ratio", "kl_coef", "kl_type", "train_mode")},
               "not_matched": ["KL: TRL k3 unclamped vs verl low_var_kl clamped to [-10, 10]",
                               "advantage std epsilon: TRL 1e-4 vs verl 1e-6",
                               "prompt order: each trainer's own sampler (same batch shape)"],
               "times_s": times}
    publish("grpo_step", payload, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
