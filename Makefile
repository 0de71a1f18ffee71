# Attune — two commands: `make up` (run everything, embedded) and `make test` (the whole suite).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export ATTUNE_HOME ?= $(CURDIR)/var
STAMP := $(VENV)/.installed-$(shell cat requirements/*.txt | sha256sum | cut -c1-16)

.PHONY: up test test-prod venv setup lint bench clean help

help:
	@echo "make up        install, migrate, register packs, create the admin user, run everything on :$${ATTUNE_PORT:-8000}"
	@echo "make test      install and run the whole test suite (embedded mode)"
	@echo "make test-prod run the suite against PostgreSQL + Redis (needs ATTUNE_DATABASE_URL and ATTUNE_REDIS_URL)"
	@echo "make lint      ruff"
	@echo "make bench     execution benchmark, embedded mode (see docs/performance.md for production)"

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Attune needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

up: venv
	$(PY) manage.py attune run

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-prod: venv
	@test -n "$$ATTUNE_DATABASE_URL" -a -n "$$ATTUNE_REDIS_URL" || { echo "error: set ATTUNE_DATABASE_URL and ATTUNE_REDIS_URL"; exit 1; }
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) bench/bench_executions.py --mode embedded

clean:
	rm -rf $(VENV) var .pytest_cache
