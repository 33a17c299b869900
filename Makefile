# Two commands do all the set-up: `make run` (environment + dvc repro) and `make test` (environment + tests).
# A supported interpreter (3.11 to 3.13): python3 when it is one, else the newest python3.1x on the PATH.
# Override with `make PYTHON=/path/to/python3.12`.
SUPPORTED = import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))
PYTHON ?= $(firstword $(foreach p,python3 python3.13 python3.12 python3.11,\
	$(shell command -v $(p) >/dev/null 2>&1 && $(p) -c '$(SUPPORTED)' >/dev/null 2>&1 && echo $(p))))
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: env run test lint bench clean

$(BIN)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "error: no Python 3.11, 3.12 or 3.13 found on the PATH;\
	 install one, or run make PYTHON=/path/to/python3.12" >&2; exit 1; }
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
