"""One multi-turn GRPO step on FrozenLake: sft2rl's games task on the shared trainer against
TRL's ``GRPOTrainer`` at the same settings, each in a fresh process, one thread each.

Same merged SFT model (the games workflow's FrozenLake model), same train levels, same
episodes: the history prompt (``games.history: true``: every earlier reply and grid in the
chat, the only multi-turn form TRL can train, one sequence per episode), at most
``games.eval.max_steps`` turns of ``games.eval.max_new_tokens`` tokens, temperature 1, top-p
1; 8 levels x 8 episodes per step, RAGEN's reward with the format penalty, group-normalised
advantages, full fine-tuning, AdamW lr 1e-4 (constant, no weight decay), grad clip 1.0, clip
0.2 / 0.28, no KL term, one PPO epoch over one mini-batch, token-mean loss.

- ``sft2rl``: :func:`sft2rl.grpo.train_rl` with :class:`sft2rl.tasks.games.rl.GamesTask`
  (every episode of the batch in lockstep through the lean engine; an episode's turns
  chained into one sequence where each prompt's tokens continue it,
  :func:`sft2rl.rl_task.chain_turns`, the shared prompt computed once);
- ``trl``: ``trl.GRPOTrainer`` 1.16 with a ``rollout_func`` that plays the same episodes in
  lockstep with ``model.generate`` (one batched call per turn, the plain way) and returns
  one sequence per episode with its ``env_mask`` (observation tokens 0) and log-probs.

What cannot be matched, stated in the output: TRL's ``environment_factory`` (its other
multi-turn path) drives an environment through tool calls, so it needs a chat template that
renders tool calls and a policy that emits them; the games' policy answers in RAGEN's
``<answer>`` format and the tiny model's template has no tools (TRL refuses it: "The provided
chat template does not support tool calling"), hence ``rollout_func``. Both train one
sequence per episode (sft2rl falls back to a row per turn where a prompt does not continue
its episode's tokens); TRL's advantage std adds 1e-4 (verl 1e-6); the episodes differ
(each draws its own samples), so the table also gives turns per step, and each step's
rollout (playing the episodes) apart from the rest (log-probs and the update).

    python bench/games_grpo_step.py [--steps 4] [--rounds 2]
    -> bench/results/games_grpo_step.{json,csv}
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

#: A contender's process: argv = kind, model, levels, steps, seed, workdir, config; prints step times.
CHILD = r"""
import json, sys, tempfile, time
kind, model, levels, steps, seed, work, config = sys.argv[1:8]
steps, seed = int(steps), int(seed)
import torch, yaml
torch.set_num_threads(1)
from sft2rl.tasks.games import rl_config
from sft2rl.tasks.games.data import read_levels
from sft2rl.tasks.games.play import Episode
from sft2rl.tasks.games.rl import GamesTask, episode_score
cfg = yaml.safe_load(open(config))
games = dict(cfg["games"], history=True)
env = "frozenlake"
rl = dict(rl_config(dict(cfg, games=games)), seed=seed, total_steps=steps + 1, save_freq=10 ** 6, val_every=0,
          max_prompt_length=2048)
ev = games["eval"]
n, batch = rl["n"], rl["train_batch"]
times, turns, rollouts = [], [], []
if kind == "trl":
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from sft2rl.model import load_model
    from sft2rl.generation import stop_token_ids
    m, tok = load_model(model, torch.device("cpu"), torch.float32)
    tok.padding_side = "left"
    train = read_levels(levels, "train")
    by_text = {Episode(env, lv, 0, games, ev["max_steps"], 0).prompt()[-1]["content"]: lv for lv in train}
    ds = Dataset.from_list([{"prompt": Episode(env, lv, 0, games, ev["max_steps"], 0).prompt()} for lv in train])
    stops = stop_token_ids(m, tok)

    def rollout(prompts, trainer):
        t_roll = time.perf_counter()
        model_ = trainer.model
        eps = [Episode(env, by_text[p[-1]["content"]], k, games, ev["max_steps"], seed * 1000 + k)
               for k, p in enumerate(prompts)]
        first = [tok.apply_chat_template(e.prompt(), add_generation_prompt=True, tokenize=False) for e in eps]
        prompt_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in first]
        seq = [list(p) for p in prompt_ids]
        mask = [[] for _ in eps]
        logps = [[] for _ in eps]
        while True:
            active = [i for i, e in enumerate(eps) if not e.done]
            if not active:
                break
            batch_ids = tok.pad({"input_ids": [seq[i] for i in active]}, return_tensors="pt")
            with torch.no_grad():
                out = model_.generate(**batch_ids, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                      max_new_tokens=ev["max_new_tokens"], eos_token_id=stops,
                                      pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
            width = batch_ids["input_ids"].shape[1]
            lp = torch.stack(out.scores, 1).log_softmax(-1)
            for row, i in enumerate(active):
                gen = out.sequences[row, width:].tolist()
                cut = next((j + 1 for j, t in enumerate(gen) if t in stops), len(gen))
                gen = gen[:cut]
                seq[i] += gen
                mask[i] += [1] * len(gen)
                logps[i] += [float(lp[row, j, t]) for j, t in enumerate(gen)]
                eps[i].act(tok.decode(gen, skip_special_tokens=True))
                if not eps[i].done:  # the next observation: the chat's rendering of the new user turn
                    whole = tok.apply_chat_template(eps[i].prompt(), add_generation_prompt=True, tokenize=False)
                    sofar = tok.decode(seq[i], skip_special_tokens=False)
                    obs = tok(whole[len(sofar):], add_special_tokens=False)["input_ids"] if whole.startswith(sofar) \
                        else tok(whole, add_special_tokens=False)["input_ids"][len(seq[i]):]
                    seq[i] += obs
                    mask[i] += [0] * len(obs)
                    logps[i] += [0.0] * len(obs)
        turns.append(sum(e.steps for e in eps))
        rollouts.append(time.perf_counter() - t_roll)
        return {"prompt_ids": prompt_ids, "completion_ids": [s[len(p):] for s, p in zip(seq, prompt_ids)],
                "logprobs": logps, "env_mask": mask,
                "episode_reward": [episode_score(e, games["rl"]["format_penalty"]) for e in eps]}

    def reward(completions, episode_reward, **_):
        return list(episode_reward)

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()
        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)
    budget = ev["max_steps"] * (ev["max_new_tokens"] + 64)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(dir=work), max_steps=steps, seed=seed,
        per_device_train_batch_size=batch * n, num_generations=n, generation_batch_size=batch * n,
        gradient_accumulation_steps=1, max_completion_length=budget, temperature=1.0, top_p=1.0, top_k=0,
        beta=0.0, epsilon=rl["clip_ratio_low"], epsilon_high=rl["clip_ratio_high"], num_iterations=rl["ppo_epochs"],
        loss_type="dapo", scale_rewards="group" if rl["norm_adv_by_std"] else "none", learning_rate=rl["lr"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=rl["grad_clip"],
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
        logging_steps=10 ** 6, disable_dropout=True, dataloader_num_workers=0, disable_tqdm=True)
    GRPOTrainer(model=m, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok,
                rollout_func=rollout, callbacks=[Timer()]).train()
else:
    from sft2rl.grpo import train_rl
    marks = []
    real = GamesTask.rollout
    def timed(self, *a, **k):
        marks.append(time.perf_counter())
        ro = real(self, *a, **k)
        rollouts.append(time.perf_counter() - marks[-1])
        turns.append(int(sum(e.steps for e in ro.info)))
        return ro
    GamesTask.rollout = timed
    task = GamesTask(env, levels, dict(games, rl=dict(games["rl"])))
    train_rl(model, task, tempfile.mkdtemp(dir=work), rl)
    times = [b - a for a, b in zip(marks, marks[1:])]
    turns, rollouts = turns[:len(times)], rollouts[:len(times)]
print("STEP_TIMES " + json.dumps({"times": times, "turns": turns, "rollouts": rollouts}))
"""


def run_child(kind: str, model: str, levels: str, steps: int, seed: int, work: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, model, levels, str(steps), str(seed), str(work),
                           str(REPO / "config.yaml")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
                               "HOME": str(work), "TOKENIZERS_PARALLELISM": "false",
                               "PYTHONPATH": str(REPO / "src"), "TRL_EXPERIMENTAL_SILENCE": "1"})
    line = [x for x in proc.stdout.splitlines() if x.startswith("STEP_TIMES ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-3000:]}")
    got = json.loads(line[-1].split(" ", 1)[1])
    return {k: got[k][1:] for k in ("times", "turns", "rollouts")}  # the first step is the warm-up


def main(argv=None) -> int:
    import yaml

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    seed = config["sft"]["seed"]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / f"results/games/models/sft-frozenlake-seed{seed}/merged"))
    ap.add_argument("--levels", default=str(REPO / "data/processed/games/frozenlake/levels.jsonl"))
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    if not Path(a.model).is_dir() or not Path(a.levels).is_file():
        print(f"needs the games workflow's FrozenLake SFT model and levels ({a.model}): run "
              "`snakemake --cores 2 games` first", file=sys.stderr)
        return 2
    got: dict[str, dict[str, list]] = {k: {"times": [], "turns": [], "rollouts": []} for k in ("sft2rl", "trl")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name in got:
                res = run_child(name, a.model, a.levels, a.steps, r + 1, Path(tmp))
                for k in res:
                    got[name][k] += res[k]
                print(f"round {r + 1}/{a.rounds} {name}: " + " ".join(f"{t:.2f}" for t in res["times"])
                      + f" s; turns {res['turns']}", flush=True)
    med = {k: statistics.median(v["times"]) for k, v in got.items()}
    rows = [{"contender": k, "median_s_per_step": med[k], "min_s": min(v["times"]), "max_s": max(v["times"]),
             "steps_timed": len(v["times"]), "mean_turns_per_step": statistics.mean(v["turns"]),
             "s_per_1000_turns": 1000 * sum(v["times"]) / sum(v["turns"]),
             "rollout_s_per_1000_turns": 1000 * sum(v["rollouts"]) / sum(v["turns"]),
             "update_s_per_1000_turns": 1000 * (sum(v["times"]) - sum(v["rollouts"])) / sum(v["turns"]),
             "time_vs_sft2rl": med[k] / med["sft2rl"]} for k, v in got.items()]
    rl = dict(config["rl"], **{k: v for k, v in config["games"]["rl"].items()})
    payload = {"what": "one multi-turn GRPO step on FrozenLake (history prompt), identical settings, 1 thread each",
               "model": a.model, "levels": a.levels,
               "settings": {"levels_per_step": rl["train_batch"], "episodes_per_level": rl["n"],
                            "max_turns": config["games"]["eval"]["max_steps"],
                            "reply_tokens": config["games"]["eval"]["max_new_tokens"], "lr": rl["lr"],
                            "clip": [rl["clip_ratio_low"], rl["clip_ratio_high"]], "kl": "none",
                            "train_mode": rl["train_mode"], "ppo_epochs": rl["ppo_epochs"]},
               "not_matched": ["TRL environment_factory needs tool calls (the policy answers in RAGEN's format and "
                               "the tiny model's chat template has no tools): TRL runs with rollout_func",
                               "both train one sequence per episode where the next prompt's tokens continue it "
                               "(TRL: built so; sft2rl: chain_turns checks it)",
                               "advantage std epsilon: TRL 1e-4 vs verl 1e-6",
                               "episodes differ (own samples): compare per turn as well"],
               "results": got}
    publish("games_grpo_step", payload, rows)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
