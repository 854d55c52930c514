# `make demo` and `make test` work on a fresh machine: both install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/demo
# TensorFlow's C++ INFO lines (CUDA probing, oneDNN notes) hide the output.
export TF_CPP_MIN_LOG_LEVEL ?= 1
# Where prepared (TFDS-cached) datasets live; each source/config gets a version.
CACHE_DIR ?= $(HOME)/.cache/tfr_ssl

.PHONY: install test lint format demo clean bench bench-scale

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

# Two worker processes (pytest-xdist): many tests wait on binaries, servers
# and multi-worker training in subprocesses, and those waits overlap with the
# other worker's work. `--dist loadfile` keeps each test file on one worker,
# so a module-scoped fixture (a trained run) is still built once. Files are
# handed out in collection order (`--no-loadscope-reorder`; xdist would
# otherwise start the files with the most tests first), which puts the
# files marked `long_file` first (tests/conftest.py): a file of minutes
# started last would leave the other worker idle.
test: install
	$(VENV)/bin/ruff check tfr_ssl pipelines tests bench
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder \
		--durations=10 tests

lint: install
	$(VENV)/bin/ruff check tfr_ssl pipelines tests bench
	$(VENV)/bin/ruff format --check tfr_ssl pipelines tests bench

format: install
	$(VENV)/bin/ruff format tfr_ssl pipelines tests bench
	$(VENV)/bin/ruff check --fix tfr_ssl pipelines tests bench

# The demo: synthetic data, the default model (history query tower, CFM
# item SSL, static logQ), then the whole chain.
DEMO_FLAGS ?= --epochs=3
demo: install
	rm -rf $(WORKDIR)
	$(PY) -m pipelines.prepare_data --source=synthetic --cache_dir=$(CACHE_DIR)
	$(PY) -m pipelines.train --workdir=$(WORKDIR) --cache_dir=$(CACHE_DIR) $(DEMO_FLAGS)
	$(PY) -m pipelines.export --workdir=$(WORKDIR)
	$(PY) -m pipelines.build_index --workdir=$(WORKDIR)
	$(PY) -m pipelines.evaluate --workdir=$(WORKDIR)
	$(PY) -m pipelines.retrieve --workdir=$(WORKDIR) --user=42 --top_k=5
	$(PY) -m pipelines.report --workdir=$(WORKDIR)
	@echo "Serve it over HTTP (TF Serving's REST API, a page at /): $(PY) -m pipelines.serve --workdir=$(WORKDIR) --port=8501"

# Small versions of the performance benchmarks (a few minutes); results go
# to bench/results/quick/ (the committed full runs are in bench/results/).
BENCH_OUT ?= bench/results/quick
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) bench/train_speed.py --rounds 2 --steps 40 --out $(BENCH_OUT)/train_speed.md
	$(PY) bench/scale.py --sizes 5000,20000 --out $(BENCH_OUT)/scale.md \
		--index_bench_out $(BENCH_OUT)/index_trained.md
	$(PY) bench/distributed_bench.py --rounds 1 --steps 60 --out $(BENCH_OUT)/distributed.md

# The pipeline at 20k, 200k and 1M items (about an hour on 2 cores).
bench-scale: install
	$(PY) bench/scale.py --sizes 20000,200000,1000000 --out bench/results/scale.md \
		--index_bench_out bench/results/index_1m.md

clean:
	rm -rf $(VENV) workdir
