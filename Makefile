# erpwatch — the two commands of the README, and the rest of the developer loop.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install lint typecheck check bench bench-quick clean

$(BIN)/erpwatch: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/erpwatch

## The main job: a sample backend under supervision, a crash, a hang and a crash loop.
demo: install
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

## Benchmarks side by side with supervisord and monit (writes bench/RESULTS.md).
bench: install
	$(BIN)/python bench/run_all.py

bench-quick: install
	$(BIN)/python bench/run_all.py --quick

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache watchdog_logs test-artifacts
