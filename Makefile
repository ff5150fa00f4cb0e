# One-command set-up: `make demo` and `make test` each build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tiec-installed
OUT := out
N ?= 2000

.PHONY: setup test demo bench lint clean fuzz experiment

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch; pyproject declares the range other users may bring.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,bench,experiment]"
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest

demo: setup
	mkdir -p $(OUT)
	$(VENV)/bin/tiec stats examples/albert.tie
	$(VENV)/bin/tiec export examples/albert.tie -o $(OUT)/albert.onnx
	$(VENV)/bin/tiec compile examples/albert.tie -o $(OUT)/albert.py

bench: setup
	$(PY) benchmarks/run.py

# The seed's experiment on data (docs/experiments.md, written by the driver): a few minutes on 2 cores.
$(VENV)/.tiec-experiment: $(STAMP)
	$(PY) -m pip install -q -e ".[experiment]"
	touch $@

experiment: setup $(VENV)/.tiec-experiment
	$(PY) benchmarks/experiment/run.py

# A fuzz campaign of N inputs (`make fuzz N=20000`): counts of successes, diagnostics, bad outcomes.
fuzz: setup
	$(PY) -m tests.fuzzing --n $(N)

lint: setup
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(OUT) build *.egg-info
