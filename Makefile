# The two commands of the README: `make dev` (whole stack, local provider) and `make test`; `make test-fast` runs
# the unit tests only (tests/unit/: in-process, no services, no Debian tools), `make lint` the static checks.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests and the dev stack use: {binary: package}.
TOOLS := {'promtool': 'prometheus', 'prometheus': 'prometheus', 'amtool': 'prometheus-alertmanager', 'prometheus-alertmanager': 'prometheus-alertmanager', 'redis-server': 'redis-server', 'kubectl': 'kubectl', 'chromium': 'chromium', 'chromedriver': 'chromium-driver', 'iptables': 'iptables'}

LOCK := requirements.lock

.PHONY: install tools dev test test-fast bench lint lock clean

# Everything from the lock, build tools first: the package builds with the venv's locked setuptools
# (--no-build-isolation), not with whatever release an isolated build would fetch.
$(BIN)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) pip setuptools wheel
	$(BIN)/python -m pip install -q -c $(LOCK) --no-build-isolation -e '.[test]'
	touch $@

install: $(BIN)/.installed

tools: install
	$(BIN)/python -c "from app.devservices import ensure_tools; ensure_tools($(TOOLS))"

# Ports and workers of `make dev`, e.g. `make dev API_PORT=8001 WORKER_METRICS_PORT=9300` (or as environment
# variables). Unset: API on 8000; exporter, worker and canary metrics from 9108/9109/9110 up, skipping busy ports.
DEV_FLAGS = $(if $(API_HOST),--host $(API_HOST)) $(if $(API_PORT),--port $(API_PORT)) \
	$(if $(EXPORTER_PORT),--exporter-port $(EXPORTER_PORT)) \
	$(if $(WORKER_METRICS_PORT),--worker-metrics-port $(WORKER_METRICS_PORT)) $(if $(WORKERS),--workers $(WORKERS)) \
	$(if $(CANARY_METRICS_PORT),--canary-metrics-port $(CANARY_METRICS_PORT))

dev: install
	$(BIN)/posegen dev $(DEV_FLAGS)

# The suite in TEST_PROCESSES pytest processes (pytest-xdist), a test file per process at a time: its tests mostly
# wait on the processes and servers they start, so two run in about half the time on two cores. TEST_PROCESSES=0
# runs it in this process alone.
TEST_PROCESSES ?= 2

test: lint tools
	$(BIN)/python -m app.devservices run -- $(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q tests/unit $(PYTEST_ARGS)

bench: install
	command -v wrk >/dev/null || $(BIN)/python -c "from app.devservices import ensure_tools; ensure_tools({'wrk': 'wrk'})"
	$(BIN)/python -m app.devservices run -- $(BIN)/python -m bench.run_all $(BENCH_ARGS)

# ruff, the import contracts of docs/layout.md's Layout ([tool.importlinter]) and mypy ([tool.mypy]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# A new lock: the newest releases within pyproject.toml's ranges, resolved in a fresh venv (then run make test).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip setuptools wheel
	.lock-venv/bin/python -m pip install -q '.[test]'
	{ sed -n '/^#/p' $(LOCK); .lock-venv/bin/python -m pip freeze --all --exclude posegen | LC_ALL=C sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv build

# Root's PostgreSQL cluster may live outside the clone (app/devservices.py): /var/tmp/posegen-<sha256 of .data>.
clean:
	rm -rf /var/tmp/posegen-$$(printf %s "$$(realpath -m .data)" | sha256sum | cut -c1-12)
	rm -rf $(VENV) .data .pytest_cache .lock-venv
