"""The medical workflow end to end on the reduced config: synthetic clinic -> rows with and
without thinking -> tiny base -> LoRA SFT per variant and seed -> automatic verified merge into
results/models/<run>/merged -> consultations with the simulated patient -> the tables and figure.

One finished medical workflow per test session (``med_done``), in its own copy of the checkout.
"""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from conftest import REPO
from test_pipeline import REDUCED, finished_copy, planned_jobs, smk

pytestmark = pytest.mark.integration
#: the med: section the reduced run sees (its top-level keys replace the default's)
MED = {**yaml.safe_load((REPO / "config.yaml").read_text())["med"], **yaml.safe_load(REDUCED.read_text())["med"]}
RUN = MED["run_name"]
SEEDS = MED["seeds"]
N_TEST = MED["world"]["cases"]["test"]


@pytest.fixture(scope="session")
def med_done(tmp_path_factory):
    return finished_copy(tmp_path_factory, "med", "med")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_eval_table_rows_and_references(med_done):
    frame = pd.read_csv(med_done / "results/med/eval.csv")
    alls = frame[frame["category"] == "all"].set_index("doctor")
    first = SEEDS[0]
    assert list(alls.index) == ["base", f"{RUN}-think-seed{first}", f"{RUN}-nothink-seed{first}", "scripted", "random"]
    assert (alls["cases"] == N_TEST).all()
    cats = set(frame["category"]) - {"all"}
    assert cats and cats <= set(MED["world"]["categories"])
    # per-category rows add up to the whole
    for doctor, sub in frame[frame["category"] != "all"].groupby("doctor"):
        assert sub["cases"].sum() == N_TEST
        assert (sub["cases"] * sub["accuracy"]).sum() / N_TEST == pytest.approx(alls.loc[doctor, "accuracy"], abs=1e-5)
    scripted, rnd = alls.loc["scripted"], alls.loc["random"]
    assert scripted["accuracy"] >= 0.75 and scripted["invalid_format_rate"] == 0
    assert scripted["repeated_question_rate"] == 0 and scripted["diagnosed_rate"] == 1
    # partial records: the random doctor mostly hears "Sorry", the scripted one mostly answers
    assert rnd["accuracy"] < scripted["accuracy"] and rnd["ir_precision"] < scripted["ir_precision"]
    assert ((alls["accuracy_lo"] <= alls["accuracy"]) & (alls["accuracy"] <= alls["accuracy_hi"])).all()
    assert (alls["turns"] >= 1).all() and (alls["turns"] <= MED["eval"]["max_turns"]).all()
    # the consultations on disk agree with the table
    for doctor in alls.index:
        recs = read_jsonl(med_done / f"results/med/eval/{doctor}.jsonl")
        assert len(recs) == N_TEST
        assert sum(r["correct"] for r in recs) / N_TEST == pytest.approx(alls.loc[doctor, "accuracy"])
        assert sum(r["turns"] for r in recs) / N_TEST == pytest.approx(alls.loc[doctor, "turns"])
        cut = json.loads((med_done / f"results/med/eval/{doctor}.json").read_text())[0]["replies_cut"]
        assert cut is None if doctor in ("scripted", "random") else 0 <= cut <= 1, (doctor, cut)
    for ext in ("png", "pdf"):
        assert (med_done / f"results/figures/med_eval.{ext}").stat().st_size > 1000
    tex = (med_done / "results/tables/med_eval.tex").read_text()
    assert tex.count("\\\\") == len(alls) + 1


def test_ablation_over_seeds(med_done):
    ab = pd.read_csv(med_done / "results/med/ablation_thinking.csv").set_index("with_thinking")
    assert list(ab.index) == ["true", "false", "random doctor", "think - nothink"]
    assert (ab.drop("random doctor")["n_seeds"] == len(SEEDS)).all() and ab.loc["random doctor", "n_seeds"] == 1
    # the no-information doctor beside the SFT doctors, on the same cases
    rand = json.loads((med_done / "results/med/eval/random.json").read_text())[0]
    assert ab.loc["random doctor", "accuracy_mean"] == pytest.approx(rand["accuracy"])
    per_seed = {t: [json.loads((med_done / f"results/med/eval/{RUN}-{t}-seed{s}.json").read_text())[0]["accuracy"]
                    for s in SEEDS] for t in ("think", "nothink")}
    assert ab.loc["true", "accuracy_mean"] == pytest.approx(sum(per_seed["think"]) / len(SEEDS))
    assert ab.loc["false", "accuracy_mean"] == pytest.approx(sum(per_seed["nothink"]) / len(SEEDS))
    diffs = [a - b for a, b in zip(per_seed["think"], per_seed["nothink"])]
    assert ab.loc["think - nothink", "accuracy_mean"] == pytest.approx(sum(diffs) / len(diffs))
    assert pd.Series(per_seed["think"]).std() == pytest.approx(ab.loc["true", "accuracy_std"], nan_ok=True)
    # paired bootstrap intervals (per case and seed) on every row
    for name in ab.index:
        lo, hi = ab.loc[name, "accuracy_ci_low"], ab.loc[name, "accuracy_ci_high"]
        assert lo <= hi and -1 <= lo and hi <= 1
    assert ab.loc["true", "accuracy_ci_low"] <= ab.loc["true", "accuracy_mean"] <= ab.loc["true", "accuracy_ci_high"]


def test_sft_rows_and_automatic_verified_merge(med_done):
    think = pd.read_parquet(med_done / "data/processed/med/think/train.parquet")
    nothink = pd.read_parquet(med_done / "data/processed/med/nothink/train.parquet")
    # one row per consultation (med.sft_rows), ending in its diagnosis
    assert MED["sft_rows"] == "consultation" and len(think) == len(nothink) == MED["world"]["cases"]["train"]
    assert nothink["response"].str.contains("Diagnosis: ").all()
    # every doctor turn of the raw rows is in exactly one consultation row
    raw = read_jsonl(med_done / "data/raw/med/train.jsonl")
    assert sum(m["role"] == "assistant" for msgs in nothink["messages"] for m in msgs) == len(raw) > len(nothink)
    assert think["response"].str.startswith("<think>").all()
    assert not nothink["response"].str.contains("<think>").any()
    assert not any("<think>" in m["content"] for msgs in nothink["messages"] for m in msgs if m["role"] == "assistant")
    for t in ("think", "nothink"):
        for s in SEEDS:
            run = f"{RUN}-{t}-seed{s}"
            metrics = json.loads((med_done / f"results/med/sft/{run}/metrics.json").read_text())
            losses = [e["val_loss"] for e in metrics["epochs"]]
            assert len(losses) == MED["sft"]["epochs"] and min(losses) < metrics["initial_val_loss"]
            best = min(metrics["epochs"], key=lambda e: e["val_loss"])["epoch"]
            report = json.loads((med_done / f"results/models/{run}/merged/merge_report.json").read_text())
            assert report["verified"] and report["adapter"].endswith(f"{run}/checkpoints/epoch_{best}")
    # the SFT doctors answer in the trained formats, the base never does (the reduced run is short:
    # it teaches the protocol, not the diagnoses)
    frame = pd.read_csv(med_done / "results/med/eval.csv")
    alls = frame[frame["category"] == "all"].set_index("doctor")
    sft = alls.loc[[d for d in alls.index if d.startswith(RUN)]]
    assert (sft["invalid_format_rate"] < 0.5).all() and sft["diagnosed_rate"].max() > 0.5
    assert alls.loc["base", "invalid_format_rate"] > 0.9


def test_clinic_splits_and_held_out_cases(med_done):
    world = json.loads((med_done / "data/raw/med/world.json").read_text())
    split = {s: {c["key"] for c in world["cases"] if c["split"] == s} for s in ("train", "val", "test")}
    assert not split["test"] & split["train"] and not split["val"] & split["train"]
    overlap = json.loads((med_done / "data/raw/med/overlap.json").read_text())
    assert overlap["test"]["test_diagnosis_prompts"] == N_TEST and overlap["test"]["in_train"] == 0
    # the held-out cases checked again against the raw train and val files (as your own files are)
    cases_overlap = json.loads((med_done / "data/processed/med/cases_overlap.json").read_text())
    assert cases_overlap["in_train"] == 0 and cases_overlap["dropped"] == 0 and cases_overlap["policy"] == "refuse"
    assert cases_overlap["test_diagnosis_prompts"] == N_TEST
    cases = read_jsonl(med_done / "data/processed/med/cases.jsonl")
    assert len(cases) == N_TEST and all(c["exact"] for c in cases)
    corpus = (med_done / "data/processed/med/corpus.jsonl").read_text()
    assert "Patient's description" not in corpus


def test_editing_the_eval_settings_reruns_only_the_evaluation(med_done):
    extra = med_done / "extra.yaml"
    extra.write_text(yaml.safe_dump({"med": {"eval": dict(MED["eval"], patient_threshold=0.6)}}))
    proc = smk(med_done, "med", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    # the patient is the same in evaluation and RL: RL and every consultation rerun, SFT does not
    assert set(jobs) == {"med_eval", "med_table", "med_figure", "med_rl", "med_rl_control", "med_eval_budget",
                         "med_eval_sampled", "med_rl_random", "med_rl_table", "med_turn_budget", "med"}, jobs


def test_editing_the_sampled_evaluation_reruns_only_it(med_done):
    """med.eval.temperature, top_p and k_samples are the sampled evaluation's alone: no RL run,
    no greedy consultation is planned again; k_samples 0 drops the sampled columns' jobs."""
    extra = med_done / "extra.yaml"
    extra.write_text(yaml.safe_dump({"med": {"eval": dict(MED["eval"], temperature=1.0, top_p=1.0)}}))
    proc = smk(med_done, "med", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == {"med_eval_sampled": 8, "med_rl_table": 1, "med": 1}
    extra.write_text(yaml.safe_dump({"med": {"eval": dict(MED["eval"], k_samples=0)}}))
    proc = smk(med_done, "med", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == {"med_rl_table": 1, "med": 1}


def test_editing_the_sft_rows_reruns_the_sft_from_its_data(med_done):
    """med.sft_rows changes the processed rows and the SFT's loss turns: both variants' rows and
    every SFT run are planned again; the clinic and the base are not."""
    extra = med_done / "extra.yaml"
    extra.write_text(yaml.safe_dump({"med": {"sft_rows": "turn"}}))
    proc = smk(med_done, "med", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["med_data"] == len(MED["with_thinking"]) and jobs["med_sft"] == len(MED["with_thinking"]) * len(SEEDS)
    assert not {"med_world", "med_corpus", "med_base_model", "med_cases"} & set(jobs), jobs


def test_the_turn_limit_is_the_training_dialogues_too(med_done):
    """med.eval.max_turns is the one turn limit: the scripted doctor's training dialogues end at
    it too, so editing it rebuilds the clinic's rows (and what is trained on them)."""
    extra = med_done / "extra.yaml"
    extra.write_text(yaml.safe_dump({"med": {"eval": dict(MED["eval"], max_turns=MED["eval"]["max_turns"] + 1)}}))
    proc = smk(med_done, "med", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "med_world" in planned_jobs(proc.stdout)


# ------------------------------------------------------------------ medical RL
RL = MED["rl"]
SFT_DOCTOR = f"{RUN}-{'think' if RL['with_thinking'] else 'nothink'}-seed{SEEDS[0]}"
BUDGETS = ("fixed", "dynamic")
RL_DOCTORS = [f"rl-{m}-seed{RL['seeds'][0]}" for m in BUDGETS]
#: the no-signal control of each budget (the same run, advantages in a random order)
CONTROLS = [f"rl-{m}-control-seed{RL['seeds'][0]}" for m in BUDGETS]
CONTROL = CONTROLS[0]


def test_rl_eval_table_and_paired_differences(med_done):
    frame = pd.read_csv(med_done / "results/med/rl_eval.csv").set_index("doctor")
    assert list(frame.index) == ["base", SFT_DOCTOR, *RL_DOCTORS, *CONTROLS, "scripted", "random"]
    assert (frame["cases"] == N_TEST).all()
    sft = read_jsonl(med_done / f"results/med/eval/{SFT_DOCTOR}.jsonl")
    for doctor in frame.index:
        recs = read_jsonl(med_done / f"results/med/eval/{doctor}.jsonl")
        # every consultation's reward is the sum of its terms; the table's reward is their mean
        for r in recs:
            assert r["reward"] == pytest.approx(sum(v for k, v in r.items() if k.startswith("reward_")))
            assert r["success"] == (r["reward"] >= 10)
        assert frame.loc[doctor, "reward"] == pytest.approx(sum(r["reward"] for r in recs) / N_TEST, abs=1e-5)
    for doctor in [*RL_DOCTORS, *CONTROLS]:
        row = frame.loc[doctor]
        recs = read_jsonl(med_done / f"results/med/eval/{doctor}.jsonl")
        assert {r["case"] for r in recs} == {r["case"] for r in sft}
        # the paired per-case difference of means is the difference of the means, inside its interval
        assert row["diff_accuracy"] == pytest.approx(row["accuracy"] - frame.loc[SFT_DOCTOR, "accuracy"], abs=1e-5)
        assert row["diff_reward"] == pytest.approx(row["reward"] - frame.loc[SFT_DOCTOR, "reward"], abs=1e-4)
        assert row["diff_accuracy_lo"] <= row["diff_accuracy"] <= row["diff_accuracy_hi"]
        assert row["rl_steps"] == RL["total_steps"]
        assert all(r["max_turns"] == MED["eval"]["max_turns"] for r in recs)
    assert frame[["diff_accuracy"]].loc[["base", SFT_DOCTOR, "scripted", "random"]].isna().all().all()
    # RL - its no-signal control (same budget and seed), paired per case
    for doctor, control in zip(RL_DOCTORS, CONTROLS):
        row = frame.loc[doctor]
        assert row["diff_control_accuracy"] == pytest.approx(row["accuracy"] - frame.loc[control, "accuracy"], abs=1e-5)
        assert row["diff_control_reward"] == pytest.approx(row["reward"] - frame.loc[control, "reward"], abs=1e-4)
        assert row["diff_control_accuracy_lo"] <= row["diff_control_accuracy"] <= row["diff_control_accuracy_hi"]
    assert frame["diff_control_accuracy"].drop(RL_DOCTORS).isna().all()
    assert list(frame.loc[CONTROLS, "label"]) == [f"RL, {m} budget, no-signal control" for m in BUDGETS]
    # evidence: the scripted doctor concludes right whenever its evidence suffices; the SFT
    # doctor's two evidence columns are those of its records
    assert frame.loc["scripted", "accuracy_if_sufficient"] == 1.0
    marked = [r for r in sft if r["evidence_sufficient"]]
    assert frame.loc[SFT_DOCTOR, "evidence_sufficient_rate"] == pytest.approx(len(marked) / N_TEST)
    assert frame.loc[SFT_DOCTOR, "accuracy_if_sufficient"] == pytest.approx(
        sum(r["correct"] for r in marked) / len(marked) if marked else float("nan"), nan_ok=True)
    for ext in ("png", "pdf"):
        assert (med_done / f"results/figures/med_rl_curves.{ext}").stat().st_size > 1000
    assert (med_done / "results/tables/med_rl_eval.tex").read_text().count("\\\\") == len(frame) + 1


def test_sampled_evaluation(med_done):
    """Every doctor of rl_eval.csv also consults each held-out case k times sampling at the
    reference evaluation's temperature and top-p; the sampled columns are the per-case means of
    those consultations, the differences paired per case like the greedy ones."""
    frame = pd.read_csv(med_done / "results/med/rl_eval.csv").set_index("doctor")
    k = MED["eval"]["k_samples"]
    cases = {r["case"] for r in read_jsonl(med_done / f"results/med/eval/{SFT_DOCTOR}.jsonl")}
    sampled = {d: read_jsonl(med_done / f"results/med/eval_sampled/{d}.jsonl") for d in frame.index}
    for doctor, recs in sampled.items():
        assert len(recs) == k * N_TEST and all({r["case"] for r in recs if r["sample"] == j} == cases for j in range(k))
        row = frame.loc[doctor]
        assert row["k_samples"] == k
        assert row["sampled_accuracy"] == pytest.approx(sum(r["correct"] for r in recs) / len(recs), abs=1e-5)
        assert row["sampled_reward"] == pytest.approx(sum(r["reward"] for r in recs) / len(recs), abs=1e-4)
        assert row["sampled_accuracy_lo"] <= row["sampled_accuracy"] <= row["sampled_accuracy_hi"]
    for doctor in [*RL_DOCTORS, *CONTROLS]:
        row = frame.loc[doctor]
        assert row["diff_sampled_accuracy"] == pytest.approx(
            row["sampled_accuracy"] - frame.loc[SFT_DOCTOR, "sampled_accuracy"], abs=1e-5)
        assert row["diff_sampled_accuracy_lo"] <= row["diff_sampled_accuracy"] <= row["diff_sampled_accuracy_hi"]
    for doctor, control in zip(RL_DOCTORS, CONTROLS):
        assert frame.loc[doctor, "diff_control_sampled_reward"] == pytest.approx(
            frame.loc[doctor, "sampled_reward"] - frame.loc[control, "sampled_reward"], abs=1e-4)
    # the scripted doctor is deterministic: each of its k consultations is its greedy one; the
    # base model samples: two consultations of one case differ somewhere
    greedy = {r["case"]: r["replies"] for r in read_jsonl(med_done / "results/med/eval/scripted.jsonl")}
    assert all(r["replies"] == greedy[r["case"]] for r in sampled["scripted"])
    base = {(r["case"], r["sample"]): r["replies"] for r in sampled["base"]}
    assert any(base[(c, 0)] != base[(c, 1)] for c in cases)
    assert "sampled ($k=" in (med_done / "results/tables/med_rl_eval.tex").read_text()


def test_rl_raises_the_reward_on_its_cases(med_done):
    """Every step of the reduced RL consults the same 8 train cases (rl.train_batch = med.rl.cases):
    the first step's episodes are the SFT doctor's; the mean episode reward of the last five
    steps must exceed the first five's. Curves, terms and validation are in the summary."""
    assert RL["cases"] == RL["train_batch"]
    for doctor in RL_DOCTORS:
        summary = json.loads((med_done / f"results/med/rl/{doctor}/summary.json").read_text())
        hist = [h for h in summary["history"] if h["step"] > 0]
        assert len(hist) == RL["total_steps"] and summary["train_rows"] == RL["cases"]
        first = sum(h["episode_reward"] for h in hist[:5]) / 5
        last = sum(h["episode_reward"] for h in hist[-5:]) / 5
        assert last > first + 0.5, (doctor, first, last)
        for h in hist:
            assert {"reward_diagnosis", "reward_answered", "reward_repeated", "success", "turns", "entropy"} <= set(h)
            assert h["episode_reward"] == pytest.approx(sum(h[f"reward_{t}"] for t in (
                "diagnosis", "recommendation", "answered", "unanswered", "repeated", "invalid", "no_diagnosis")))
        budgets = [h["budget"] for h in hist]
        if doctor.startswith("rl-fixed"):
            assert set(budgets) == {MED["eval"]["max_turns"]}
        else:
            assert min(budgets) >= RL["budget_range"][0] and max(budgets) <= RL["budget_range"][1]
            assert len(set(budgets)) > 1
        vals = [h for h in summary["history"] if "val_accuracy" in h]
        assert vals[0]["step"] == 0 and vals[-1]["step"] == RL["total_steps"]
        tb = list((med_done / f"results/med/rl/{doctor}/tensorboard").glob("events.out.tfevents.*"))
        assert tb


def test_the_no_signal_control_rolls_out_as_rl_and_learns_without_the_signal(med_done):
    """Each budget's control is its RL run with the advantages in a random order: its first step
    rolls out exactly the RL run's first consultations (same SFT doctor, same seed, same drawn
    budgets), its updates differ from there on; the reward's information is what lifts the
    fixed run's reward above its control's."""
    runs = {d: json.loads((med_done / f"results/med/rl/{d}/summary.json").read_text()) for d in RL_DOCTORS + CONTROLS}
    hists = {d: [h for h in s["history"] if h["step"] > 0 and "episode_reward" in h] for d, s in runs.items()}
    for budget, doctor, control in zip(BUDGETS, RL_DOCTORS, CONTROLS):
        rl, ctl = hists[doctor], hists[control]
        assert runs[control]["steps"] == RL["total_steps"] == len(ctl)
        for key in ("episode_reward", "turns", "reward_diagnosis", "reward_answered"):
            assert ctl[0][key] == pytest.approx(rl[0][key], abs=1e-9), (control, key)
        assert any(c["episode_reward"] != r["episode_reward"] for c, r in zip(ctl[1:], rl[1:]))
        assert (med_done / f"results/med/models/{control}/final/config.json").is_file()
        assert f"{budget} budget, no-signal control" in (med_done / f"results/logs/med/{control}.log").read_text()
    # on the same 8 cases every step, the fixed run's last five steps earn more than its
    # control's: the reward's information, not the updates alone, raised it (reduced run: 7.6
    # against 3.6)
    rl, ctl = hists[RL_DOCTORS[0]], hists[CONTROL]
    last = {name: sum(h["episode_reward"] for h in hist[-5:]) / 5 for name, hist in (("rl", rl), ("control", ctl))}
    assert last["rl"] > last["control"] + 1.0, last


def test_turn_budget_ablation(med_done):
    ab = pd.read_csv(med_done / "results/med/ablation_turn_budget.csv")
    budgets = sorted(RL["eval_budgets"])
    for kind in ("sft", "fixed", "dynamic", "random", "dynamic - fixed"):
        sub = ab[ab["doctor"] == kind]
        assert sorted(sub["max_turns"]) == budgets, kind
    for t in budgets:
        for doctor in [SFT_DOCTOR, *RL_DOCTORS, "random"]:
            recs = read_jsonl(med_done / f"results/med/eval_budget/{doctor}-turns{t}.jsonl")
            assert len(recs) == N_TEST and max(r["turns"] for r in recs) <= t
            assert all(r["max_turns"] == t for r in recs)
        at = ab[ab["max_turns"] == t].set_index("doctor")
        fixed = read_jsonl(med_done / f"results/med/eval_budget/{RL_DOCTORS[0]}-turns{t}.jsonl")
        assert at.loc["fixed", "accuracy_mean"] == pytest.approx(sum(r["correct"] for r in fixed) / N_TEST)
        # the no-information doctor on the same cases at the same budget
        rand = read_jsonl(med_done / f"results/med/eval_budget/random-turns{t}.jsonl")
        assert sorted(r["case"] for r in rand) == sorted(r["case"] for r in fixed)
        assert at.loc["random", "accuracy_mean"] == pytest.approx(sum(r["correct"] for r in rand) / N_TEST)
        assert at.loc["dynamic - fixed", "accuracy_mean"] == pytest.approx(
            at.loc["dynamic", "accuracy_mean"] - at.loc["fixed", "accuracy_mean"], abs=1e-6)
        assert (at["accuracy_lo"] <= at["accuracy_mean"] + 1e-9).all()
        assert (at["accuracy_mean"] <= at["accuracy_hi"] + 1e-9).all()
    for ext in ("png", "pdf"):
        assert (med_done / f"results/figures/med_turn_budget.{ext}").stat().st_size > 1000


def test_rl_trains_on_train_cases_only(med_done):
    """RL's cases are the first med.rl.cases of the clinic's train split; none is a test or val
    consultation by content (the description with numbers masked, the record and the truth)."""
    from sft2rl.tasks.med.data import mask_numbers

    def key(case):
        return mask_numbers(json.dumps([case["first"][-1]["content"], case["truth"], case["patient_information"]]))

    rl = read_jsonl(med_done / "data/processed/med/rl/train_cases.jsonl")
    test = read_jsonl(med_done / "data/processed/med/cases.jsonl")
    val = read_jsonl(med_done / "data/processed/med/rl/val_cases.jsonl")
    summary = json.loads((med_done / f"results/med/rl/{RL_DOCTORS[0]}/summary.json").read_text())
    assert summary["train_rows"] == RL["cases"] <= len(rl) and len(test) == N_TEST
    assert not {key(c) for c in rl} & {key(c) for c in test}
    assert not {key(c) for c in rl} & {key(c) for c in val}
    assert {key(c) for c in val} and {key(c) for c in test}


def test_more_seeds_and_eval_budgets_leave_finished_rl_runs_alone(med_done):
    """A second RL seed and another evaluation budget plan the new seed's two runs and the
    new evaluations; the finished seed-1 runs are not retrained."""
    extra = med_done / "extra.yaml"
    extra.write_text(yaml.safe_dump({"med": {"rl": dict(RL, seeds=[*RL["seeds"], RL["seeds"][0] + 1],
                                                        eval_budgets=[*RL["eval_budgets"], 3])}}))
    proc = smk(med_done, "med", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["med_rl"] == 2 and "med_rl_control" not in jobs, jobs  # the control: first seed only
    new = f"seed{RL['seeds'][0] + 1}"
    planned = re.findall(r"rule med_rl:\n(?:    .*\n)*?    output: .*?results/med/models/(rl-\w+-seed\d+)/final", proc.stdout)
    assert sorted(planned) == [f"rl-dynamic-{new}", f"rl-fixed-{new}"], planned
    # every doctor at the new budget (SFT, random, both modes x both seeds), and nothing before RL
    n_b, n_s = len(RL["eval_budgets"]), len(RL["seeds"])
    assert jobs["med_eval_budget"] == (n_b + 1) * (2 + 2 * (n_s + 1)) - n_b * (2 + 2 * n_s), jobs
    assert not {"med_world", "med_sft", "med_merge", "med_base_model", "med_rl_cases"} & set(jobs), jobs


def test_the_sft_term_plans_rl_again_on_the_doctors_own_sft_rows(med_done):
    """``med.rl.sft_coef`` > 0 (PPO-ptx) replans every RL run and control, each reading the SFT
    train rows of the doctor RL starts from; nothing before RL reruns."""
    extra = med_done / "ptx.yaml"
    extra.write_text(yaml.safe_dump({"med": {"rl": dict(RL, sft_coef=0.5)}}))
    proc = smk(med_done, "med", extra_config=extra, dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert jobs["med_rl"] == 2 * len(RL["seeds"]) and jobs["med_rl_control"] == 2, jobs
    assert not {"med_world", "med_sft", "med_merge", "med_base_model", "med_rl_cases"} & set(jobs), jobs
    tag = "think" if RL["with_thinking"] else "nothink"
    inputs = re.findall(r"rule med_rl(?:_control)?:\n    input: (.*)\n", proc.stdout)
    assert len(inputs) == jobs["med_rl"] + jobs["med_rl_control"]
    assert all(f"data/processed/med/{tag}/train.parquet" in line for line in inputs), inputs[:1]
