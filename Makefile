# Two commands on a fresh Linux machine with Python >= 3.10:
#   make quickstart   # create .venv, install, run the offline RLHF loop
#   make test         # same set-up, then the whole test suite (with a throw-away PostgreSQL server)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch: keep an existing install (e.g. Colab's); otherwise pin the CPU build our machines carry
TORCH_PIN ?= torch==2.13.0
# test processes (pytest-xdist, whole modules each, longest first: tests/conftest.py); each gets its share of the
# cores. 2 suits a 2-core CI machine; 0 = the suite in this process
TEST_WORKERS ?= 2

.PHONY: install browser quickstart test lint clean-runs

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium for the real-browser test (Playwright drives it; never `playwright install`)
browser:
	@command -v chromium >/dev/null 2>&1 || bash scripts/install_chromium.sh

quickstart: $(STAMP)
	$(PY) -m rlhf_widgets quickstart

# the PostgreSQL tests get a throw-away server on loopback (installed from Debian's packages if missing),
# stopped when the suite ends; without one they are skipped and say why
test: $(STAMP) browser
	bash scripts/postgres.sh run $(PY) -m pytest -q -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(PY) -m ruff check rlhf_widgets tests benchmarks

clean-runs:
	rm -rf runs
