# Every target sets itself up: it makes .venv on first use, and reinstalls
# when pyproject.toml changes (the stamp file is older than it). `make demo`
# installs only the tour's extra; every other target the development stack.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEV    := $(VENV)/.installed-dev
TOUR   := $(VENV)/.installed-tour

.PHONY: demo test lint typecheck bench bench-full notebooks crash-test crash-test-pg exactly-test-pg matrix screenshot clean

# The tour: the same seven scenarios on every tier, then a table side by side.
demo: $(TOUR)
	$(PY) -m benchmarks.tour

test: lint typecheck
	$(PY) -m pytest

lint: $(DEV)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: $(DEV)
	$(PY) -m mypy

# The benchmark suite (pytest-benchmark; never part of `make test`): the quick mode takes
# under ten minutes on two cores, --full longer. Each writes its JSON, with the machine,
# to benchmarks/results/ and prints the headline figures and targets from it.
BENCH := $(PY) -m pytest benchmarks -p no:cacheprovider --timeout=1800 \
	--benchmark-columns=median,rounds --benchmark-sort=name \
	-W ignore::pytest_benchmark.logger.PytestBenchmarkWarning

bench: $(DEV)
	mkdir -p benchmarks/results
	$(BENCH) --benchmark-json=benchmarks/results/quick.json
	$(PY) -m benchmarks.report benchmarks/results/quick.json

bench-full: $(DEV)
	mkdir -p benchmarks/results
	$(BENCH) --full --benchmark-json=benchmarks/results/full.json
	$(PY) -m benchmarks.report benchmarks/results/full.json

# Re-executes every notebook in place, headless, on the latest results, and saves the
# figures the README shows to notebooks/figures/.
notebooks: $(DEV)
	$(PY) -m benchmarks.run_notebooks

# kill -9 the final tier on disk 1,000 times at random moments, and tally (~4 min here).
crash-test: $(DEV)
	$(PY) -m benchmarks.crash --kills 1000 --json benchmarks/results/crash.json

# kill -9 worker processes of final on PostgreSQL 200 times, and tally (~1 min here);
# the server is $JOBQ_TEST_DSN, as for the tests.
crash-test-pg: $(DEV)
	$(PY) -m benchmarks.crash_pg --kills 200 --json benchmarks/results/crash-pg.json

# Exactly-once effects on PostgreSQL: kill -9 worker processes 200 times and cut one off
# past its lease, with the effect row committed with the completion and apart from it,
# and count each job's rows (~2 min here); the server is $JOBQ_TEST_DSN.
exactly-test-pg: $(DEV)
	$(PY) -m benchmarks.exactly_pg --kills 200 --json benchmarks/results/exactly-pg.json

# The README's tier matrix, from the contract suite's lacks markers (tests/matrix.py).
matrix: $(DEV)
	$(PY) -m tests.matrix README.md

# docs/dashboard.png, the README's picture of the dashboard: a real server with jobs
# flowing, some failing, seen by headless Chromium (apt-get install chromium).
screenshot: $(DEV)
	$(PY) -m tests.screenshot docs/dashboard.png

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The tiers and what the tour draws with: a first `make demo` fetches no more.
$(TOUR): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[tour]'
	touch $@

# dev includes the tour's extra, so a `make test` makes `make demo` ready too.
$(DEV): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(TOUR)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks *.egg-info
