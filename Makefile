# The two commands of the README. Each creates .venv when missing and (re)installs when
# pyproject.toml changes, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,eval
STAMP := $(VENV)/.segllm-installed
PYTEST_ARGS ?=

.PHONY: demo test lint install clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segllm info tiny

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check segllm data_builders train eval tests bench

clean-venv:
	rm -rf $(VENV)
