# Two commands for a newcomer: `make demo` and `make test`. Each installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers of `make test`, a test file each; 0 runs the suite in one process
TEST_WORKERS ?= 2
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export PYSPARK_PYTHON := $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(PY)

.PHONY: demo test lint format deps system venv dagster-home ui clean bench soak

# Debian packages the platform and its tests use: Java for Spark, PostgreSQL for the
# PostgreSQL metric-store tests.
system:
	@./scripts/install-system.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@echo "installing the project into $(VENV) (first run takes a few minutes)"
	@$(PY) -m pip install --quiet --progress-bar off -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

deps: system venv dagster-home

dagster-home: venv
	@$(PY) -m expo_platform.cli dagster-home

demo: deps
	@$(PY) -m expo_platform.devtools.demo

test: deps
	@$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: venv
	@$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	@$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

ui: deps
	@$(VENV)/bin/dagster dev -w workspace.yaml

clean:
	rm -rf lake .dagster_home

# Local ZooKeeper and Kafka-compatible broker (Tansu) for the speed layer, on the ports of
# EXPO_ZOOKEEPER and EXPO_KAFKA_BOOTSTRAP; data, logs and pid files in EXPO_SERVICES_DIR.
.PHONY: services services-down up down

services: deps
	@$(PY) -m expo_platform.ops.services up

services-down:
	@$(PY) -m expo_platform.ops.services down

# A Spark standalone master and one worker from the pyspark wheel, on EXPO_CLUSTER_MASTER_PORT
# (web UI EXPO_CLUSTER_UI_PORT); logs and pid files in EXPO_SERVICES_DIR.
.PHONY: cluster cluster-down

cluster: deps
	@$(PY) -m expo_platform.ops.services cluster-up

cluster-down:
	@$(PY) -m expo_platform.ops.services cluster-down

# Benchmarks (bench/): batch and streaming throughput, printed as a table and written to
# bench/results/<time>.json. Generated inputs are cached in bench/.cache.
bench: deps
	@$(PY) -m bench $(BENCH_ARGS)

# The soak: the whole platform for 30 minutes at a steady rate with injected stream restarts
# (bench/soak.py); SOAK_ARGS="--soak-minutes 10" for a shorter one.
soak: deps
	@$(PY) -m bench --only soak $(SOAK_ARGS)

# The whole platform on one machine: services, the streaming app, live traffic, Dagster
# (webserver and daemon, schedules and sensors on). `make down` stops it all, by pid.
up: deps
	@$(PY) -m expo_platform.ops.local up

down:
	@$(PY) -m expo_platform.ops.local down
