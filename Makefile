# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aas-ray run --strategies none,random,aas,supervised --parallel 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
