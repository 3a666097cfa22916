"""What limits the tiny model on the games: can it learn the policy from plain-text play?

Pretrains the embedded tiny Qwen2 (``model.tiny`` of config.yaml, ``games.tiny`` overrides)
on train levels of one env played out in plain text ("<Env>\\n<grid>\\nMove: Up\\n<grid>...
Solved."), for each number of pretraining steps given, and measures on every state of the
solver paths of train and test levels how often the base's next move (argmax over the four
action tokens after "Move:") starts a shortest plan, next to chance (a uniformly random
action). Train equal to test means the number of levels is not the limit.

This is a probe, not the workflow's setting: the workflow's games base (``game_corpus``) is
pretrained on ``games.counts.train`` levels (300 by default), each document headed by the
game's instruction, and it plays through the chat prompt and generation, not a "Move:" probe.
The levels come from ``data.generate_levels``, so the test states never appear in the corpus.

    python bench/games_limits.py --env frozenlake --levels 1000 --steps 200 600
    -> bench/results/games_limits_<env>.csv (one row per steps value) and a printed table

Everything is seeded (levels, tokenizer, pretraining); a run takes about 1.4 s per
pretraining step of 32 x 256 tokens on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sft2rl.io import write_jsonl  # noqa: E402
from sft2rl.model import TAG_TOKENS, build_base  # noqa: E402
from sft2rl.tasks.games import ACTIONS, data, prompts  # noqa: E402
from sft2rl.tasks.games.solver import optimal_actions, plan_states  # noqa: E402


def move_rates(model_dir: str, env: str, levels: list[dict], style: str) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = [tok.encode(" " + a, add_special_tokens=False)[0] for a in ACTIONS]
    out = {}
    for split in ("train", "test"):
        hits, chance = [], []
        for lv in [x for x in levels if x["split"] == split][:100]:
            r = data.rules(env, lv["grid"])
            for state in plan_states(r, lv["solution"])[:-1]:
                best = optimal_actions(r, state)
                text = f"{env.capitalize()}\n{prompts.render(r.grid(state), style)}\nMove:"
                with torch.no_grad():
                    logits = model(torch.tensor([tok.encode(text)])).logits[0, -1]
                hits.append(ACTIONS[int(torch.argmax(logits[ids]))] in best)
                chance.append(len(best) / len(ACTIONS))
        out[f"optimal_move_{split}"] = sum(hits) / len(hits)
        out[f"chance_{split}"] = sum(chance) / len(chance)
        out[f"states_{split}"] = len(hits)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="frozenlake", choices=["frozenlake", "sokoban"])
    ap.add_argument("--levels", type=int, default=1000, help="train levels in the corpus")
    ap.add_argument("--steps", type=int, nargs="+", default=[200, 600])
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    games = copy.deepcopy(config["games"])
    games["counts"]["train"] = args.levels
    levels = data.generate_levels(args.env, games)
    docs = [data.played_out(lv, games["render"], args.env.capitalize()) for lv in levels if lv["split"] == "train"]
    tiny = dict(config["model"]["tiny"], **games["tiny"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        write_jsonl(corpus, [{"text": d} for d in docs])
        for steps in args.steps:
            pre = {**config["model"]["pretrain"], **games["pretrain"], "steps": steps}
            t0 = time.time()
            stats = build_base(str(corpus), f"{tmp}/base{steps}", tiny, pre, None,
                               TAG_TOKENS + ("<answer>", "</answer>"))
            row = {"env": args.env, "train_levels": args.levels, "pretrain_steps": steps,
                   "final_loss": stats["final_loss"], "pretrain_seconds": time.time() - t0,
                   **move_rates(f"{tmp}/base{steps}", args.env, levels, games["render"])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    import pandas as pd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / f"games_limits_{args.env}.csv", index=False, float_format="%.4g")
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
