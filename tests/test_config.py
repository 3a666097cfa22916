"""Config validation at DAG time: one line naming the key and the allowed values."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sft2rl.config import ConfigError, check_config

from conftest import REPO

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"


@pytest.fixture()
def cfg():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_default_config_is_valid(cfg):
    check_config(cfg, SCHEMA)


@pytest.mark.parametrize("path,value,pattern", [
    (("backend",), "slurm", r"'backend' = 'slurm' is not allowed; allowed values: \['local', 'verl'\]"),
    (("rl", "kl_type"), "foo", r"'rl.kl_type' = 'foo' is not allowed; allowed values: \['low_var_kl'"),
    (("reward", "match"), "exact", r"'reward.match' = 'exact' is not allowed; allowed values: \['substring', 'fuzzy'\]"),
    (("sft", "epochs"), 0, r"'sft.epochs' = 0: 0 is less than the minimum of 1"),
    (("rl", "n"), "8", r"'rl.n' = '8': '8' is not of type 'integer'"),
    (("reward", "bogus"), 1, r"'reward': Additional properties are not allowed .*allowed keys: \['acc_over'"),
    (("data", "train_fraction"), 1.5, r"'data.train_fraction' = 1.5"),
    (("games", "envs"), ["sokoban", "chess"], r"'games.envs.1' = 'chess' is not allowed; allowed values: \['sokoban', 'frozenlake'\]"),
    (("games", "render"), "ascii", r"'games.render' = 'ascii' is not allowed"),
    (("games", "sft", "merge_checkpoint"), "worst", r"'games.sft.merge_checkpoint' = 'worst'"),
    (("games", "sft", "n_samples"), 5, r"'games.sft': Additional properties are not allowed"),
    (("games", "frozenlake", "p_frozen"), 0, r"'games.frozenlake.p_frozen' = 0"),
    (("games", "sft_files"), {"sokoban": {"train": "a.csv", "val": "b.jsonl"}}, r"'games.sft_files.sokoban.train' = 'a.csv'"),
    (("med", "raw_files"), {"train": "a.csv", "val": "b.jsonl", "test": "c.jsonl"}, r"'med.raw_files.train' = 'a.csv'"),
    (("med", "run_name"), "my run", r"'med.run_name' = 'my run': 'my run' does not match"),
    (("med", "seeds"), [1, 1], r"'med.seeds' = \[1, 1\]: \[1, 1\] has non-unique elements"),
    (("med", "with_thinking"), [], r"'med.with_thinking' = \[\]: \[\] should be non-empty"),
    (("med", "world", "categories"), ["cardiology"], r"'med.world.categories.0' = 'cardiology' is not allowed"),
    (("med", "world", "dropout"), 1, r"'med.world.dropout' = 1"),
    (("med", "eval", "patient_threshold"), 0, r"'med.eval.patient_threshold' = 0"),
    (("med", "sft", "lr"), -1, r"'med.sft.lr' = -1"),
    (("sft", "overlong"), "cut", r"'sft.overlong' = 'cut' is not allowed; allowed values: \['error', 'drop'\]"),
    (("games", "sft", "overlong"), "right", r"'games.sft.overlong' = 'right' is not allowed"),
    (("games", "history"), 0, r"'games.history' = 0"),
    (("games", "history"), "last", r"'games.history' = 'last'"),
    # JSON Schema counts 3.0 as an integer; range(3.0) stopped the level job with a raw TypeError
    (("games", "counts", "train"), 3.0, r"'games.counts.train' = 3.0: 3.0 is not of type 'integer'"),
    (("rl", "n"), 8.0, r"'rl.n' = 8.0: 8.0 is not of type 'integer'"),
    # keys that did nothing: refused, not silently ignored (rl.init: each run's init model is in its name)
    (("games", "sft", "with_thinking"), True, r"'games.sft.with_thinking' has no effect: the games' targets follow"),
    (("med", "sft", "seed"), 2, r"'med.sft.seed' has no effect: the doctors' seeds are 'med.seeds'"),
    (("med", "sft", "with_thinking"), True, r"'med.sft.with_thinking' has no effect"),
    (("med", "rl", "seed"), 2, r"'med.rl.seed' has no effect"),
    (("med", "tiny", "cell_tokens"), True, r"'med.tiny.cell_tokens' has no effect"),
    (("rl", "init"), "base", r"'rl': Additional properties are not allowed \('init' was unexpected\)"),
])
def test_bad_values_give_one_line(cfg, path, value, pattern):
    bad = copy.deepcopy(cfg)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=pattern) as info:
        check_config(bad, SCHEMA)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["sft_coef", "step_adv_gamma", "val_every"])
def test_an_rl_key_the_tasks_fall_back_on_is_required(cfg, key):
    """The tasks' rl sections fall back on rl:, and the trainer reads these: a missing one was
    a KeyError in a rule file (sft_coef) or in the first GiGPO update (step_adv_gamma)."""
    bad = copy.deepcopy(cfg)
    del bad["rl"][key]
    with pytest.raises(ConfigError, match=rf"'rl': '{key}' is a required property"):
        check_config(bad, SCHEMA)


def test_cross_key_rules(cfg):
    bad = copy.deepcopy(cfg)
    bad["rl"]["ppo_mini_batch"] = 3
    with pytest.raises(ConfigError, match="rl.train_batch"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["games"]["sft"].update(train_batch=24, micro_batch=16)
    with pytest.raises(ConfigError, match=r"'games.sft.train_batch' = 24 must be a multiple of 'games.sft.micro_batch' = 16"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["games"].update(envs=["sokoban"], sft_files={"frozenlake": {"train": "a.jsonl", "val": "b.jsonl"}})
    with pytest.raises(ConfigError, match=r"'games.sft_files' names \['frozenlake'\]"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["med"]["sft"].update(train_batch=20, micro_batch=16)
    with pytest.raises(ConfigError, match=r"'med.sft.train_batch' = 20 must be a multiple of 'med.sft.micro_batch' = 16"):
        check_config(bad, SCHEMA)
    # values a job would stop on only after SFT and merge have run: refused before any job
    bad = copy.deepcopy(cfg)
    bad["games"]["envs"] = ["sokoban"]  # the RL-init ablation's default envs hold frozenlake
    bad["games"]["ablation_rl_init"]["envs"] = ["frozenlake", "sokoban"]
    with pytest.raises(ConfigError, match=r"'games.ablation_rl_init.envs' names \['frozenlake'\], which are not in"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["games"]["rl"]["levels"] = 4
    with pytest.raises(ConfigError, match=r"'games.rl.train_batch' = 8 \(unset: 'rl.train_batch'\) is larger than the 4 "):
        check_config(bad, SCHEMA)
    for prefix in ("", "games.", "med."):
        bad = copy.deepcopy(cfg)
        section = bad[prefix[:-1]]["sft"] if prefix else bad["sft"]
        epochs = section.get("epochs", bad["sft"]["epochs"])
        section["merge_checkpoint"] = epochs + 1
        with pytest.raises(ConfigError, match=rf"'{prefix}sft.merge_checkpoint' = {epochs + 1}: the run trains {epochs} "):
            check_config(bad, SCHEMA)
        section["merge_checkpoint"] = epochs
        check_config(bad, SCHEMA)


def test_snakemake_stops_before_any_job(tmp_path, cfg):
    bad = copy.deepcopy(cfg)
    bad["reward"]["acc_over"] = "everything"
    cfgfile = tmp_path / "bad.yaml"
    cfgfile.write_text(yaml.safe_dump(bad))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1", "results/ablation_beta.csv",
         "--configfile", str(cfgfile)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert ("Invalid config: config key 'reward.acc_over' = 'everything' is not allowed; "
            "allowed values: ['all', 'non_proactive']") in out
    assert "Job stats" not in out


def test_the_paper_is_refused_on_your_own_medical_data(tmp_path, cfg):
    """The paper describes the embedded clinic (its scripted and random doctors, which leave the
    tables on MTMedDialog rows): with med.raw_files set it is refused before any job runs, as on
    your own QA data (before, it was built and described doctors its tables did not hold)."""
    own = copy.deepcopy(cfg)
    own["med"]["raw_files"] = {}
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.jsonl").write_text("")
        own["med"]["raw_files"][split] = str(tmp_path / f"{split}.jsonl")
    cfgfile = tmp_path / "own.yaml"
    cfgfile.write_text(yaml.safe_dump(own))
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1", "paper/main.pdf",
                           "--configfile", str(cfgfile)], cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "paper/main.pdf describes the embedded clinic" in out, out[-2000:]
    assert "Job stats" not in out


def test_own_game_rows_refuse_the_paper_and_the_rl_init_ablation_of_that_env(tmp_path, cfg):
    """With games.sft_files for an env, the paper (it describes the solver's rows) and that
    env's RL-init ablation (its main row would have trained on other data than its L<N> rows,
    which take the first N generated levels) are refused before any job runs; the ablation of
    the other env still plans, and an empty env list builds none."""
    own = copy.deepcopy(cfg)
    for split in ("train", "val"):
        (tmp_path / f"fl_{split}.jsonl").write_text("")
    own["games"]["sft_files"] = {"frozenlake": {s: str(tmp_path / f"fl_{s}.jsonl") for s in ("train", "val")}}

    def dry(target, envs):
        own["games"]["ablation_rl_init"]["envs"] = envs
        cfgfile = tmp_path / "own.yaml"
        cfgfile.write_text(yaml.safe_dump(own))
        proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1", target,
                               "--configfile", str(cfgfile)], cwd=REPO, capture_output=True, text=True)
        return proc.returncode, proc.stdout + proc.stderr

    rc, out = dry("paper/main.pdf", ["frozenlake", "sokoban"])
    assert rc != 0 and "paper/main.pdf describes the games' SFT rows" in out and "Job stats" not in out, out[-2000:]
    rc, out = dry("results/games/ablation_rl_init.csv", ["frozenlake", "sokoban"])
    assert rc != 0 and "games.sft_files gives your own SFT rows for frozenlake" in out, out[-2000:]
    assert "Job stats" not in out
    rc, out = dry("results/games/ablation_rl_init.csv", ["sokoban"])
    assert rc == 0 and "game_ablation_rl_init" in out and "game_rl_levels" in out, out[-2000:]
    rc, out = dry("games_ablation", [])
    assert rc == 0 and "game_ablation_rl_init" not in out, out[-2000:]


def test_sizes_the_data_can_hold(cfg, tmp_path, monkeypatch):
    """Samples + validation rows against the SFT source, one RL batch against the train split:
    the synthetic world's sizes, or the rows of your files (jsonl lines, parquet rows)."""
    bad = copy.deepcopy(cfg)
    bad["sft"]["n_samples"] = 120  # the world has 140 SFT rows; val_size 32
    with pytest.raises(ConfigError, match=r"'sft.n_samples' = 120 \+ 'sft.val_size' = 32 are more than the synthetic "
                                          r"world's 140 SFT rows \(world.n_sft_rows\)"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["ablations"]["sft_samples"] = [25, 50, 200]
    with pytest.raises(ConfigError, match=r"'ablations.sft_samples' = 200 \+ 'sft.val_size' = 32"):
        check_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["rl"].update(train_batch=256, ppo_mini_batch=8)
    with pytest.raises(ConfigError, match=r"'rl.train_batch' = 256 is larger than the RL train split: 173 of the "
                                          r"synthetic world's 385 RL rows"):
        check_config(bad, SCHEMA)
    # your files: counted when they exist (jsonl: non-blank lines; parquet: rows)
    from sft2rl.io import write_parquet

    monkeypatch.chdir(tmp_path)
    row = {"id": 0, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(dict(row, id=i)) for i in range(60)) + "\n\n")
    write_parquet(tmp_path / "rl.parquet", [dict(row, id=i) for i in range(30)])
    user = copy.deepcopy(cfg)
    user["data"].update(synthetic_world=False, raw_sft="sft.jsonl", raw_rl="rl.parquet")
    user["ablations"]["sft_samples"] = [25]
    user["sft"]["val_size"] = 30
    with pytest.raises(ConfigError, match=r"'sft.n_samples' = 50 \+ 'sft.val_size' = 30 are more than the 60 SFT "
                                          r"rows \(sft.jsonl\)"):
        check_config(user, SCHEMA)
    user["sft"]["val_size"] = 10
    with pytest.raises(ConfigError, match=r"'rl.train_batch' = 8 is larger than the RL train split: 4 of the 30 RL "
                                          r"rows \(rl.parquet\) with 'data.train_fraction' = 0.15"):
        user["data"]["train_fraction"] = 0.15
        check_config(user, SCHEMA)
    user["data"]["train_fraction"] = 0.45
    check_config(user, SCHEMA)
    user["data"]["raw_rl"] = "missing.jsonl"  # not there yet: the data rule reports it
    check_config(user, SCHEMA)


@pytest.mark.parametrize("base,ok", [
    ("tiny", True), ("Qwen/Qwen2.5-0.5B-Instruct", True), ("meta-llama/Llama-3.1-8B", True),
    ("Qwen2.5-0.5B", False), ("/no/such/model", False), ("models/x y", False), ("a/b/c", False), ("dir", False),
])
def test_model_base_is_tiny_a_model_directory_or_a_hub_id(cfg, tmp_path, monkeypatch, base, ok):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()  # a directory without config.json
    c = copy.deepcopy(cfg)
    c["model"]["base"] = base
    if ok:
        check_config(c, SCHEMA)
    else:
        with pytest.raises(ConfigError, match=rf"config key 'model.base' = '{re.escape(base)}' is "):
            check_config(c, SCHEMA)
    (tmp_path / "dir" / "config.json").write_text("{}")
    c["model"]["base"] = str(tmp_path / "dir")
    check_config(c, SCHEMA)


@pytest.mark.parametrize("content,pattern", [
    ("{not json", r"is not valid JSON"), ("[]", r"must hold a JSON object, got list"),
    ('{"max_position_embeddings": "128"}', r"max_position_embeddings must be an integer, got '128'"),
])
def test_a_local_model_s_broken_config_json_is_refused_at_dag_time(cfg, tmp_path, content, pattern):
    """A local base's (or in-process patient model's) config.json that is not a JSON object,
    or whose max_position_embeddings is not an integer: one ConfigError naming the key (a raw
    AttributeError, or accepted and the length checks skipped, before)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(content)
    c = copy.deepcopy(cfg)
    c["model"]["base"] = str(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"config key 'model.base': .*config.json" + pattern[:0]) as err:
        check_config(c, SCHEMA)
    assert re.search(pattern, str(err.value))
    c = copy.deepcopy(cfg)
    c["med"]["patient"] = {"model": str(tmp_path / "m")}
    with pytest.raises(ConfigError, match=r"config key 'med.patient.model'"):
        check_config(c, SCHEMA)
    c["med"]["patient"] = {"model": str(tmp_path / "none")}  # neither a directory nor a hub id
    with pytest.raises(ConfigError, match=r"'med.patient.model' = .* is neither a local directory nor a hub id"):
        check_config(c, SCHEMA)
    c["med"]["patient"] = {"endpoint": "http://127.0.0.1:8000/v1", "model": "patient"}  # a served name
    check_config(c, SCHEMA)


def test_a_beta_its_run_name_cannot_hold_is_refused(cfg):
    """An RL run trains at the beta its name states (six significant digits): 0.3 and
    0.3000001 were two table rows of one run, and 0.1234567 trained at 0.123457."""
    for betas, pattern in (([0.3, 0.3000001], r"'ablations.beta' = 0.3000001: a run name holds beta0.3"),
                           ([0.1234567], r"beta0.123457, and the run would train at that")):
        c = copy.deepcopy(cfg)
        c["ablations"]["beta"] = betas
        with pytest.raises(ConfigError, match=pattern):
            check_config(c, SCHEMA)


def test_ablation_lists_with_duplicates(cfg):
    for key, value in (("beta", [0.3, 0.3]), ("seeds", [1, 2, 1]), ("sft_samples", [25, 25])):
        c = copy.deepcopy(cfg)
        c["ablations"][key] = value
        with pytest.raises(ConfigError, match=rf"'ablations.{key}' = .* has non-unique elements"):
            check_config(c, SCHEMA)


def test_lengths_fit_the_base_positions(cfg, tmp_path):
    """At DAG time, each task's sft.max_length (and the QA GRPO prompt + response) against the
    positions of the base it trains: a tiny base's (model.tiny, then the task's tiny: overrides)
    or a local model directory's config.json."""
    def fails(c, pattern):
        with pytest.raises(ConfigError, match=pattern) as info:
            check_config(c, SCHEMA)
        assert "\n" not in str(info.value)

    bad = copy.deepcopy(cfg)
    bad["sft"]["max_length"] = 1024
    fails(bad, r"^config key 'sft.max_length' = 1024 must not exceed 'model.tiny.max_position_embeddings' = 512, "
               r"the positions of the tiny base$")
    bad = copy.deepcopy(cfg)
    bad["games"]["tiny"]["max_position_embeddings"] = 1024  # games.sft.max_length is 2048
    fails(bad, r"^config key 'games.sft.max_length' = 2048 must not exceed 'games.tiny.max_position_embeddings' = "
               r"1024, the positions of the games' tiny base \(unset keys come from 'sft'\)$")
    bad = copy.deepcopy(cfg)
    bad["med"]["sft"]["max_length"] = bad["med"]["tiny"]["max_position_embeddings"] + 1
    fails(bad, r"^config key 'med.sft.max_length' = \d+ must not exceed 'med.tiny.max_position_embeddings' = \d+, "
               r"the positions of the medical task's tiny base")
    bad = copy.deepcopy(cfg)
    del bad["med"]["tiny"]["max_position_embeddings"]  # then model.tiny's 512 count
    bad["med"]["pretrain"]["seq_len"] = 256
    bad["med"]["sft"]["max_length"] = 600
    fails(bad, r"'med.sft.max_length' = 600 must not exceed 'model.tiny.max_position_embeddings' = 512")
    bad = copy.deepcopy(cfg)
    bad["games"]["pretrain"]["seq_len"] = 4096  # the window the base is pretrained on, past its positions
    fails(bad, r"^config key 'games.pretrain.seq_len' = 4096 must not exceed 'games.tiny.max_position_embeddings' = "
               r"2048, the positions of the games' tiny base$")
    bad = copy.deepcopy(cfg)
    bad["model"]["pretrain"]["seq_len"] = 1024
    fails(bad, r"^config key 'model.pretrain.seq_len' = 1024 must not exceed 'model.tiny.max_position_embeddings' = "
               r"512, the positions of the tiny base$")
    bad = copy.deepcopy(cfg)
    bad["rl"].update(max_prompt_length=480, max_response_length=64)
    fails(bad, r"'rl.max_prompt_length' \+ 'rl.max_response_length' = 480 \+ 64 must not exceed "
               r"'model.tiny.max_position_embeddings' = 512")
    bad = copy.deepcopy(cfg)
    bad["eval"]["max_new_tokens"] = 400  # evaluation answers the same prompts
    fails(bad, r"'rl.max_prompt_length' \+ 'eval.max_new_tokens' = 128 \+ 400 must not exceed "
               r"'model.tiny.max_position_embeddings' = 512")
    # a local model directory: its config.json's positions (a hub id is not looked up)
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    c = copy.deepcopy(cfg)
    c["model"]["base"] = str(local)
    fails(c, rf"'games.sft.max_length' = 2048 must not exceed max_position_embeddings = 1024 of "
             rf"{re.escape(str(local))}/config.json")
    c["games"]["sft"]["max_length"] = 1024
    check_config(c, SCHEMA)
    c["model"]["base"] = "Qwen/Qwen2.5-0.5B-Instruct"
    c["games"]["sft"]["max_length"] = 100_000
    check_config(c, SCHEMA)
    # verl's SFT dataset cannot leave rows out: drop is refused for it
    c = copy.deepcopy(cfg)
    c["games"]["sft"]["overlong"] = "drop"
    check_config(c, SCHEMA)
    c["backend"] = "verl"
    fails(c, r"'games.sft.overlong' = 'drop': backend verl cannot leave rows out")
    # the medical no-signal control keeps no signal only without step advantages (med.rl over rl);
    # on verl it is not trained, so nothing to refuse there
    c = copy.deepcopy(cfg)
    c["med"]["rl"]["step_adv_weight"] = 0.0
    check_config(c, SCHEMA)
    c["med"]["rl"]["step_adv_weight"] = 1.0
    fails(c, r"'med.rl.no_signal_control' = true with step advantages \(step_adv_weight = 1.0")
    c["backend"] = "verl"
    check_config(c, SCHEMA)
    c["backend"] = "local"
    c["med"]["rl"]["no_signal_control"] = False
    check_config(c, SCHEMA)
    # step advantages: never on QA's one-turn RL; never beside the no-signal control (each task's
    # rl: over rl:), refused before any job starts rather than by the trainer
    c = copy.deepcopy(cfg)
    c["rl"]["step_adv_weight"] = 0.5
    fails(c, r"'rl.step_adv_weight' = 0.5: QA's RL is one turn")
    c = copy.deepcopy(cfg)
    assert c["games"]["rl"]["step_adv_weight"] > 0
    c["rl"]["shuffle_advantages"] = True
    fails(c, r"'games.rl.shuffle_advantages' = true \(unset: 'rl.shuffle_advantages'\) with "
             r"'games.rl.step_adv_weight' = 1.0")
    c["games"]["rl"]["step_adv_weight"] = 0.0
    check_config(c, SCHEMA)
    c["med"]["rl"].update(shuffle_advantages=True, step_adv_weight=0.5, no_signal_control=False)
    fails(c, r"'med.rl.shuffle_advantages' = true .* with 'med.rl.step_adv_weight' = 0.5")
