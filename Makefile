# opsflow: the two commands of the README are `make demo` and `make test`.
# Every target installs and starts what it needs by itself, idempotently.

SHELL := /bin/bash
PYTHON := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo demo-stop replica replica-stop replica-known prod-smoke test lint unit bench-parse bench-logs bench-backup bench-rollback bench-mttr clean

setup:
	scripts/setup.sh

demo: setup
	scripts/demo.sh

demo-stop:
	scripts/demo.sh --stop

# One replica of include/replicas/ under an Airflow standalone of its own, as `make demo`
# runs the demo: `make replica SYSTEM=kratos`. SYSTEM reaches the program as an argument
# from the environment (make exports command-line variables), never as shell text.
replica: replica-known setup
	$(PYTHON) scripts/replica.py start "$$SYSTEM"

replica-stop: replica-known
	$(PYTHON) scripts/replica.py stop "$$SYSTEM"

# Before `setup` installs anything: an unknown SYSTEM is named with the five (stdlib only).
replica-known:
	@python3 scripts/replica.py check "$${SYSTEM-}"

# docker-compose.airflow.yml for real (images built here, PostgreSQL, Celery, API server,
# scheduler, DAG processor, triggerer) plus one edge worker on this machine: the demo's
# deploy and backup run on them, then everything is torn down. About 10 minutes.
prod-smoke: setup
	$(PYTHON) scripts/prod_smoke.py

lint: setup
	.venv/bin/ruff check plugins dags tests scripts
	.venv/bin/ruff format --check plugins dags tests
	.venv/bin/mypy

# Two workers, a test module at a time each: the waits are on Docker, PostgreSQL and
# Airflow subprocesses, so two overlap on two cores. Each worker deploys its own demo copy
# (tests/support/demo.py). PYTEST_WORKERS=0 runs everything in this process, in order.
PYTEST_WORKERS ?= 2
test: setup lint
	CI=$${CI:-} .venv/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

unit: setup
	.venv/bin/pytest tests/unit tests/dags -m "not integration and not e2e" $(PYTEST_ARGS)

bench-parse: setup
	$(PYTHON) scripts/bench_parse.py

bench-logs: setup
	$(PYTHON) scripts/bench_logs.py

# BENCH_BACKUP_ARGS=--quick for a one-minute smoke run (see scripts/bench_backup.py --help).
BENCH_BACKUP_ARGS ?=
bench-backup: setup
	$(PYTHON) scripts/bench_backup.py $(BENCH_BACKUP_ARGS)

# BENCH_ROLLBACK_ARGS=--quick for a smoke run on a 20 MB database (see scripts/bench_rollback.py --help).
BENCH_ROLLBACK_ARGS ?=
bench-rollback: setup
	$(PYTHON) scripts/bench_rollback.py $(BENCH_ROLLBACK_ARGS)

# Upgrades to three bad releases under Airflow standalone, timed from outside; about 6
# minutes once the images are built. BENCH_MTTR_ARGS=--cases=a picks cases (see --help).
BENCH_MTTR_ARGS ?=
bench-mttr: setup
	$(PYTHON) scripts/bench_mttr.py $(BENCH_MTTR_ARGS)

clean:
	rm -rf airflow-home .pytest_cache .mypy_cache .ruff_cache
