# erpwatch — the two commands of the README, and the rest of the developer loop.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# What the demo needs (erpwatch and its runtime dependencies) and, on top, what the tests,
# the linters and the benchmarks need (the `dev` extra). Stamps, so each installs once per
# change of the project files.
RUNTIME = $(VENV)/.installed-runtime
DEV     = $(VENV)/.installed-dev
PROJECT = pyproject.toml healthkit/pyproject.toml

.PHONY: demo test install install-runtime lint typecheck check bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): $(PROJECT) | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(DEV): $(PROJECT) | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@ $(RUNTIME)

install-runtime: $(RUNTIME)

## Everything: erpwatch, the test and lint tools (what .ci/run and `make test` use).
install: $(DEV)

## The main job: a sample backend under supervision, a crash, a hang and a crash loop.
demo: $(RUNTIME)
	$(BIN)/erpwatch demo

## The test suite (real processes, HTTP, SMTP and SQLite on loopback).
test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

## Benchmarks side by side with supervisord, monit, PM2 and circus (writes bench/RESULTS.md,
## results.json, README-table.md; needs a quiet machine). bench-quick: a few-minute smoke
## run that writes its report to /tmp/erpwatch-bench-quick instead.
bench: install
	$(BIN)/python bench/run_all.py

bench-quick: install
	$(BIN)/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) build dist *.egg-info healthkit/build healthkit/src/*.egg-info .pytest_cache .mypy_cache .ruff_cache watchdog_logs test-artifacts
