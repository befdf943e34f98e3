# mailgate — the two commands a user needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export MAILGATE_DATA_DIR ?= ./var
# Tests talk to real servers on random loopback ports, so they run in parallel safely.
PYTEST_ARGS ?= -n auto

.PHONY: run test lint bench clean

$(BIN)/mailgate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.test-extras: pyproject.toml $(BIN)/mailgate
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

run: $(BIN)/mailgate
	$(BIN)/mailgate db upgrade
	@echo "--- demo organization (a fresh API token each run) ---"
	$(BIN)/mailgate demo
	$(BIN)/mailgate serve

test: $(VENV)/.test-extras
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.test-extras
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(VENV)/.test-extras
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) var .pytest_cache
