"""Content digests, the code a rule runs, and the one-line errors of the workflow scripts."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO
from sft2rl.fingerprint import changed_parts, module_closure, run_key, tree_digest


def test_tree_digest_is_content_not_path(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "config.json").write_text('{"x": 1}')
    (a / "sub" / "w.bin").write_bytes(b"\x00\x01")
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert tree_digest(a) == tree_digest(b)
    (b / ".w.bin.tmp").write_bytes(b"partial")  # a temporary file of an atomic write is not content
    (b / "merge_report.json").write_text("{}")  # nor is our own report
    assert tree_digest(a) == tree_digest(b)
    (b / "sub" / "w.bin").write_bytes(b"\x00\x02")
    assert tree_digest(a) != tree_digest(b)
    (b / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (b / "sub" / "w.bin").rename(b / "sub" / "v.bin")  # same bytes under another name: other content
    assert tree_digest(a) != tree_digest(b)
    assert tree_digest("Qwen/Qwen2.5-0.5B") != tree_digest("Qwen/Qwen2.5-1.5B")  # hub ids: by name


def test_run_key_names_the_changed_part(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w").write_text("1")
    (tmp_path / "d").write_text("rows")
    k1 = run_key(models={"init": tmp_path / "m"}, data={"train": tmp_path / "d"}, modules=["tasks.qa.reward"], params={"a": 1})
    k2 = run_key(models={"init": tmp_path / "m"}, data={"train": tmp_path / "d"}, modules=["tasks.qa.reward"], params={"a": 2})
    assert k1["key"] != k2["key"] and changed_parts(k1, k2) == ["params"]
    (tmp_path / "m" / "w").write_text("2")
    k3 = run_key(models={"init": tmp_path / "m"}, data={"train": tmp_path / "d"}, modules=["tasks.qa.reward"], params={"a": 1})
    assert changed_parts(k1, k3) == ["model:init"]


@pytest.mark.parametrize("script, must, must_not", [
    ("grpo", {"grpo", "tasks.qa.rl", "tasks.qa.reward", "generation", "model", "io", "merge", "resume"},
     {"plots", "tasks.qa.tables"}),
    ("evaluate", {"tasks.qa.evaluate", "tasks.qa.reward", "generation", "model", "io"}, {"grpo", "plots"}),
    ("sft", {"sft", "model", "rows"}, {"tasks.qa", "tasks.qa.runs"}),  # shared by every task
    ("merge", {"merge", "sft"}, {"plots"}),  # the checkpoint choice lives in sft.py
    ("verl_export", {"verl_export", "verl_launch", "tblog", "merge"}, {"plots"}),
    ("figures", {"plots", "tblog", "tasks.qa.baselines", "tasks.qa.reward"}, {"model", "grpo", "tasks.qa.evaluate"}),
    # subpackages: a task's modules, the packages on their way, and what they import in functions
    ("game_play", {"tasks", "tasks.games", "tasks.games.play", "tasks.games.sokoban", "tasks.games.frozenlake",
                   "tasks.games.data", "tasks.games.prompts", "tasks.games.solver", "generation", "model", "io"},
     {"grpo", "plots", "tasks.qa.reward"}),
    ("game_data", {"tasks.games.data", "tasks.games.sokoban", "tasks.games.frozenlake", "io", "rows"},
     {"tasks.games.play", "model", "generation", "tasks.qa"}),
    ("game_table", {"tasks.games.table", "plots"}, {"tasks.games.sokoban", "model"}),
    # the RL curves' random policy plays the envs (the table only reads what it wrote)
    ("game_rl_random", {"tasks.games.play", "tasks.games.sokoban", "tasks.games.frozenlake", "tasks.games.data"},
     {"grpo", "tasks.games.rl"}),
])
def test_code_inputs_follow_imports(script, must, must_not):
    mods = set(module_closure(scripts=[REPO / "workflow" / "scripts" / f"{script}.py"]))
    assert must <= mods, must - mods
    assert not (must_not & mods), must_not & mods


def test_module_files_of_subpackages():
    from sft2rl.fingerprint import module_file

    src = REPO / "src" / "sft2rl"
    assert module_file("tasks.games.sokoban") == src / "tasks" / "games" / "sokoban.py"
    assert module_file("tasks.games") == src / "tasks" / "games" / "__init__.py"
    assert module_file("__init__") == src / "__init__.py"
    with pytest.raises(ValueError, match="no module sft2rl.tasks.chess"):
        module_closure(["tasks.chess"])


@pytest.mark.parametrize("script", ["world", "sft_data", "rl_data", "ablation_table", "figures", "paper", "game_data",
                                    "game_table"])
def test_light_scripts_do_not_import_torch(script):
    mods = [m for m in module_closure(scripts=[REPO / "workflow" / "scripts" / f"{script}.py"]) if m != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module('sft2rl.' + m)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"


def test_script_errors_turns_value_error_into_one_line(tmp_path, capsys):
    from sft2rl.errors import RunError
    from sft2rl.logutil import script_errors

    smk = SimpleNamespace(log=[str(tmp_path / "job.log")])
    for err in (ValueError("rl.train_batch = 9 is larger\nthan the train set"), RunError("ran 23 of 40 steps")):
        with pytest.raises(SystemExit) as info:
            with script_errors(smk):
                raise err
        assert info.value.code == 1
        lines = [ln for ln in Path(smk.log[0]).read_text().splitlines() if ln.strip()]
        assert len(lines) == 1 and "ERROR:" in lines[0] and "Traceback" not in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        with script_errors(smk):
            1 / 0  # noqa: B018
