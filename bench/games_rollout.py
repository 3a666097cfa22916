"""Multi-turn rollouts: the games' RL task (every episode of a batch in lockstep through the
lean engine, one batch of prompts per turn) against a loop that calls ``model.generate`` per
episode and per turn, on the same merged SFT model, levels, limits and sampling settings.

    python bench/games_rollout.py [--env frozenlake] [--levels 8] [--n 8] [--reps 3]
    -> bench/results/games_rollout.{json,csv}

Needs the games workflow's merged SFT model (``snakemake --cores 2 games`` first). Both
contenders play ``levels x n`` episodes of the train levels to ``games.eval.max_steps``
turns with replies of ``games.eval.max_new_tokens`` tokens at ``games.rl.temperature``; the
table gives episodes and turns per second of each (median times, runs interleaved, see
bench/common.py). The episodes differ (each draws its own samples, so their lengths do), so
the speedup is the ratio of turns per second.
"""
from __future__ import annotations

import argparse
import time

import torch
import yaml

from common import REPO, interleaved, publish

from sft2rl.generation import chat_texts, stop_token_ids  # noqa: E402
from sft2rl.model import load_model  # noqa: E402
from sft2rl.tasks.games import rl_config  # noqa: E402
from sft2rl.tasks.games.data import read_levels  # noqa: E402
from sft2rl.tasks.games.play import Episode  # noqa: E402
from sft2rl.tasks.games.rl import GamesTask  # noqa: E402


def per_episode_loop(model, tok, games: dict, env: str, items: list[dict], n: int, temperature: float) -> list[Episode]:
    """One ``model.generate`` call per episode and turn (the plain way to write a rollout)."""
    ev = games["eval"]
    stops = stop_token_ids(model, tok)
    eps = [Episode(env, lv, k, games, ev["max_steps"], k) for lv in items for k in range(n)]
    for e in eps:
        while not e.done:
            ids = tok(chat_texts(tok, [e.prompt()]), return_tensors="pt", add_special_tokens=False)
            out = model.generate(**ids, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=ev["max_new_tokens"], eos_token_id=stops,
                                 pad_token_id=tok.pad_token_id)
            e.act(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return eps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="frozenlake")
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    games = config["games"]
    cfg = rl_config(config)
    seed = config["sft"]["seed"]
    model_dir = REPO / f"results/games/models/sft-{args.env}-seed{seed}/merged"
    levels = REPO / f"data/processed/games/{args.env}/levels.jsonl"
    model, tok = load_model(str(model_dir))
    model.eval()
    task = GamesTask(args.env, str(levels), games)
    task.load(tok, cfg)
    items = read_levels(levels, "train")[:args.levels]
    turns: dict[str, list[float]] = {"lockstep": [], "generate_loop": []}

    def lockstep():
        with torch.no_grad():
            ro = task.rollout(model, tok, items, args.n, cfg, seed=len(turns["lockstep"]))
        turns["lockstep"].append(sum(e.steps for e in ro.info))

    def loop():
        torch.manual_seed(len(turns["generate_loop"]))
        eps = per_episode_loop(model, tok, games, args.env, items, args.n, cfg["temperature"])
        turns["generate_loop"].append(sum(e.steps for e in eps))

    t0 = time.time()
    times = interleaved({"lockstep": lockstep, "generate_loop": loop}, reps=args.reps, warmup=1)
    episodes = args.levels * args.n
    rows = []
    for name, t in times.items():
        mean_turns = sum(turns[name][1:]) / len(turns[name][1:])
        rows.append({"env": args.env, "rollout": name, "episodes": episodes, "median_s": round(t["median_s"], 2),
                     "min_s": round(t["min_s"], 2), "max_s": round(t["max_s"], 2),
                     "episodes_per_s": round(episodes / t["median_s"], 2),
                     "turns_per_episode": round(mean_turns / episodes, 2),
                     "turns_per_s": round(mean_turns / t["median_s"], 1)})
    # turns per second: the episodes of the two contenders draw different samples and lengths
    ratio = rows[0]["turns_per_s"] / rows[1]["turns_per_s"]
    for r in rows:
        r["speedup_vs_loop"] = round(ratio if r["rollout"] == "lockstep" else 1.0, 2)
    publish("games_rollout", {"args": vars(args), "seconds": time.time() - t0, "times": times,
                              "turns": turns, "speedup": ratio}, rows)


if __name__ == "__main__":
    main()
