# Two commands on a fresh machine: `make run` and `make test`. Both set up the venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak kafka clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m stream_app

# The web page's tests drive Debian's chromium through Playwright (Playwright's own browser
# download cannot be fetched here): installed once, when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

test: lint chromium
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Fetch Apache Kafka's jars into the cache now (make run and make test do it on first use).
kafka: $(STAMP)
	$(PY) -m stream_app.running.kafka_local

# One table of the benchmarks (bench/README.md): about 5 minutes. BENCH_ARGS=--all adds
# the fairness and outage benchmarks; `python -m bench --help` for the rest.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data

# The chaos soak (bench/soak.py): SOAK_SEEDS seeds (10), about 3 minutes each, one table.
SOAK_SEEDS ?= 10
soak: $(STAMP)
	$(PY) -m bench.soak --seeds $(SOAK_SEEDS)
