# Two commands for a fresh clone:  `make demo`  and  `make test`.
# Both create .venv (if needed) and install imagpose with the tested pins from constraints.txt; the torch pin
# keeps pip on the CPU build where a local wheel exists (otherwise pip would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
FIXTURES ?= tests/fixtures/official

.PHONY: .venv-triton demo test test-slow bench verify lint clean

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

# The Triton server environment: the tritonserver binary of the nvidia-pytriton wheel, which pins numpy<2, beside
# imagpose (the Python models import it), ONNX Runtime and onnx, with the overrides of serving/triton/server-constraints.txt
TRITON_ENV ?= .venv-triton
SERVER_CONSTRAINTS := serving/triton/server-constraints.txt

$(TRITON_ENV)/.stamp: pyproject.toml constraints.txt $(SERVER_CONSTRAINTS)
	$(PYTHON) -m venv $(TRITON_ENV)
	grep -v '^opencv' constraints.txt | cat - $(SERVER_CONSTRAINTS) > $(TRITON_ENV)/constraints.txt
	$(TRITON_ENV)/bin/pip install --quiet -c $(TRITON_ENV)/constraints.txt -e '.[cpu]' nvidia-pytriton onnx
	touch $@

.venv-triton: $(TRITON_ENV)/.stamp  ## the Triton server environment the end-to-end serving tests start servers from

# IMAGPOSE_REQUIRE_SERVERS=1: a missing server environment fails the serving tests instead of skipping them
test: $(VENV)/.stamp-dev $(TRITON_ENV)/.stamp  ## set up and run the default test tier (CPU, < 15 min on 2 cores)
	IMAGPOSE_REQUIRE_SERVERS=1 IMAGPOSE_TRITON_ENV=$(abspath $(TRITON_ENV)) $(BIN)/pytest

test-slow: $(VENV)/.stamp-dev $(TRITON_ENV)/.stamp  ## full-size (SD1.5) tests, the GPU script's dry run, several minutes each on CPU
	IMAGPOSE_REQUIRE_SERVERS=1 IMAGPOSE_TRITON_ENV=$(abspath $(TRITON_ENV)) $(BIN)/pytest -m slow

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
