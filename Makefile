# Two entry points: `make run` and `make test`. Both create or reuse .venv and install
# exactly what uv.lock pins (with hashes): `run` the server and the embedded Postgres,
# `test` adds the dev tools. Only Python 3.11+ is needed on the machine; uv itself is
# installed into .venv/uv at a pinned version.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV := $(VENV)/uv/bin/uv
# uv syncs into .venv; its cache stays in the user's cache folder (reused across clones).
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Bytecode is written on first import, so a warm start skips compiling SQLAlchemy and
# google-genai (~2 s) even where the shell sets PYTHONDONTWRITEBYTECODE (empty = unset).
export PYTHONDONTWRITEBYTECODE :=
SYNC := $(UV) sync --frozen --quiet --extra embedded

.PHONY: run test lint lock faults bench bench-codec bench-routing schema clean

# The venv has no pip (uv installs into it; ensurepip alone took 6 s of a 15 s cold start).
# uv comes from the machine's pip, or from a throwaway venv's pip where there is none.
$(UV):
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PY=python3.11)")'
	@echo "creating .venv with uv $(UV_VERSION)"
	@test -x $(BIN)/python || $(PY) -m venv --without-pip $(VENV)
	@if $(PY) -m pip --version >/dev/null 2>&1; then pip="$(PY) -m pip"; \
	else $(PY) -m venv $(VENV)/bootstrap && pip="$(VENV)/bootstrap/bin/python -m pip"; fi; \
	$$pip --isolated --disable-pip-version-check install --root-user-action=ignore -q \
		--target $(VENV)/uv uv==$(UV_VERSION)

# --inexact: a `make run` after `make test` keeps the dev tools instead of removing them.
$(VENV)/.run-installed: uv.lock $(UV)
	@echo "installing the server's locked dependencies into .venv"
	@$(SYNC) --inexact --no-dev
	@touch $@

$(VENV)/.test-installed: uv.lock $(UV)
	@echo "installing the locked dependencies and dev tools into .venv"
	@$(SYNC) --group dev
	@touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	@$(BIN)/python -m chat_server

lint: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Re-resolve every dependency on purpose (then review the diff of uv.lock and commit it).
lock: $(UV)
	$(UV) lock --upgrade

# Regenerate protocol/schema.json after changing protocol/messages.py.
schema: $(VENV)/.test-installed
	$(BIN)/python -m protocol.schema --write

# Kill, restart and pause the parts of a 3-replica deployment under load (~90 s).
faults: $(VENV)/.test-installed
	$(BIN)/python -m load.faults

bench: $(VENV)/.test-installed
	$(BIN)/python -m load.bench

bench-codec: $(VENV)/.test-installed
	$(BIN)/python -m load.bench_codec

bench-routing: $(VENV)/.test-installed
	$(BIN)/python -m load.bench_routing

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
