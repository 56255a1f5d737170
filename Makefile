# Two commands on a fresh machine: `make reproduce` and `make test`. Both create/reuse .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
PROFILE ?= smoke
PAPERS ?= all
# CUDA=12: PyTorch's CUDA 12.6 build of the same torch / torchvision, for NVIDIA drivers older than CUDA 13's (r580;
# `histokit doctor` says which the driver supports). Pass it to every make command (or export it).
CUDA ?= 13
TORCH_CUDA12_INDEX ?= https://download.pytorch.org/whl/cu126
LOCK   := $(if $(filter 12,$(CUDA)),requirements-cu12.lock,requirements.lock)
STAMP  := $(VENV)/.installed$(if $(filter 12,$(CUDA)),-cu12,)

.PHONY: install reproduce test test-random speed lock lock-cu12 clean-venv

# The stamp is rebuilt when the pins change, so `make` reuses a ready environment and installs nothing twice.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.8
	@# uv reads no pip.conf, so the machine's local CPU-only torch wheel cannot slip in beside PyPI's torchvision.
	@# CUDA=12: torch + torchvision (and the CUDA 12 wheels they pin) from PyTorch's index only; the lock from PyPI
	@# then keeps them (an installed torch==X+cu126 satisfies its pin without asking an index).
	$(if $(filter 12,$(CUDA)),$(UV) pip install --python $(BIN)/python --compile-bytecode --index-url $(TORCH_CUDA12_INDEX) $$(grep -E '^torch(vision)?==' $(LOCK)))
	@# --compile-bytecode: every package's .pyc made once here, so no later process recompiles torch, timm and the
	@# rest on import (13 s per process on two cores, every time, where PYTHONDONTWRITEBYTECODE is set).
	@# Back from CUDA=12: a plain ==X pin also matches the installed X+cu126 (PEP 440), so reinstall the pair.
	$(UV) pip install --python $(BIN)/python --compile-bytecode -r $(LOCK) $(if $(filter 12,$(CUDA)),,$$(test -f $(VENV)/.installed-cu12 && echo --reinstall-package torch --reinstall-package torchvision))
	@rm -f $(VENV)/.installed $(VENV)/.installed-cu12
	$(UV) pip install --python $(BIN)/python --no-deps -e .
	$(BIN)/python -c "import torch, torchvision, timm, faiss; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| faiss', faiss.__version__)"
	@touch $@

install: $(STAMP)

reproduce: install
	$(BIN)/histokit reproduce $(PAPERS) --profile $(PROFILE)

# The full profile's exact recipe on layout-true mock data, steps and images capped, CPU: proves the full path runs.
MOCK_ROOT ?= runs/mock_data
REHEARSE_FLAGS ?=
rehearse: install
	$(BIN)/histokit data mock all --root $(MOCK_ROOT)
	$(BIN)/histokit reproduce $(PAPERS) --profile full --rehearse --data-root $(MOCK_ROOT) --device cpu $(REHEARSE_FLAGS)

# nbval executes every notebook with its defaults (the esvit smoke chain) in a throw-away run directory, so a test
# run never touches runs/ or results/.
test: install
	$(BIN)/python -m pytest tests
	HISTOKIT_RUNS_DIR=$$(mktemp -d) $(BIN)/python -m pytest --nbval-lax notebooks -p no:cacheprovider

# The same tests in a shuffled order (pytest-randomly, which pyproject's addopts keeps off in `make test`), to catch
# tests that depend on each other. The header prints "Using --randomly-seed=N"; `make test-random SEED=N` replays it.
test-random: install
	$(BIN)/python -m pytest tests -p randomly -p no:cacheprovider $(if $(SEED),--randomly-seed=$(SEED))

# How fast the kit is on this machine -> results/speed/<device>.md + .csv: benchmarks/speed/ (histokit speed runs it
# from this checkout; it is no part of the installed package). SPEED_ARGS=--quick: every section at smoke sizes.
speed: install
	$(BIN)/histokit speed $(SPEED_ARGS)

# Regenerate the full lock from pyproject's pins (needs network to PyPI).
lock:
	$(UV) pip compile --python-version 3.11 --extra dev pyproject.toml -o requirements.lock
	$(BIN)/python tools/derive_cu12_lock.py

# requirements-cu12.lock from requirements.lock (no network: PyTorch's index is out of this project's reach).
lock-cu12:
	$(BIN)/python tools/derive_cu12_lock.py

clean-venv:
	rm -rf $(VENV)
