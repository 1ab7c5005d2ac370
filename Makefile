# Two commands for a fresh clone:  `make demo`  and  `make test`.
# Both create .venv (if needed) and install imagpose with the tested pins from constraints.txt; the torch pin
# keeps pip on the CPU build where a local wheel exists (otherwise pip would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
FIXTURES ?= tests/fixtures/official

.PHONY: demo test test-slow bench verify lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-run: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-run
	$(PIP) install --quiet -c constraints.txt -e ".[dev,export,cpu,kernels,bench,train,serve,quant]"
	touch $@

demo: $(VENV)/.stamp-run  ## set up and run every scenario on the shipped samples -> outputs/demo/
	$(BIN)/imagpose demo --out outputs/demo

test: $(VENV)/.stamp-dev  ## set up and run the default test tier (CPU, < 15 min on 2 cores)
	$(BIN)/pytest

test-slow: $(VENV)/.stamp-dev  ## full-size (SD1.5) tests, several minutes each on CPU
	$(BIN)/pytest -m slow

bench: $(VENV)/.stamp-dev  ## pytest-benchmark (UNet step torch vs ORT; one step of every method) + the quick report
	mkdir -p outputs/bench
	$(BIN)/pytest tests/bench -m bench --benchmark-json=outputs/bench/pytest_benchmark.json
	$(BIN)/python scripts/bench_summary.py outputs/bench/pytest_benchmark.json
	$(BIN)/imagpose bench --device cpu --quick --out outputs/bench/quick

verify: $(VENV)/.stamp-run  ## check against the official-code fixtures
	$(BIN)/imagpose verify-official $(FIXTURES)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
