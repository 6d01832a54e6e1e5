# pairq: `make run` and `make test` are the only two commands anyone needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUICK ?=

.PHONY: run test lint proto proto-check bench gossip-bench chaos clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pairq dev

test: $(STAMP) lint
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check pairq tests benchmarks
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python -m pairq._protogen

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick,)

gossip-bench: $(STAMP)
	$(BIN)/python benchmarks/gossip_bench.py $(if $(QUICK),--quick,)

chaos: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m chaos tests/chaos

clean:
	rm -rf $(VENV) build *.egg-info
