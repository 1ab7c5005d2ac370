# Two commands for a fresh clone:  `make demo`  and  `make test`.
# Both create .venv (if needed) and install imagpose with the tested pins from constraints.txt; the torch pin
# keeps pip on the CPU build where a local wheel exists (otherwise pip would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
FIXTURES ?= ../shared/fixtures/official

.PHONY: demo test test-slow bench verify lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-run: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.stamp-dev: $(VENV)/.stamp-run
	$(PIP) install --quiet -c constraints.txt -e ".[dev,export,cpu,kernels,bench]"
	touch $@

demo: $(VENV)/.stamp-run  ## set up and run every scenario on the shipped samples -> outputs/demo/
	$(BIN)/imagpose demo --out outputs/demo

test: $(VENV)/.stamp-dev  ## set up and run the default test tier (CPU, < 15 min on 2 cores)
	$(BIN)/python -m pytest

test-slow: $(VENV)/.stamp-dev  ## full-size (SD1.5) tests, several minutes each on CPU
	$(BIN)/python -m pytest -m slow

bench: $(VENV)/.stamp-dev  ## pytest-benchmark: torch vs ONNX Runtime per UNet step (CPU), medians + ratio
	mkdir -p outputs/bench
	$(BIN)/python -m pytest tests/bench -m bench --benchmark-json=outputs/bench/unet_step.json
	$(BIN)/python scripts/bench_summary.py outputs/bench/unet_step.json

verify: $(VENV)/.stamp-run  ## check against the official-code fixtures
	$(BIN)/imagpose verify-official $(FIXTURES)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs .pytest_cache
