# Every target sets itself up: it makes .venv on first use, and reinstalls
# when pyproject.toml changes (the stamp file is older than it).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEV    := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck bench crash-test matrix clean

# The tour: the same six scenarios on every tier, then a table side by side.
demo: $(DEV)
	$(PY) -m benchmarks.tour

test: lint typecheck
	$(PY) -m pytest

lint: $(DEV)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(DEV)
	$(PY) -m mypy

bench: $(DEV)
	$(PY) -m benchmarks.throughput_latency --json benchmarks/results/throughput_latency.json
	$(PY) -m benchmarks.persistence

# kill -9 the final tier on disk 1,000 times at random moments, and tally (~4 min here).
crash-test: $(DEV)
	$(PY) -m benchmarks.crash --kills 1000 --json benchmarks/results/crash.json

# The README's tier matrix, from the contract suite's lacks markers (tests/matrix.py).
matrix: $(DEV)
	$(PY) -m tests.matrix README.md

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)

$(DEV): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks *.egg-info
