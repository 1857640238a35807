# Newcomer entry points: `make report` (the main job) and `make test` (the gate).
# Both create .venv and install the project with its test extra on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed
# The CPU wheel of this release is what CI and the team measure with; override for a GPU box.
TORCH_SPEC ?= torch==2.13.0
PYTEST_WORKERS ?= auto

.PHONY: install report test test-serial bench docs lint mutate clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

report: $(STAMP)
	$(PY) -m harness report

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS)

test-serial: $(STAMP)
	$(PY) -m pytest

# Timed benchmarks: serial (pytest-benchmark refuses to time under xdist). Extra pytest-benchmark
# options through BENCH_ARGS, e.g. make bench BENCH_ARGS="--benchmark-autosave".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m pytest tests/benchmarks --benchmark-only -p no:xdist $(BENCH_ARGS)

# The docs extra (mkdocs) on top of the test extra: make docs and make lint install it themselves.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,docs]"
	touch $(DOCS_STAMP)

# The reference pages (docs/, nav in mkdocs.yml) as a site in site/; --strict: a broken link or
# a page left out of the nav fails the build (not with --quiet, which hides the warnings it counts).
docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

# Lint builds the docs strictly too (the docs target).
lint: docs
	$(PY) -m ruff check harness tests conftest.py
	$(VENV)/bin/lint-imports

# Mutation testing (minutes; not part of the gate): how many changes to the model files the tests
# notice. MUTATE_PATHS picks the files, MUTATE_ARGS adds options (docs/mutation.md).
mutate: $(STAMP)
	$(PY) -c "import mutmut" 2>/dev/null || \
		$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,mutation]"
	$(PY) -m harness mutate $(or $(MUTATE_PATHS),fixed/skip_modules.py fixed/basic_blocks.py) $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks site
