# The README's first two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU torch wheel lies on disk on our machines; elsewhere pip finds it on PyPI's CPU index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP_INSTALL := $(BIN)/pip install --disable-pip-version-check -c constraints.txt $(FIND_LINKS)

.PHONY: demo test test-heavy test-fast bench bench-materialize bench-stream bench-export bench-serving bench-drift bench-monitor check-java install clean lint

install: $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "error: Java 17 or newer is required by Spark and was not found on PATH."; \
	  echo "       Install a JDK (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) and retry."; \
	  exit 1; }

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[dev]'
	@touch $(STAMP)

demo: check-java $(STAMP)
	$(BIN)/featurestore example demo

# The heaviest tests (the Spark standalone cluster's JVMs and jobs; whole-system fault and process
# tests of 20 s or more, marked `heavy`) run in a target of their own, so `make test` keeps its
# 15-minute budget; .ci/run runs both.
test: check-java $(STAMP)
	$(BIN)/pytest -q --durations=30 -m "not spark_cluster and not heavy"

test-heavy: check-java $(STAMP)
	$(BIN)/pytest -q --durations=20 -m "spark_cluster or heavy"

# The tests that need no server (no Redis, PostgreSQL, broker, Spark, HTTP server or CLI
# subprocess; tests/conftest.py marks the others `needs_server`).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not needs_server"

# The gate .ci/run runs before the tests: ruff over the tree, mypy (config in pyproject.toml) over the
# product packages.
lint: $(STAMP)
	$(BIN)/ruff check featurestore streaming monitors fraud_example feature_repo tests bench
	$(BIN)/mypy

bench: bench-materialize bench-stream bench-export bench-serving bench-drift bench-monitor

bench-materialize: check-java $(STAMP)
	$(BIN)/python bench/materialize.py

bench-stream: $(STAMP)
	$(BIN)/python bench/stream.py

bench-export: check-java $(STAMP)
	$(BIN)/python bench/export.py

bench-serving: check-java $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "error: the serving benchmark's load generator wrk was not found on PATH."; \
	  echo "       Install it (Debian/Ubuntu: apt-get install wrk) and retry."; \
	  exit 1; }
	$(BIN)/python bench/serving.py

bench-drift: $(STAMP)
	$(BIN)/python bench/drift.py

bench-monitor: $(STAMP)
	$(BIN)/python bench/monitor.py

clean:
	rm -rf $(VENV) data build spark-warehouse
