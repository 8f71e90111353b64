# Everything runs inside .venv; `make venv` (re)builds it only when pyproject.toml changes.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint benchmark perf

venv: $(STAMP)

# torch goes in first and pinned: installing the package first would pull the multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	touch $@

demo: venv
	$(PY) -m bioformers.demo --out output/

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

benchmark: venv
	$(PY) benchmarks/pbmc3k_embedding.py

# speed, FLOP utilisation and memory (see benchmarks/perf.py; `--quick` for a few-minute check)
perf: venv
	$(PY) benchmarks/perf.py
