# Two commands on a fresh machine: `make run` and `make test`. The virtualenv lives in .venv and is reused.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup run dev test lint clean home sandbox dev-sandbox chaos bench system-deps

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) home

# The instance config is the project's dagster.yaml, copied into the git-ignored Dagster home.
home:
	@mkdir -p $(DAGSTER_HOME)
	@cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

run: setup
	$(BIN)/image-pipeline run

dev: setup
	$(BIN)/dagster dev -h 127.0.0.1 -p $${PORT:-3000} -w workspace.yaml

# Loopback emulators of Google Sheets, Hugging Face and Telegram, with a seeded sheet (see README).
sandbox: setup
	$(BIN)/image-pipeline-sandbox $(ARGS)

# The Dagster UI against a running `make sandbox` (reads the variables it wrote).
dev-sandbox: setup
	@test -f data/sandbox/sandbox.env || { echo "start 'make sandbox' in another terminal first"; exit 1; }
	set -a; . data/sandbox/sandbox.env; set +a; $(BIN)/dagster dev -h 127.0.0.1 -p $${PORT:-3000} -w workspace.yaml

# Exactly-once under faults, kills and a concurrent editor (see README): make chaos ARGS="--prompts 100"
# (across workers sharing only PostgreSQL and S3: ARGS="--prompts 100 --workers 3 --distributed")
chaos: setup
	$(BIN)/python -m image_pipeline.testing.chaos $(ARGS)

# Speed, Sheets requests, 429s and memory against emulators with a fixed latency, beside the ancestor's
# one-process-per-prompt baseline (see image_pipeline/testing/bench/__init__.py): make bench ARGS="--only B100-gen --json b.json"
bench: setup
	$(BIN)/python -m image_pipeline.testing.bench $(ARGS)

# Chromium for the UI test and a PostgreSQL server for the Postgres instance test (Debian packages).
system-deps:
	bash scripts/system-deps.sh

test: setup system-deps
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check image_pipeline image_pipeline_tests
	$(BIN)/ruff format --check image_pipeline image_pipeline_tests

clean:
	rm -rf $(VENV) .dagster_home data .pytest_cache
