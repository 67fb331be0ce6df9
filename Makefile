# The two commands a newcomer types (see README.md):
#   make run    installs everything and opens the console on the embedded default
#   make test   installs everything plus test needs and runs the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test check install install-test lint format screenshots bench

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(VENV)/bin/activate
	./scripts/install-system-packages.sh run
	$(PY) -m pip install -q .

install-test: $(VENV)/bin/activate
	./scripts/install-system-packages.sh test
	$(PY) -m pip install -q -e '.[test]'
	@# an editable install leaves our own modules uncompiled, and with
	@# PYTHONDONTWRITEBYTECODE set every `sendense` the tests start compiles them again
	$(PY) -m compileall -q engine sendense_tui sendense_api >/dev/null

run: install
	$(VENV)/bin/sendense

# checks that keep the layers, the types and the size of functions as they are
# (configured in pyproject.toml: [tool.ruff.lint] C90, [tool.importlinter], [tool.mypy])
check: $(VENV)/bin/activate
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: install-test check
	$(VENV)/bin/pytest -n 4 --durations=20

lint: check

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

screenshots:
	$(PY) scripts/make_screenshots.py

bench:
	$(PY) -m bench
