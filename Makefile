# Two commands set up and run a fresh machine:
#   make build   # venv + dependencies, then build recipes/ffnet.yaml end to end
#   make test    # venv + dependencies, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup build tiny test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $@

build: setup
	$(BIN)/modelbuild recipes/ffnet.yaml

tiny: setup
	$(BIN)/modelbuild recipes/tiny.yaml

test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check buildsys tests benchmarks
	$(BIN)/lint-imports  # the import contracts in pyproject.toml

bench: setup
	$(BIN)/python benchmarks/noop.py
	$(BIN)/python benchmarks/stages.py

clean:
	rm -rf build release dist .cache recipes/build recipes/dist recipes/.cache  # recipes/*: the old layout
