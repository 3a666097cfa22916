# sft2rl: two commands for a new user on a fresh machine
#   make run    setup, then the headline pipeline (results/ablation_beta.csv)
#   make test   setup, then the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
CORES ?= all
export PYTHONHASHSEED := 0

.PHONY: setup run test test-fast test-slurm bench gpu-wheels figures paper samples lint clean
setup: $(STAMP)

# torch first, a CPU build, so no resolver ever pulls a CUDA one: `pip install torch==2.13.0`
# finds the CPU wheel where pip is pointed at one (PIP_FIND_LINKS, as on our CI machines);
# elsewhere give PyTorch's CPU index: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Then everything else, pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -c constraints.txt -e '.[verl,dev]'
	$(PY) -c "import torch, transformers, peft, snakemake, verl; print('setup ok: torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)

run: setup
	$(BIN)/snakemake --cores $(CORES) results/ablation_beta.csv

test: setup
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not integration and not slurm"

# The SLURM integration test needs the local one-node cluster (installs slurm-wlm via apt).
test-slurm: setup
	tests/slurm/cluster.sh up
	CI=1 $(BIN)/pytest -q tests/test_slurm.py

# The bench/ suite (docs/performance.md): the headline here first (its SFT model and RL data
# are the benches' inputs), then rollout, GRPO step (vs TRL: the bench extra), the games'
# multi-turn rollout (after the games target), pretraining, and the headline from a fresh
# clone with snakemake -n after it. Results: bench/results/.
bench: setup
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/snakemake --cores $(CORES) results/ablation_beta.csv
	$(PY) bench/rollout.py
	$(PY) bench/grpo_step.py
	$(BIN)/snakemake --cores $(CORES) games
	$(PY) bench/games_rollout.py
	$(PY) bench/pretrain.py
	$(PY) bench/workflow.py --headline

# Wheels for the GPU check (bench/gpu_check.py) on a device machine without a registry: carry .whl/.
gpu-wheels: setup
	bench/gpu_wheels.sh

figures: setup
	$(BIN)/snakemake --cores $(CORES) figures

paper: setup
	$(BIN)/snakemake --cores $(CORES) paper/main.pdf

samples: setup
	$(BIN)/snakemake --cores $(CORES) samples

# snakemake --lint, every finding; `make test` runs it too (tests/test_lint.py, which fails on any
# finding).
lint: setup
	$(BIN)/snakemake --lint

clean:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf data/processed .snakemake
