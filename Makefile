# `make test` is the README's second set-up command, `make demo` its third (no Docker needed).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test docs demo bench

$(PY):
	python3 -m venv $(VENV)

# Reinstalls only when pyproject.toml changed since the last install.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

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

# One root rotation A->B on this machine, no Docker: real sidecar processes, OpenBao when
# installed, Consul and Kafka doubles as processes; prints progress and the picture's path.
demo: $(VENV)/.installed-demo
	$(PY) -m tests.demo

# Only the demo extra (quicker on a fresh machine), unless the test extra is installed already.
$(VENV)/.installed-demo: pyproject.toml | $(PY)
	[ $(VENV)/.installed -nt pyproject.toml ] || $(PY) -m pip install -q -e '.[demo]'
	touch $@

bench: install
	$(PY) -m tests.bench bundle
