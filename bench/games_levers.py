"""The games' levers, measured in the workflow's own setting.

Each variant runs the games pipeline's own functions in-process, on the default config with
the variant's overrides: levels and rows (``data.write_game_data``), the corpus
(``data.corpus_texts``), the games' tiny base (``model.build_base``, both envs' corpora as
the ``game_base_model`` rule), LoRA SFT on the reference prompt (``sft.train_sft``), the
verified merge of the best checkpoint, then the merged model *generates* its replies: the
optimal-action rate on every state of the test levels' solver paths (the table's "opt.
action", teacher-forced, greedy) and greedy success on the 100 test levels, next to chance.

    python bench/games_levers.py --variant default '{}' \\
        --variant cells '{"tiny": {"cell_tokens": true}}' --envs frozenlake sokoban
    -> bench/results/games_levers.csv (one row per variant and env, appended)

A variant's JSON is merged key by key into the ``games`` section of config.yaml (``tiny``,
``corpus``, ``pretrain``, ``sft``, ``counts``, ...); ``"base_from": "<variant>"`` reuses an
earlier variant's base (with ``--keep``), ``"sft_envs": [...]`` fine-tunes only those envs
(the others get the base's own move rate). Times are wall seconds on this
machine (2 cores here), one stage at a time.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from common import REPO, RESULTS, machine  # noqa: F401  (puts src/ on the path)

from sft2rl.generation import reply_policy  # noqa: E402
from sft2rl.io import write_jsonl  # noqa: E402
from sft2rl.merge import merge_adapter  # noqa: E402
from sft2rl.model import build_base, load_model  # noqa: E402
from sft2rl.sft import choose_checkpoint, train_sft  # noqa: E402
from sft2rl.tasks.games import data, play, prompts, sft_config  # noqa: E402


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def base_move_rate(base: str, env: str, levels: list[dict], games: dict) -> float:
    """The base's own policy in its corpus format: on every state of the test levels' solver
    paths, the argmax over the four actions after "<grid>\\n<marker>" starts a shortest plan."""
    from sft2rl.tasks.games import ACTIONS

    model, tok = load_model(base)
    model.eval()
    ids = [tok.encode(" " + a, add_special_tokens=False)[0] for a in ACTIONS]
    hits = []
    for lv, _, state, _, best in play.path_states(env, levels, games):
        r = data.rules(env, lv["grid"])
        text = "\n\n" + prompts.render(r.grid(state), games["render"]) + "\n" + games["corpus"]["marker"]
        with torch.no_grad():
            logits = model(torch.tensor([tok.encode(text, add_special_tokens=False)])).logits[0, -1]
        hits.append(ACTIONS[int(torch.argmax(logits[ids]))] in best)
    return sum(hits) / len(hits)


def run_variant(name: str, over: dict, envs: list[str], config: dict, tmp: Path) -> list[dict]:
    games = deep_merge(config["games"], {k: v for k, v in over.items() if k not in ("base_from", "sft_envs")})
    work = tmp / name
    t0 = time.time()
    docs = []
    for env in envs:
        cfg = dict(games)
        data.write_game_data(env, cfg, work / env)
        docs += data.corpus_texts(data.read_levels(work / env / "levels.jsonl"), cfg, **games["corpus"])
    write_jsonl(work / "corpus.jsonl", [{"text": d} for d in docs])
    t_data = time.time() - t0
    tiny = dict(config["model"]["tiny"], **games["tiny"])
    pre = dict(config["model"]["pretrain"], **games["pretrain"])
    added = prompts.base_added_tokens(games)
    t0 = time.time()
    base = str(work / "base")
    if over.get("base_from"):  # another variant's base (same levels, corpus and tokenizer settings)
        base = str(tmp / over["base_from"] / "base")
        stats = json.loads((Path(base) / "pretrain_metrics.json").read_text())
    else:
        stats = build_base(str(work / "corpus.jsonl"), base, tiny, pre, None, tuple(added))
    t_base = time.time() - t0
    rows = []
    sft_cfg = dict(sft_config(dict(config, games=games)), seed=1)
    for env in envs:
        levels = data.read_levels(work / env / "levels.jsonl", "test")
        row = {"variant": name, "overrides": json.dumps(over, sort_keys=True), "env": env,
               "base_move_rate": base_move_rate(base, env, levels, games), "pretrain_loss": stats["final_loss"],
               "data_s": round(t_data, 1), "base_s": round(t_base, 1)}
        if env not in over.get("sft_envs", envs):  # the base alone
            print(json.dumps(row), flush=True)
            rows.append(row)
            continue
        t0 = time.time()
        run = work / f"sft-{env}"
        metrics = train_sft(base, str(work / env / "train.parquet"), str(work / env / "val.parquet"),
                            str(run), sft_cfg)
        merge_adapter(base, str(choose_checkpoint(str(run), "best")), str(work / f"merged-{env}"))
        t_sft = time.time() - t0
        t0 = time.time()
        model, tok = load_model(str(work / f"merged-{env}"))
        ev = games["eval"]
        pol = reply_policy(model, tok, max_new_tokens=ev["max_new_tokens"], do_sample=False,
                           temperature=ev["temperature"], seed=ev["seed"], batch_size=ev["batch_size"])
        acc = play.step_accuracy(env, levels, pol, games, ev["max_steps"], ev["seed"])
        records = play.play(env, levels, pol, games, episodes=1, max_steps=ev["max_steps"], seed=ev["seed"],
                            progress=False)
        summ = play.summarize(records)
        t_eval = time.time() - t0
        row.update({
            "optimal_action_rate": acc["optimal_action_rate"], "chance": acc["chance_optimal_action_rate"],
            "greedy_success": summ["success"], "success_lo": summ["success_lo"], "success_hi": summ["success_hi"],
            "invalid_format": summ["invalid_format_rate"], "sft_val_loss_before": metrics["initial_val_loss"],
            "sft_val_loss_best": min(h["val_loss"] for h in metrics["epochs"]),
            "longest_sft_row": metrics["longest_row"], "train_rows": metrics["train_rows"],
            "sft_merge_s": round(t_sft, 1), "eval_s": round(t_eval, 1)})
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    ap.add_argument("--envs", nargs="+", default=["frozenlake", "sokoban"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", help="work directory to keep (bases, runs) instead of a temporary one")
    ap.add_argument("--out", default=str(RESULTS / "games_levers.csv"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep or scratch)
        for name, spec in args.variant:
            rows = run_variant(name, json.loads(spec), args.envs, config, tmp)
            import pandas as pd

            earlier = pd.read_csv(out) if out.exists() else pd.DataFrame()
            pd.concat([earlier, pd.DataFrame(rows)], ignore_index=True).to_csv(out, index=False, float_format="%.4g")


if __name__ == "__main__":
    main()
