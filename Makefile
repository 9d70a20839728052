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

# The whole system in miniature on this CPU (about 3 minutes): synthetic multi-round data, a
# short training run of the tiny preset (DeepSpeed ZeRO-2 bf16), per-round evaluation, and a
# scripted chat that saves masks and overlays. Everything lands in $(DEMO).
DEMO ?= runs/demo
SEGLLM := $(VENV)/bin/segllm
demo: $(STAMP)
	$(SEGLLM) info tiny
	$(SEGLLM) build-data synthetic --output $(DEMO)/data/train --num 400 --seed 0
	$(SEGLLM) build-data synthetic --output $(DEMO)/data/val --num 12 --seed 1
	$(SEGLLM) train --config configs/train/tiny-synthetic.yaml output_dir=$(DEMO)/run \
	  data.sources.0.path=$(DEMO)/data/train/synthetic.jsonl \
	  validation.path=$(DEMO)/data/val/synthetic.jsonl max_steps=300 validation.every=150 \
	  checkpoint.every=150
	$(SEGLLM) eval mrseg --model $(DEMO)/run/export --data $(DEMO)/data/val/synthetic.jsonl \
	  --images $(DEMO)/data/val --output $(DEMO)/eval --limit 6
	printf '%s\n' "Segment the red shape." "Segment the shape nearest to <ref:0>." > $(DEMO)/questions.txt
	$(SEGLLM) chat --model $(DEMO)/run/export --image $(DEMO)/data/val/images/000000.png \
	  --script $(DEMO)/questions.txt --out $(DEMO)/chat
	@echo "demo outputs: $(DEMO)/eval/metrics.md, $(DEMO)/eval/per_round.png, $(DEMO)/chat/"

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check segllm data_builders train eval tests bench

clean-venv:
	rm -rf $(VENV)
