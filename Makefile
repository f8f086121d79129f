# The two set-up commands the README opens with.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test docs bench

$(PY):
	python3 -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install -q -e '.[test]'

# Installs, lints, builds the docs site, type-checks and runs the whole suite. Fails if no
# test ran.
test: install
	$(VENV)/bin/ruff check sidecar monitor tests
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider

# The docs site into site/; strict, so a broken link, anchor or page fails.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) -m tests.bench bundle
