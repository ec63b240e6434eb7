# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-slow bench bench-quick bench-memory bench-layers bench-gemm bench-zoo bench-arch lint check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The native kernels (native/csrc) compile against the installed torch, so
# torch and the build tools go in first and quantcore is built without build isolation.
NATIVE_SOURCES := setup.py $(wildcard native/csrc/*)

$(VENV)/.installed-build: $(BIN)/python constraints.txt
	$(PIP_INSTALL) torch setuptools ninja
	touch $@

$(VENV)/.installed-runtime: $(VENV)/.installed-build pyproject.toml $(NATIVE_SOURCES)
	$(PIP_INSTALL) --no-build-isolation -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-build pyproject.toml $(NATIVE_SOURCES)
	$(PIP_INSTALL) --no-build-isolation -e '.[test,lint]'
	touch $@

demo: $(VENV)/.installed-runtime  ## quantize the embedded default model and print the report
	$(BIN)/quantcore demo

test: $(VENV)/.installed-dev  ## the fast test suite
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed-dev  ## the heavier model sweeps (marked slow); fails if none is collected
	$(BIN)/python -m pytest -m slow

bench: $(VENV)/.installed-dev  ## speed/accuracy/size/memory vs fp32, torch.ao, torchao (long; not a test)
	$(BIN)/python -m benchmarks.run

bench-quick: $(VENV)/.installed-dev  ## the same in a few minutes: fewer rounds, ~100M decoder
	$(BIN)/python -m benchmarks.run --quick

bench-memory: $(VENV)/.installed-dev  ## resident memory of a ~1B decoder at inference, vs fp32 and torch.ao
	$(BIN)/python -m benchmarks.memory

bench-layers: $(VENV)/.installed-dev  ## per-layer speed vs fp32 and torch.ao (linear 256-4096 wide, recurrent, encoder layer), 1 thread
	$(BIN)/python -m benchmarks.layers

bench-gemm: $(VENV)/.installed-dev  ## INT8 linear layers next to fbgemm's bare int8 GEMM and the CPU's int8 peak, 1 thread
	$(BIN)/python -m benchmarks.bare_gemm

bench-zoo: $(VENV)/.installed-dev  ## every zoo model vs fp32 and torch.ao, 1 and 2 threads (about 4 minutes)
	$(BIN)/python -m benchmarks.zoo

bench-arch: $(VENV)/.installed-dev  ## ten transformers architectures at base size (768 wide, 2 layers, 1x128 tokens) vs fp32 and torch.ao
	$(BIN)/python -m benchmarks.architectures

lint: $(VENV)/.installed-dev  ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: test test-slow lint

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache native/*/*.so
