# rabbit-serve: `make run` starts everything locally, `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run stop test test-unit test-integration test-faults bench bench-scale lint format export-model clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## Start broker (if needed), Ray on loopback and the app on http://127.0.0.1:8000.
run: $(STAMP)
	@scripts/run_local.sh

## Stop what `make run` started (Ray; the broker only if `make run` started it).
stop:
	@scripts/stop_local.sh

## The whole suite: unit tests, then integration tests on RabbitMQ + Ray + the model.
## pytest's exit code 5 ("no tests collected") counts as a failure.
test: $(STAMP)
	@scripts/ensure_broker.sh
	@$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-unit: $(STAMP)
	@$(PY) -m pytest -q tests/unit; rc=$$?; [ $$rc -eq 5 ] && exit 1; exit $$rc

test-integration: $(STAMP)
	@scripts/ensure_broker.sh
	@$(PY) -m pytest -q tests/integration; rc=$$?; [ $$rc -eq 5 ] && exit 1; exit $$rc

## Real faults under load: killed consumers and classifiers, broker restarts, bad
## webhooks, overload (also run by .ci/run).
test-faults: $(STAMP)
	@scripts/ensure_broker.sh
	@$(PY) -m pytest -q -p no:cacheprovider tests/faults; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

## Side-by-side benchmark: raw ONNX Runtime, this pipeline, a plain Serve peer (needs wrk).
bench: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install -y wrk"; exit 1; }
	@scripts/ensure_broker.sh
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.run

## Throughput against classifier replicas and consumers on a simulated 3-node cluster.
bench-scale: $(STAMP)
	@command -v wrk >/dev/null || { echo "bench-scale needs wrk: apt-get install -y wrk"; exit 1; }
	@scripts/ensure_broker.sh
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.scale

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

## Re-export models/efficientnet_lite0.onnx (needs the [export] extra: torch 2.13.0).
export-model: $(STAMP)
	$(PY) -m pip install --quiet -e '.[export]'
	$(PY) scripts/export_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .run
