# The two commands of the README. Each creates .venv when missing and (re)installs when
# pyproject.toml changes, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,eval,train,demo,video
STAMP := $(VENV)/.segllm-installed
PYTEST_ARGS ?=

.PHONY: demo shapes-model test test-fast lint install browser clean-venv

# SAM2 (`sam2` on PyPI: the video path's SAM2 propagation, tested with a tiny random SAM2) is an
# sdist whose build asks for its own torch: built here against the torch just installed and
# without its CUDA extension, it adds about 6 MB (hydra-core, iopath), not a second torch.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q "setuptools>=77"
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation "sam2==1.1.0"
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

# The shipped small model (models/segllm-shapes) end to end, no training: multi-round chats on
# bundled synthetic scenes (question, answer and IoU of every round, overlays) and a grounded
# caption. Everything lands in $(DEMO).
DEMO ?= runs/demo
SEGLLM := $(VENV)/bin/segllm
demo: $(STAMP)
	$(SEGLLM) demo --out $(DEMO)

# Retrain the shipped model from scratch in one run (configs/train/segllm-shapes-v4.yaml: 4,500
# steps, about 1.3 s each in fp32 on a 2-core CPU without AMX, under two hours), evaluate it on a
# split made with a seed training never saw (7), and refresh models/segllm-shapes: weights,
# config, tokenizer, training curves and evaluation pictures (the model card's text is by hand).
SHAPES ?= runs/segllm-shapes-v4
MODEL_DIR ?= models/segllm-shapes
shapes-model: $(STAMP)
	$(SEGLLM) build-data synthetic --output data/shapes/train --num 30000 --seed 0 --workers 2
	$(SEGLLM) build-data synthetic --output data/shapes/val --num 256 --seed 1
	$(SEGLLM) build-data synthetic --output data/shapes/test --num 300 --seed 7 --min-rounds 6
	OMP_WAIT_POLICY=PASSIVE $(SEGLLM) train --config configs/train/segllm-shapes-v4.yaml \
	  output_dir=$(SHAPES)
	$(PY) -m segllm.train.curves $(SHAPES) --output $(SHAPES)/curves.png --title "segllm-shapes"
	$(SEGLLM) eval mrseg --model $(SHAPES)/export --data data/shapes/test/synthetic.jsonl \
	  --images data/shapes/test --output $(SHAPES)/eval-mrseg
	$(PY) -m segllm.eval.naming $(SHAPES)/eval-mrseg/predictions-own.jsonl \
	  data/shapes/test/synthetic.jsonl --output $(SHAPES)/eval-mrseg/naming-own.json
	$(SEGLLM) eval gcg --model $(SHAPES)/export --data data/shapes/test/synthetic_gcg.jsonl \
	  --images data/shapes/test --output $(SHAPES)/eval-gcg --no-captions
	mkdir -p $(MODEL_DIR)
	cp -r $(SHAPES)/export/. $(MODEL_DIR)/
	cp $(SHAPES)/curves.png $(MODEL_DIR)/curves.png
	cp $(SHAPES)/eval-mrseg/per_round.png $(MODEL_DIR)/per_round.png

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The suite without the tests marked slow (over ~20 s each), for quick checks while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check segllm data_builders train eval tests bench

clean-venv:
	rm -rf $(VENV)
