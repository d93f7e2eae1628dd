# The two commands of the README's quick start. Both create (or reuse) .venv and install the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: browser demo lint test test-fast venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/screen.py

# The page tests open rayood's HTML pages in headless Chromium: Debian's package, installed as root or with sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

# ruff's settings are in pyproject.toml; `$(BIN)/ruff format rayood jobs tests benchmarks` fixes the format
lint: $(STAMP)
	$(BIN)/ruff check rayood jobs tests benchmarks
	$(BIN)/ruff format --check rayood jobs tests benchmarks

test: $(STAMP) browser lint
	$(BIN)/python -m pytest --durations=20 tests

test-fast: $(STAMP) browser lint
	$(BIN)/python -m pytest -m "not cluster" tests
