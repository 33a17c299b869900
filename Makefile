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
# Install profile, one hashed lock each (locks/<profile>.txt): cpu by default, gpu with `make run GPU=1`,
# macos on a Mac; `make test` adds the test tools (locks/dev.txt = cpu + Ray Train (locks/scale.txt) + tools; on GPU, the tools unhashed).
ifeq ($(shell uname -s),Darwin)
PROFILE ?= macos
else ifneq ($(GPU),)
PROFILE ?= gpu
else
PROFILE ?= cpu
endif
TESTED := $(if $(filter cpu,$(PROFILE)),$(BIN)/.installed-dev,$(BIN)/.installed-$(PROFILE) $(BIN)/.tools)

.PHONY: env run test lint bench clean locks smoke dvc.yaml protos mutation

$(BIN)/.installed-%: locks/%.txt pyproject.toml
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "error: no Python 3.11, 3.12 or 3.13 found on the PATH;\
	 install one, or run make PYTHON=/path/to/python3.12" >&2; exit 1; }
	@want=$(if $(filter dev scale,$*),cpu,$*); have=$$(cat $(VENV)/.profile 2>/dev/null || { test -e $(BIN)/.installed-dev -o -e $(BIN)/.installed-cpu \
	&& echo cpu; } || { test -e $(BIN)/.installed-gpu && echo gpu; } || echo $$want); \
	test "$$have" = "$$want" || { echo "error: $(VENV) holds the $$have profile; installing $$want over it would put \
	two builds of TensorFlow and ONNX Runtime in one environment. Run make clean first, or give it a venv of its \
	own: make VENV=.venv-$$want ..." >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	echo $(if $(filter dev scale,$*),cpu,$*) > $(VENV)/.profile
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet --require-hashes $(if $(wildcard locks/$*-build.txt),--build-constraint locks/$*-build.txt) -r $<
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(if $(filter dev,$*),$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r locks/nodeps.txt)
	touch $@

$(BIN)/.installed-dev: locks/nodeps.txt  # the no-deps tools too

$(BIN)/.tools: pyproject.toml locks/nodeps.txt  # test tools beside the gpu or macos lock (pinned in pyproject)
	$(BIN)/python -m pip install --quiet --no-build-isolation -e .[dev]
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r locks/nodeps.txt
	touch $@

env: $(BIN)/.installed-$(PROFILE)  ## create .venv with the locked dependencies of the profile

run: env  ## run the whole pipeline (the whole params.yaml is checked first)
	$(BIN)/flowerpipe check
	$(BIN)/dvc repro

dvc.yaml: env  ## regenerate dvc.yaml: code deps from each stage's import closure, one entry per format
	$(BIN)/python -m flowerpipe.pipeline.dag

lint: $(TESTED)
	$(BIN)/ruff check flowerpipe stages tests benchmarks tools

protos: $(TESTED)  ## regenerate flowerpipe/serving/protos/descriptors.py from the pinned TF Serving and KServe wheels
	$(BIN)/python tools/protos.py

test: $(TESTED) lint  ## lint, then the test suite (with the smoke run on another Python beside it)
	$(BIN)/python -m pytest -q -ra --durations=15

# The suite's strength, measured (minutes; not part of make test): mutmut mutates the functions that compute what is
# reported or decided and the request validation, runs their fast tests, prints the score and the survivors.
mutation: $(TESTED)  ## mutation score of the tests that pin what is reported or decided (docs/testing.md)
	nice -n 10 $(BIN)/python tools/mutation.py

bench: env  ## data-pipeline throughput on a folder of photos: make bench PHOTOS=path
	$(BIN)/python benchmarks/data_throughput.py $(PHOTOS)

clean:
	rm -rf $(VENV)

# The suite's smoke test alone: a fresh uv environment from locks/cpu.txt on another supported Python
# (SMOKE_PYTHON=/path/to/python3.1x to choose) imports everything, runs download and tfrecords, predicts once.
smoke: | $(TESTED)  ## the smoke run on another Python, alone
	$(BIN)/python -m pytest -q -ra tests/test_install.py -k smoke

# Regenerate every lock from pyproject.toml (needs PyPI); each keeps its current pins where it can.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--custom-compile-command "make locks"
locks: $(TESTED)  ## re-resolve locks/*.txt with uv for every profile and platform
	$(UV_COMPILE) --extra pipeline --extra cpu --python-platform x86_64-manylinux_2_28 -o locks/cpu.txt
	$(UV_COMPILE) --extra pipeline --extra cpu --extra scale --python-platform x86_64-manylinux_2_28 -c locks/cpu.txt \
		-o locks/scale.txt
	$(UV_COMPILE) --extra pipeline --extra cpu --extra scale --extra dev --python-platform x86_64-manylinux_2_28 \
		-c locks/cpu.txt -c locks/scale.txt -o locks/dev.txt
	$(UV_COMPILE) --extra pipeline --extra gpu --python-platform x86_64-manylinux_2_28 -c locks/cpu.txt -o locks/gpu.txt
	MACOSX_DEPLOYMENT_TARGET=14.0 $(UV_COMPILE) --extra pipeline --extra macos --python-platform aarch64-apple-darwin \
		-c locks/cpu.txt -o locks/macos.txt
	$(UV_COMPILE) --extra serve --python-platform x86_64-manylinux_2_28 -c locks/cpu.txt -o locks/serve.txt
