"""Config validation at DAG time: one line naming the key and the allowed values."""
from __future__ import annotations

import copy
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
    bad = copy.deepcopy(cfg)
    bad["med"]["eval"]["max_turns"] = bad["med"]["world"]["max_questions"]
    with pytest.raises(ConfigError, match=r"'med.world.max_questions' = 6 must be smaller than 'med.eval.max_turns' = 6"):
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
