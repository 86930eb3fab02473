# agent-rollout: `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PY := .venv/bin/python
SCENARIO ?= good
PYTEST_ARGS ?=

.PHONY: help bootstrap crds check-crds lint unit e2e test demo bench bench-scale cluster-up cluster-down clean

help:
	@echo "make demo [SCENARIO=good|bad|shadow]  watch a rollout (bad: automatic rollback; shadow: evaluate + shadow step)"
	@echo "make test                      all tests: unit, property and e2e on a real control plane"
	@echo "make bench                     planner cost, breach-to-rollback timing, leader failover, the fast check, its queries' cost, a status write's cost to the apiserver and the operator at 1,000 rollouts"
	@echo "make bench-scale               the operator process at 10,000 rollouts (e2e/bench/operator_scale.py)"
	@echo "make cluster-up / cluster-down local kube-apiserver, controller-manager, etcd, Prometheus"
	@echo "make crds / lint / unit / e2e"

bootstrap:
	@bash scripts/bootstrap.sh

crds: bootstrap
	$(PY) -m agent_rollout.crdgen

check-crds: bootstrap
	$(PY) -m agent_rollout.crdgen --check

lint: bootstrap
	.venv/bin/ruff check operator tests e2e
	$(PY) -m agent_rollout.crdgen --check
	.venv/bin/mypy

unit: bootstrap
	@bash scripts/pytest.sh tests $(PYTEST_ARGS)

e2e: bootstrap
	@bash scripts/pytest.sh e2e $(PYTEST_ARGS)

test: bootstrap lint
	@bash scripts/pytest.sh tests e2e $(PYTEST_ARGS)

demo: bootstrap
	$(PY) -m e2e.demo --scenario $(SCENARIO)

# The benchmarks run on a current Prometheus built from source (cached); the tests on Debian's.
bench: bootstrap
	E2E_PROMETHEUS=$$(bash e2e/cluster/build-prometheus.sh) $(PY) -m e2e.bench

bench-scale: bootstrap
	E2E_PROMETHEUS=$$(bash e2e/cluster/build-prometheus.sh) $(PY) -m e2e.bench --only scale --rollouts 10000

cluster-up: bootstrap
	$(PY) -m e2e.cluster up

cluster-down:
	$(PY) -m e2e.cluster down

clean: cluster-down
	rm -rf .cache/run
