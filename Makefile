# The two commands from the README: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: run test install install-dev lint typecheck lock update audit-deps bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv

$(VENV)/.installed: $(BIN)/python requirements/base.lock pyproject.toml
	$(UV) pip sync -q --python $(BIN)/python requirements/base.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python requirements/dev.lock pyproject.toml
	$(UV) pip sync -q --python $(BIN)/python requirements/dev.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# `make run PORT=8001` when 8000 is taken.
PORT ?= 8000
run: install
	$(BIN)/stalwart migrate
	$(BIN)/stalwart serve --host 127.0.0.1 --port $(PORT)

test: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -n 2 --dist loadgroup

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install-dev
	$(BIN)/mypy

lock:
	uv pip compile pyproject.toml -o requirements/base.lock --python-version 3.11
	uv pip compile pyproject.toml --extra dev -o requirements/dev.lock --python-version 3.11

# Dependency maintenance (docs/maintenance.md): newest allowed versions, then the full suite.
update:
	uv pip compile --upgrade pyproject.toml -o requirements/base.lock --python-version 3.11
	uv pip compile --upgrade pyproject.toml --extra dev -o requirements/dev.lock --python-version 3.11
	$(MAKE) test

# Known vulnerabilities in the pinned runtime dependencies (needs access to pypi.org).
audit-deps: install-dev
	$(BIN)/pip-audit -r requirements/base.lock --no-deps --disable-pip --vulnerability-service pypi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
