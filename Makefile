# The README's two commands. Each creates .venv and installs everything it needs.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/omicsweep sweep --dataset pbmc68k --model mlp,logreg,majority,random --trials 16 --concurrency 2 --seed 0

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) omicsweep-runs .pytest_cache
