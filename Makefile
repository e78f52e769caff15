# The two commands of the README: `make demo` (main job) and `make test` (test suite). Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY ?= 1
# Local benchmark data (AdvBench, GSM8K, ...): the package reads it only through $SLOWED_DATA_DIR.
ifneq ($(wildcard ../shared/data),)
export SLOWED_DATA_DIR ?= $(abspath ../shared/data)
endif

.PHONY: setup setup-demo demo test test-slow bench lint

setup:
	VENV=$(VENV) bash scripts/setup.sh

setup-demo:  # only what the demo needs (no test, lint, DeepSpeed or lm-eval tools): a fresh machine starts sooner
	VENV=$(VENV) EXTRAS=demo bash scripts/setup.sh

demo: setup-demo
	$(PY) -m slowed_peft.scripts.demo --output_dir outputs/demo

# Both tiers run on 2 pytest-xdist workers (pyproject addopts; `-n 0` for one process). CI (.ci/run) runs both.
test: setup  # default tier: <= 5 min on 2 cores
	$(PY) -m pytest -q

test-slow: setup  # slow tier: the wheel, multi-process runs, fresh-interpreter checks, quick studies on the real model
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/bench_tuner.py

lint: setup
	$(VENV)/bin/ruff check slowed_peft tests benchmarks recipes
	$(VENV)/bin/ruff format --check slowed_peft tests benchmarks recipes
	$(VENV)/bin/lint-imports --no-cache
