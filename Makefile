# Gaffer: `make run` starts it on the embedded store, `make test` passes the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
BUF    := node_modules/.bin/buf
PROTOS := $(wildcard protos/gaffer/v1/*.proto)
GEN    := src/gaffer/v1

.PHONY: run test lint proto proto-check install venv npm clean bench postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

$(VENV)/.bench-installed: pyproject.toml constraints.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

venv: $(VENV)/.installed
npm: node_modules/.installed
install: venv npm proto

# Generated code comes only from here; never edit src/gaffer/v1 by hand.
proto: $(VENV)/.installed
	rm -rf $(GEN)
	mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=src --pyi_out=src --grpc_python_out=src $(PROTOS)
	printf '"""Generated from protos/gaffer/v1 by `make proto`; do not edit."""\n' > $(GEN)/__init__.py

# Fails when the committed generated code differs from what the protos give.
proto-check: proto
	git diff --exit-code --stat -- $(GEN)
	test -z "$$(git status --porcelain -- $(GEN))"

lint: install
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# PostgreSQL-backed tests make throwaway databases on 127.0.0.1:5432; the local cluster is
# started when it is down, and an unreachable one fails the run instead of skipping those tests.
postgres:
	bash scripts/ensure-postgres.sh

test: install postgres
	GAFFER_TEST_PG_REQUIRED=1 $(BIN)/pytest -q

# The benchmark suite of issue 5 (about 10 minutes; not part of `make test`): prints a table
# and writes bench/results/latest.json. `python -m bench --quick` or `--only NAME` for less.
# Celery's peer needs Redis and the PostgreSQL figures need PostgreSQL: both started if down.
bench: $(VENV)/.bench-installed postgres
	bash scripts/ensure-redis.sh
	$(PY) -m bench

run: install
	$(BIN)/gaffer dev

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache

# The long chaos run (500 jobs; agents and the server SIGKILLed); prints lost = 0, duplicated = 0.
.PHONY: chaos
chaos: install
	$(PY) -m tests.chaos
