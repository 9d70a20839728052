# The two commands of the README. Each creates .venv when missing and (re)installs when
# pyproject.toml changes, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,eval,train,demo
STAMP := $(VENV)/.segllm-installed
PYTEST_ARGS ?=

.PHONY: demo test lint install browser clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@$(MAKE) --no-print-directory browser
	touch $(STAMP)

# Debian's chromium for the web demo's browser test (playwright drives it; it never downloads
# a browser of its own).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	else echo "warning: install Debian's chromium to run the browser test"; fi

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segllm info tiny

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check segllm data_builders train eval tests bench

clean-venv:
	rm -rf $(VENV)
