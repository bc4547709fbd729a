# One environment (.venv) for the demo, the tests and the benchmarks.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench bench-floor bench-gpu calibrate drift mutate clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,plots,examples,integrations]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

test: $(STAMP)
	$(BIN)/ruff check lightning_normwatch tests examples benchmarks
	$(BIN)/ruff format --check -q lightning_normwatch tests examples benchmarks
	$(BIN)/python -m pytest -q -m "not slow" tests lightning_normwatch --doctest-modules

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests lightning_normwatch --doctest-modules

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

# what the cheapest per-layer monitor costs every step, next to NormWatch (docs/performance.md)
bench-floor: $(STAMP)
	$(BIN)/python benchmarks/floor.py

# on a machine with a CUDA GPU (skips with its reason without one): sync checks, every-step overhead on the transformer
bench-gpu: $(STAMP)
	PY=$(BIN)/python bash benchmarks/gpu_bench.sh

calibrate: $(STAMP)
	$(BIN)/python benchmarks/calibrate.py

drift: $(STAMP)
	$(BIN)/python benchmarks/drift_sensitivity.py

# mutation testing of the judging modules (not part of `make test`; docs/testing.md, "Mutation testing")
mutate: $(STAMP)
	$(BIN)/python benchmarks/mutate.py

clean:
	rm -rf $(VENV) mutants lightning_logs logs build dist *.egg-info wandb mlruns
