# The two commands of the README's quick start. Both create (or reuse) .venv and install the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/screen.py

test: $(STAMP)
	$(BIN)/python -m pytest --durations=20 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not cluster" tests
