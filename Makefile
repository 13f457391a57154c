# The README's two commands. Each creates .venv and installs everything it needs.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch's CPU build first where the machine has it on disk (pip's find-links): otherwise the resolver of the
	# whole project below picks PyPI's CUDA build (GBs of nvidia-* wheels); elsewhere this fails and pip's default applies
	$(PY) -m pip install --quiet "torch==2.13.0+cpu" 2>/dev/null || true
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/omicsweep sweep --dataset pbmc68k --model mlp,logreg,majority,random --trials 16 --concurrency 2 --seed 0

test: $(STAMP)
	$(PY) -m pytest --durations=25

clean:
	rm -rf $(VENV) omicsweep-runs .pytest_cache
