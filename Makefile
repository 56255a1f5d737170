# Two commands on a fresh machine: `make reproduce` and `make test`. Both create/reuse .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
PROFILE ?= smoke
PAPERS ?= all

.PHONY: install reproduce test test-random bench lock clean-venv

# The stamp is rebuilt when the pins change, so `make` reuses a ready environment and installs nothing twice.
$(VENV)/.installed: pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.8
	@# uv reads no pip.conf, so the machine's local CPU-only torch wheel cannot slip in beside PyPI's torchvision.
	$(UV) pip install --python $(BIN)/python -r requirements.lock
	$(UV) pip install --python $(BIN)/python --no-deps -e .
	$(BIN)/python -c "import torch, torchvision, timm, faiss; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| timm', timm.__version__, '| faiss', faiss.__version__)"
	@touch $@

install: $(VENV)/.installed

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

bench: install
	$(BIN)/histokit bench

# Regenerate the full lock from pyproject's pins (needs network to PyPI).
lock:
	$(UV) pip compile --python-version 3.11 --extra dev pyproject.toml -o requirements.lock

clean-venv:
	rm -rf $(VENV)
