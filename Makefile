# Everything runs inside .venv; `make venv` (re)builds it only when pyproject.toml changes.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint benchmark perf docs tutorials

venv: $(STAMP)

# torch goes in first and pinned: installing the package first would pull the multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[test]"
	touch $@

# Sphinx, myst-nb and a Jupyter kernel, on top of the test environment.
DOC_STAMP := $(VENV)/.installed-doc
$(DOC_STAMP): $(STAMP)
	$(PIP) install -e ".[test,doc]"
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

# The documentation site, warnings as errors and every cross-reference checked (-n); opens at docs/_build/html/index.html.
docs: $(DOC_STAMP)
	rm -rf docs/_build docs/generated
	$(VENV)/bin/sphinx-build -W --keep-going -n -b html docs docs/_build/html

# Re-execute every tutorial notebook in place, so the outputs the docs show are current (each takes a few minutes).
tutorials: $(DOC_STAMP)
	cd tutorials && for nb in *.ipynb; do \
		../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1200 "$$nb" || exit 1; \
	done
