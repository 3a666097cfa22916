from sft2rl.logutil import script_errors
from sft2rl.tasks.med import rl_table

with script_errors(snakemake) as log:
    p, i, o = snakemake.params, snakemake.input, snakemake.output
    if snakemake.rule == "med_rl_table":
        frame = rl_table.rl_eval_frame(dict(zip(p.doctors, i.summaries)), dict(zip(p.doctors, i.consultations)),
                                       p.sft, p.infos, dict(zip(p.rl_doctors, i.train)), p.bootstrap,
                                       dict(zip(p.doctors, i.sampled)) if len(i.sampled) else None)
        rl_table.write_rl_eval(frame, o.csv, o.tex, p.bootstrap["ci_level"])
        import json
        from pathlib import Path

        random = json.loads(Path(i.random[0]).read_text()) if len(i.random) else None
        rl_table.curves_figure(dict(zip(p.rl_doctors, i.train)), list(o.figure), random,
                               {d: p.infos[d]["budget"] for d in p.rl_doctors})
        log.info("med rl_eval: %s", frame[["doctor", "accuracy", "reward", "diff_accuracy", "sampled_accuracy",
                                                          "diff_sampled_accuracy"]].to_dict("records"))
    else:  # med_turn_budget
        files = {}
        for (kind, turns), path in zip(p.runs, i.consultations):
            files.setdefault((kind, turns), []).append(path)
        frame = rl_table.turn_budget_frame(files, p.bootstrap)
        rl_table.write_turn_budget(frame, o.csv, o.tex, p.bootstrap["ci_level"])
        rl_table.budget_figure(o.csv, list(o.figure), p.bootstrap["ci_level"])
        log.info("med turn-budget ablation: %d rows", len(frame))
