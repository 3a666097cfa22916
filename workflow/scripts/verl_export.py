"""Run-time steps of the verl backend, called by the shell commands of workflow/rules/verl.smk.

    verl_export.py sft-metrics --run-dir results/sft/<run>            # metrics.json from verl's checkpoints + TensorBoard
    verl_export.py choose-step --run-dir results/sft/<run> --which W   # prints the global_step_<N> dir to merge
    verl_export.py fold --merger-dir D --base B --out results/models/<run>/merged [--which W --step-dir S]
                        [--train-mode lora|full]
    verl_export.py prepare-rl --run-dir R --init I --train T --config-hash H --max-prompt-length L
                              --train-batch B --epochs E [--total-steps S]   # restart guard + plan.json
    verl_export.py prepare-game-rl --run-dir R --init I --levels L --env E --games-json J --seed S
                                   --config-hash H --train-batch B --epochs E [--total-steps S]
                                   # a games run: guard, rows, agent-loop file; prints the episode's token budget
    verl_export.py prepare-med-rl --run-dir R --init I --cases C --mode fixed|dynamic --med-json J
                                  --max-prompt-length L --seed S --config-hash H --train-batch B --epochs E
                                  [--total-steps S]   # a medical run: the same, the consultation's token budget
    verl_export.py latest-step --checkpoints results/rl/<run>/checkpoints
    verl_export.py rl-export --run-dir R --merger-dir D --init I --step-dir S --train-mode lora|full --final F --summary J
                             [--episode-log E [--episode-task game|med]]   # an agent-loop run (games,
                             # medical consultation): the history from its agent loop's episodes

The logic lives in sft2rl.verl_export (tested); this is its command line. Errors that are the
user's to fix (a refused merge, a missing checkpoint, steps run != steps planned) end in one
line and exit status 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sft2rl import verl_export as vx
from sft2rl.errors import USER_ERRORS
from sft2rl.io import write_json
from sft2rl.logutil import one_line, setup_logging
from sft2rl.resume import mark_complete


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sft-metrics")
    p.add_argument("--run-dir", required=True)
    p = sub.add_parser("choose-step")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--which", required=True)
    p = sub.add_parser("fold")
    p.add_argument("--merger-dir", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--which", default=None)
    p.add_argument("--step-dir", default=None)
    p.add_argument("--train-mode", choices=["lora", "full"], default="lora")
    p = sub.add_parser("prepare-rl")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--config-hash", required=True)
    p.add_argument("--max-prompt-length", type=int, required=True)
    p.add_argument("--train-batch", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--total-steps", type=int, default=None)
    p = sub.add_parser("prepare-game-rl")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--levels", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--games-json", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--config-hash", required=True)
    p.add_argument("--train-batch", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--total-steps", type=int, default=None)
    p = sub.add_parser("prepare-med-rl")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--mode", choices=["fixed", "dynamic"], required=True)
    p.add_argument("--med-json", required=True)
    p.add_argument("--max-prompt-length", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--config-hash", required=True)
    p.add_argument("--train-batch", type=int, required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--total-steps", type=int, default=None)
    p = sub.add_parser("latest-step")
    p.add_argument("--checkpoints", required=True)
    p = sub.add_parser("rl-export")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--merger-dir", required=True)
    p.add_argument("--init", required=True)
    p.add_argument("--step-dir", required=True)
    p.add_argument("--train-mode", choices=["lora", "full"], required=True)
    p.add_argument("--final", required=True)
    p.add_argument("--summary", required=True)
    p.add_argument("--episode-log", default=None)
    p.add_argument("--episode-task", choices=["game", "med"], default="game")
    args = ap.parse_args(argv)
    log = setup_logging()
    try:
        if args.cmd == "sft-metrics":
            metrics = vx.sft_metrics(args.run_dir)
            write_json(Path(args.run_dir) / "metrics.json", metrics)
            log.info("verl SFT: %d checkpoints, val loss logged: %s, best epoch: %s", len(metrics["epochs"]),
                     metrics["val_loss_logged"], metrics["best_epoch"])
        elif args.cmd == "choose-step":
            path, why = vx.choose_sft_checkpoint(args.run_dir, args.which)
            log.info("merging %s (%s)", path, why)
            write_json(Path(args.run_dir) / "merge_choice.json", {"step_dir": str(path), "which": args.which,
                                                                 "reason": why})
            print(path)
        elif args.cmd == "fold":
            if args.train_mode == "lora":
                report = vx.fold_lora(args.merger_dir, args.base, args.out)
                log.info("verified merge into %s: %d LoRA-targeted weights changed (step %s, %s)", args.out,
                         report["lora_targets"], args.step_dir, args.which)
            else:  # full fine-tuning: the checkpoint's own weights (the merger's are bfloat16), verified
                report = vx.export_full_checkpoint(args.step_dir, args.merger_dir, args.base, args.out)
                log.info("verified export into %s: %d weights changed (step %s, %s)", args.out,
                         report["changed_weights"], args.step_dir, args.which)
        elif args.cmd == "prepare-rl":
            plan = vx.prepare_rl_run(args.run_dir, init=args.init, train=args.train, config_hash=args.config_hash,
                                     max_prompt_length=args.max_prompt_length, train_batch=args.train_batch,
                                     epochs=args.epochs, total_steps=args.total_steps)
            log.info("verl GRPO plan: %s", plan)
        elif args.cmd == "prepare-game-rl":
            import json

            plan = vx.prepare_game_rl(args.run_dir, init=args.init, levels=args.levels, env=args.env,
                                      games=json.loads(args.games_json), seed=args.seed, config_hash=args.config_hash,
                                      train_batch=args.train_batch, epochs=args.epochs, total_steps=args.total_steps)
            log.info("verl games GRPO plan: %s", plan)
            print(plan["response_length"])  # read by the job's shell: data.max_response_length
        elif args.cmd == "prepare-med-rl":
            import json

            plan = vx.prepare_med_rl(args.run_dir, init=args.init, cases=args.cases, mode=args.mode,
                                     med=json.loads(args.med_json), seed=args.seed, config_hash=args.config_hash,
                                     max_prompt_length=args.max_prompt_length, train_batch=args.train_batch,
                                     epochs=args.epochs, total_steps=args.total_steps)
            log.info("verl medical GRPO plan: %s", plan)
            print(plan["response_length"])  # read by the job's shell: data.max_response_length
        elif args.cmd == "latest-step":
            print(vx.latest_rl_checkpoint(args.checkpoints))
        elif args.cmd == "rl-export":
            step = int(Path(args.step_dir).name.split("_")[-1])
            planned = vx.check_planned_steps(args.run_dir, step)
            export = (vx.fold_lora(args.merger_dir, args.init, args.final) if args.train_mode == "lora"
                      else vx.export_full_checkpoint(Path(args.step_dir) / "actor", args.merger_dir, args.init,
                                                     args.final))
            histories = {"game": vx.game_rl_history, "med": vx.med_rl_history}
            history = histories[args.episode_task](args.episode_log) if args.episode_log else None
            summary = vx.rl_summary(args.run_dir, args.step_dir, args.train_mode, planned, export, history)
            write_json(args.summary, summary)
            mark_complete(args.run_dir)
            log.info("verl GRPO export: step %s of %s, reward %s -> %s", summary["steps"], planned,
                     summary["reward_first10"], summary["reward_last10"])
    except USER_ERRORS as err:
        log.error("ERROR: %s", one_line(err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
