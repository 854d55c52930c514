# `make demo` and `make test` work on a fresh machine: both install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/demo
# Where prepared (TFDS-cached) datasets live; each source/config gets a version.
CACHE_DIR ?= $(HOME)/.cache/tfr_ssl

.PHONY: install test lint format demo clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

test: install
	$(VENV)/bin/ruff check tfr_ssl pipelines tests bench
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check tfr_ssl pipelines tests bench
	$(VENV)/bin/ruff format --check tfr_ssl pipelines tests bench

format: install
	$(VENV)/bin/ruff format tfr_ssl pipelines tests bench
	$(VENV)/bin/ruff check --fix tfr_ssl pipelines tests bench

demo: install
	$(PY) -m pipelines.prepare_data --source=synthetic --cache_dir=$(CACHE_DIR)

clean:
	rm -rf $(VENV) workdir
