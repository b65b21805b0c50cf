# `make test`: create .venv, install the package with its dev extra (CPU torch pinned), run the tests.
# `make run`:  the same install, then the default experiment.
# `make lint`: ruff (lint rules in pyproject.toml) and mypy (the type check of src/sde_diffusion).
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip
PY      = $(VENV)/bin/python

.PHONY: install test test-fast lint run docs

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The tests and the default job are bound by small-tensor overhead: one thread per process avoids
# oversubscribing the cores (two torch threads on a busy 2-core machine ran the default job 50x slower).
# The tests spread over one worker per core (pytest-xdist), at most TEST_WORKERS; TEST_WORKERS=0 runs them in
# this process.
TEST_WORKERS ?= 4
PYTEST = OMP_NUM_THREADS=1 $(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n auto --maxprocesses $(TEST_WORKERS) --dist worksteal)

test: install
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

run: install
	OMP_NUM_THREADS=1 $(PY) -m sde_diffusion

# The documentation site (README as the guide, docs/architecture.md, the API reference from the docstrings) in site/;
# every warning is an error. `$(VENV)/bin/mkdocs serve` previews it at http://127.0.0.1:8000.
docs: install
	$(VENV)/bin/mkdocs build --strict --quiet
