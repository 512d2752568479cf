# MiniMind: the two quick-start commands, and their helpers.
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the whole test suite
# Override the torch install for a GPU, e.g.:
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test setup setup-dev clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run the install when pyproject.toml changes. torch goes first so that the
# package's own `torch>=2.5` requirement is already satisfied and nothing bigger is fetched.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev,eval,gguf]"
	touch $@

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

demo: setup
	$(VENV)/bin/minimind quickstart

test: setup-dev
	$(PY) -m pytest -n 2

clean:
	rm -rf $(VENV) .pytest_cache
