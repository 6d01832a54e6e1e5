# pairq: `make run` and `make test` are the only two commands anyone needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUICK ?=

.PHONY: run test lint proto proto-check bench bench-compare gossip-bench starve chaos fuzz clean ensure-debs

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pairq dev

# System packages the tests need (ip and tc for the pair-partition test, in iproute2):
# installed when running as root and missing; otherwise that test fails saying so.
ensure-debs:
	@if [ "$$(id -u)" = 0 ] && { ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; }; then \
		apt-get update -qq && apt-get install -y -qq iproute2; \
	fi

test: $(STAMP) lint ensure-debs
	$(BIN)/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check pairq tests benchmarks
	$(BIN)/ruff format --check pairq tests benchmarks
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python -m pairq._protogen

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick,)

# Same driver (this tree's benchmarks/run.py) against two revisions, alternating runs:
#   make bench-compare BASE=<rev> [HEAD=<rev>, default the working tree] [QUICK=1] [ROUNDS=3]
bench-compare: $(STAMP)
	@test -n "$(BASE)" || { echo "usage: make bench-compare BASE=<rev> [HEAD=<rev>] [QUICK=1] [ROUNDS=N]"; exit 2; }
	$(BIN)/python benchmarks/compare.py --base '$(BASE)' $(if $(HEAD),--head '$(HEAD)',) \
		$(if $(QUICK),--quick,) --rounds $(or $(ROUNDS),3)

gossip-bench: $(STAMP)
	$(BIN)/python benchmarks/gossip_bench.py $(if $(QUICK),--quick,)

starve: $(STAMP)
	$(BIN)/python benchmarks/starvation.py $(if $(QUICK),--seconds 20,)

# At least 1,000,000 fuzzed inputs over every decoder and RPC handler, and a flood of
# malformed requests against a real broker and lookup while a workload runs
# (tests/fuzz/fuzzlib.py): make fuzz [DECODERS=N] [RPCS=N] [SEED=S]
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run_fuzz.py $(if $(DECODERS),--decoders $(DECODERS),) \
		$(if $(RPCS),--rpcs $(RPCS),) $(if $(SEED),--seed $(SEED),)

chaos: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m chaos tests/chaos

clean:
	rm -rf $(VENV) build *.egg-info
