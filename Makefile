# Two commands on a fresh machine: `make reproduce` and `make test`. Both create/reuse .venv and install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
PROFILE ?= smoke
PAPERS ?= all

.PHONY: install reproduce test bench lock clean-venv

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

# nbval executes every notebook with its defaults (the esvit smoke chain) in a throw-away run directory, so a test
# run never touches runs/ or results/.
test: install
	$(BIN)/python -m pytest tests
	HISTOKIT_RUNS_DIR=$$(mktemp -d) $(BIN)/python -m pytest --nbval-lax notebooks -p no:cacheprovider

bench: install
	$(BIN)/histokit bench

# Regenerate the full lock from pyproject's pins (needs network to PyPI).
lock:
	$(UV) pip compile --python-version 3.11 --extra dev pyproject.toml -o requirements.lock

clean-venv:
	rm -rf $(VENV)
