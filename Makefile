# The two commands of the README: `make dev` (whole stack, local provider) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests and the dev stack use: {binary: package}.
TOOLS := {'promtool': 'prometheus', 'prometheus': 'prometheus', 'amtool': 'prometheus-alertmanager', 'prometheus-alertmanager': 'prometheus-alertmanager', 'redis-server': 'redis-server', 'kubectl': 'kubectl', 'chromium': 'chromium', 'chromedriver': 'chromium-driver'}

.PHONY: install tools dev test bench lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

tools: install
	$(BIN)/python -c "from app.devservices import ensure_tools; ensure_tools($(TOOLS))"

# Ports and workers of `make dev`, e.g. `make dev API_PORT=8001 WORKER_METRICS_PORT=9300` (or as environment
# variables). Unset: API on 8000; exporter and worker metrics from 9108/9109 up, skipping busy ports.
DEV_FLAGS = $(if $(API_HOST),--host $(API_HOST)) $(if $(API_PORT),--port $(API_PORT)) \
	$(if $(EXPORTER_PORT),--exporter-port $(EXPORTER_PORT)) \
	$(if $(WORKER_METRICS_PORT),--worker-metrics-port $(WORKER_METRICS_PORT)) $(if $(WORKERS),--workers $(WORKERS))

dev: install
	$(BIN)/posegen dev $(DEV_FLAGS)

test: tools
	$(BIN)/python -m app.devservices run -- $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	command -v wrk >/dev/null || $(BIN)/python -c "from app.devservices import ensure_tools; ensure_tools({'wrk': 'wrk'})"
	$(BIN)/python -m app.devservices run -- $(BIN)/python -m bench.run_all $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .

# Root's PostgreSQL cluster may live outside the clone (app/devservices.py): /var/tmp/posegen-<sha256 of .data>.
clean:
	rm -rf /var/tmp/posegen-$$(printf %s "$$(realpath -m .data)" | sha256sum | cut -c1-12)
	rm -rf $(VENV) .data .pytest_cache
