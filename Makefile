# The two commands of the README: `make dev` (whole stack, local provider) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the tests and the dev stack use: {binary: package}.
TOOLS := {'promtool': 'prometheus', 'prometheus': 'prometheus', 'amtool': 'prometheus-alertmanager', 'prometheus-alertmanager': 'prometheus-alertmanager', 'redis-server': 'redis-server'}

.PHONY: install tools dev test bench lint clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

tools: install
	$(BIN)/python -c "from app.devservices import ensure_tools; ensure_tools($(TOOLS))"

dev: install
	$(BIN)/posegen dev

test: tools
	$(BIN)/python -m app.devservices run -- $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	command -v wrk >/dev/null || $(BIN)/python -c "from app.devservices import ensure_tools; ensure_tools({'wrk': 'wrk'})"
	$(BIN)/python -m app.devservices run -- $(BIN)/python -m bench.run_all $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .data .pytest_cache
