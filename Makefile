# The two set-up commands the README opens with.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint bench run

$(PY):
	python3 -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install -q -e '.[test]'

# Installs, lints, type-checks and runs the whole suite. Fails if no test ran.
test: install
	$(VENV)/bin/ruff check sidecar monitor tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) -m tests.bench bundle
