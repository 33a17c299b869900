# Two commands do all the set-up: `make run` (environment + dvc repro) and `make test` (environment + tests).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: env run test lint bench clean

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

env: $(BIN)/.installed  ## create .venv with the pinned dependencies

run: env  ## run the whole pipeline
	$(BIN)/dvc repro

lint: env
	$(BIN)/ruff check flowerpipe stages tests benchmarks

test: env lint  ## lint, then the test suite (CPU only, no internet)
	$(BIN)/python -m pytest -q -ra --durations=15

bench: env  ## data-pipeline throughput on a folder of photos: make bench PHOTOS=path
	$(BIN)/python benchmarks/data_throughput.py $(PHOTOS)

clean:
	rm -rf $(VENV)
