# medimg-lab: every target installs what it needs first (a fresh clone needs no manual step).
# GPU users: `make install TORCH_CONSTRAINTS=constraints/none.txt` takes the newest (CUDA) torch.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.installed
# Data root, as conf/paths/default.yaml reads it: raw downloads in $(MEDIMG_DATA)/raw/<dataset>, each project's
# cache in $(MEDIMG_DATA)/cache/<project>. Exported, so that every command a target runs resolves the same paths.
REPO := $(patsubst %/,%,$(dir $(abspath $(firstword $(MAKEFILE_LIST)))))
MEDIMG_DATA := $(or $(MEDIMG_DATA),$(REPO)/data)
export MEDIMG_DATA
export HYDRA_FULL_ERROR := 1
export PYTHONWARNINGS := ignore::DeprecationWarning
# glibc keeps freed memory for reuse instead of mapping every large tensor afresh (common/runtime.py: the same
# settings applied at run time by every project command; a SPiN scan fp32 went from 61 s to 38 s).
export MALLOC_MMAP_MAX_ := 0
export MALLOC_TRIM_THRESHOLD_ := 1099511627776

.PHONY: install test test-slow test-all demo lint bench bench-speed tensorboard clean model-card

install: $(STAMP)

$(STAMP): pyproject.toml $(TORCH_CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip -c $(TORCH_CONSTRAINTS)
	$(PY) -m pip install --quiet -c $(TORCH_CONSTRAINTS) -e '.[dev,real-data,cluster]'
	@touch $(STAMP)

# `make test`: everything but the cells marked slow (DDP and cluster runs, subprocess contract checks);
# `make test-slow` runs those; CI (.ci/run) runs both.
test: install
	$(PY) -m pytest -q --timeout=900 -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q --timeout=900 -m slow tests

test-all: test test-slow

lint: install
	$(VENV)/bin/ruff check common projects tests benchmarks
	$(VENV)/bin/mypy common

demo: install
	$(PY) -m common.demo

bench: install
	$(PY) -m benchmarks.run_all

# Speed rows only (efficiency against the fp32 matmul, the reference's row, the CPU's bf16/AMX flags), ~35 min.
bench-speed: install
	$(PY) -m benchmarks.run_all --speed

model-card: install
	$(PY) -m common.model_card

# TensorBoard on this machine only (127.0.0.1): a shared node's other users cannot reach it. To serve on every
# interface, ask for it: `make tensorboard TB_BIND=--bind_all` (or TB_BIND="--host 0.0.0.0"); TB_PORT, TB_LOGDIR.
TB_HOST ?= 127.0.0.1
TB_BIND ?= --host $(TB_HOST)
TB_PORT ?= 6006
TB_LOGDIR ?= outputs/
tensorboard: install
	$(VENV)/bin/tensorboard --logdir $(TB_LOGDIR) $(TB_BIND) --port $(TB_PORT)

clean:
	rm -rf outputs .pytest_cache

# Each project adds its own targets (eval-saint-x4, eval-spin, ...).
-include projects/*/project.mk
