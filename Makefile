# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv.
# On a GPU machine run `make gpu` once: FAISS's GPU build (requirements-gpu.txt) replaces the
# CPU one, and every later target keeps it (the choice is kept in .venv/.faiss).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FAISS ?= $(shell cat $(VENV)/.faiss 2>/dev/null || echo cpu)
$(if $(filter cpu gpu,$(FAISS)),,$(error FAISS must be cpu or gpu, not '$(FAISS)'))
REQUIREMENTS := $(if $(filter gpu,$(FAISS)),requirements-gpu.txt,requirements.txt)
OTHER_FAISS := $(if $(filter gpu,$(FAISS)),faiss-cpu,faiss-gpu)

.PHONY: demo test test-fast bench gpu doctor clean

# Both FAISS builds ship the module faiss: the other build goes first, with the files they share.
$(STAMP): requirements.txt requirements-gpu.txt requirements-base.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	if $(BIN)/pip show --quiet $(OTHER_FAISS) 2>/dev/null; then $(BIN)/pip uninstall --quiet -y $(OTHER_FAISS) faiss-$(FAISS); fi
	$(BIN)/pip install --quiet -r $(REQUIREMENTS)
	$(BIN)/pip install --quiet --no-deps -e .
	echo $(FAISS) > $(VENV)/.faiss
	touch $(STAMP)

gpu:
	rm -f $(STAMP)
	$(MAKE) FAISS=gpu $(STAMP)
	$(BIN)/aas-ray doctor

doctor: $(STAMP)
	$(BIN)/aas-ray doctor

# One seed by default (about 10 minutes on 2 cores); a verdict needs several:
# make demo SEEDS=0,1,2,3,4 (about an hour on 2 cores) prints paired differences with 95 % intervals.
SEEDS ?= 0
demo: $(STAMP)
	$(BIN)/aas-ray run --strategies none,random,aas,supervised --parallel 2 --seeds $(SEEDS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
