# nanolens: `make run` starts the inspector, `make test` runs every test (CI runs it through .ci/run).
# Both use one virtual environment, .venv, created on first use. pip runs again only when a
# requirements file changed since the last successful install (stamp files inside .venv).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_REQ := $(VENV)/.stamp-req
STAMP_DEV := $(VENV)/.stamp-dev
CHROMIUM := /usr/bin/chromium

PYTEST_ARGS ?=
STREAMLIT_ARGS ?=

.PHONY: help run test bench clean chromium

help:
	@echo "make run      start the Streamlit app (settings in .streamlit/config.toml)"
	@echo "make test     run all tests; extra pytest arguments: make test PYTEST_ARGS='tests/e2e -x'"
	@echo "make bench    run the benchmarks (bench/)"
	@echo "make clean    remove .venv, caches and test-artifacts/ (never checkpoints/)"

# The venv's python is an order-only prerequisite: it is a symlink whose target's mtime means nothing.
# A half-made venv (e.g. ensurepip missing) is removed so that the next make starts over.
$(PY):
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "could not create $(VENV): install python3-venv (Debian: apt-get install python3-venv)"; exit 1; }

$(STAMP_REQ): requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	@touch $@

# requirements-dev.txt includes requirements.txt, so this install satisfies the runtime stamp too.
$(STAMP_DEV): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install -r requirements-dev.txt
	@touch $(STAMP_REQ) $@

run: $(STAMP_REQ)
	$(PY) -m streamlit run app/main.py $(STREAMLIT_ARGS)

# Browser tests need a system Chromium (Playwright cannot download its own here). As root on
# Debian we install it; elsewhere we say how, and the browser tests skip with that reason.
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && [ -f /etc/debian_version ]; then \
	    echo "$(CHROMIUM) not found: installing chromium with apt-get"; \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
	      || echo "WARNING: apt-get could not install chromium; browser tests will be SKIPPED"; \
	  else \
	    echo "WARNING: $(CHROMIUM) not found and this is not root on Debian;" \
	         "install chromium (apt-get install chromium) or browser tests will be SKIPPED"; \
	  fi; \
	fi

# pytest exits 5 when it collected no test: that is a failure too (a broken conftest or path).
test: $(STAMP_DEV) chromium
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "FAILED: pytest collected no tests"; fi; \
	exit $$rc

bench: $(STAMP_DEV)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis test-artifacts
	find . -path ./checkpoints -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
