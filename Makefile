# Two entry points for a fresh Debian machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: serve test test-fast demo venv peers migration clean

venv: $(VENV)/.installed

# torch first and pinned (constraints.txt): otherwise monai pulls the newest torch with GBs of CUDA.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

serve: venv
	$(BIN)/radfusion serve

demo: venv
	$(BIN)/radfusion demo

peers:
	scripts/install-peers.sh

test: venv peers
	$(BIN)/pytest

test-fast: venv
	$(BIN)/pytest -m "not slow"

# Draft the migration for a model change (radfusion/migrations/versions/); review it, then commit it with the change.
migration: venv
	$(BIN)/python -m radfusion.schema "$(MESSAGE)"

clean:
	rm -rf $(VENV) radfusion-data .pytest_cache
