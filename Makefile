# MaskTFX: `make demo` runs the whole pipeline on built-in data; `make test` runs the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=
# Two pytest workers: the suite is mostly single-threaded, so they fill both cores. Whole files
# go to a worker (a module's fixtures, such as test_reports' two runs, are made once), the
# files of slow tests first (tests/conftest.py), so the long pipeline runs start at once.
# (xdist's loadgroup cannot keep tests together under pytest 9: its marks are ignored.)
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint docs clean

setup: $(STAMP)

# Re-run setup whenever the pinned dependencies change.
$(STAMP): pyproject.toml constraints/tfx-1.16.txt constraints/tfx-1.21.txt scripts/setup-venv.sh
	VENV=$(VENV) ./scripts/setup-venv.sh

demo: $(STAMP)
	$(PY) -m masktfx.demo --workdir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	VENV=$(VENV) ./scripts/lint-imports.sh

# docs/configuration.md from the config fields' help (tests/test_docs.py checks it is current)
docs: $(STAMP)
	$(PY) -m masktfx.cli.config_doc docs/configuration.md

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
