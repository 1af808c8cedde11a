# `make demo` and `make test` set everything up themselves: system packages (when missing), the
# virtual environment in .venv, the pinned Python packages. Re-running is quick when nothing changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install system-deps constraints up down clean

demo: $(STAMP)
	$(BIN)/llamaline demo --data-root data

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

system-deps:
	@bash infra/scripts/system-deps.sh

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "llamaline needs Python >= 3.11 (found $$($(PYTHON) --version)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when the project's requirements change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt infra/scripts/system-deps.sh infra/scripts/build-kenlm.sh
	@bash infra/scripts/system-deps.sh
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@bash infra/scripts/build-kenlm.sh $(BIN)
	@touch $@

# Re-pin after changing dependency ranges in pyproject.toml.
constraints: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

up: $(STAMP)
	$(BIN)/llamaline up

down: $(STAMP)
	$(BIN)/llamaline down

clean:
	rm -rf $(VENV) data .llamaline .pytest_cache
