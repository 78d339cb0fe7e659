# odeflow — two commands do everything on a fresh machine with only Python:
#   make demo    set up .venv and run the main demo on built-in data
#   make test    set up .venv and run the test suite
# make docs builds the documentation site into site/ (installs the docs extra when missing).
# Override the torch build with e.g. `make test TORCH="torch==2.5.1"` (the default
# pins the CPU build that installs from local disk here; a bare `torch` would pull CUDA).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
EXTRAS ?= test,viz,epi
PYTEST_ARGS ?=
STAMP  := $(VENV)/.odeflow-installed
DOCTEST := --doctest-modules src tests --ignore=src/odeflow/cli/__main__.py --ignore=src/odeflow/__main__.py

.PHONY: setup demo test test-all test-oldest bench bench-setup docs lint clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(PY) -m odeflow.cli demo --out demo-output --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2 $(DOCTEST) $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 $(DOCTEST) $(PYTEST_ARGS)

# The whole suite with the oldest versions pyproject allows (constraints/oldest.txt), in its
# own .venv-oldest. Not part of CI: PyPI's torch 2.4.1 is a CUDA build of about 5 GB.
OLDEST_PYTHON ?= python3.10
test-oldest:
	PIP_CONSTRAINT=$(CURDIR)/constraints/oldest.txt $(MAKE) test-all VENV=.venv-oldest \
		PYTHON=$(OLDEST_PYTHON) TORCH=torch==2.4.1

$(VENV)/.odeflow-bench: $(STAMP)
	$(PY) -m pip install -q "$(TORCH)" torchdiffeq torchode torchsde hessquik zuko pyhysco h5py
	@touch $@

bench-setup: $(VENV)/.odeflow-bench

bench: $(VENV)/.odeflow-bench
	@mkdir -p bench-results
	@for b in benchmarks/*_peers.py; do \
	  echo "== $$b"; \
	  $(PY) $$b --quick --json bench-results/$$(basename $$b .py).json || exit 1; \
	done

$(VENV)/.odeflow-docs: $(STAMP)
	$(PY) -m pip install -q -e ".[$(EXTRAS),docs]"
	@touch $@

# --strict: a broken link, a missing reference or a docstring griffe cannot read fails the
# build. The CLI reference and the benchmark pages are generated at build time
# (docs/hooks/); nothing is downloaded (theme.font: false).
docs: $(VENV)/.odeflow-docs
	NO_MKDOCS_2_WARNING=1 MPLBACKEND=Agg $(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(PY) -m pip install -q ruff
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info bench-results demo-output site
