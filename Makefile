# Two entry points: `make run` and `make test`. Both create or reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-codec bench-routing schema clean

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PY=python3.11)")'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m chat_server

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Regenerate protocol/schema.json after changing protocol/messages.py.
schema: $(STAMP)
	$(BIN)/python -m protocol.schema --write

bench: $(STAMP)
	$(BIN)/python -m load.bench

bench-codec: $(STAMP)
	$(BIN)/python -m load.bench_codec

bench-routing: $(STAMP)
	$(BIN)/python -m load.bench_routing

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
