# The README's two commands: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch's CPU build must be installed before anything that depends on torch; otherwise pip resolves
# torch from the index and pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# PyPI's Linux torch wheels are the CUDA build; PyTorch's own CPU index is used whenever it answers (an offline
# mirror that already holds the CPU wheel, e.g. through pip's find-links, is used as is).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX_ARGS = $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=5); print('--index-url $(TORCH_CPU_INDEX)')" 2>/dev/null)

.PHONY: venv demo test test-slow bench lint clean help hostile-doc

help:
	@echo "make demo       set up .venv and run the main job on embedded defaults"
	@echo "make test       set up .venv and run the fast test suite"
	@echo "make test-slow  learning runs and other slow tests"
	@echo "make bench      benchmark scripts (print tables)"
	@echo "make lint       ruff and the import contracts (lint-imports)"
	@echo "make hostile-doc  regenerate docs/hostile-inputs.md from the tests' hostile marks"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX_ARGS)
	$(PY) -m pip install --quiet -e ".[dev,export,serve]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/rllib-rec demo

test: venv
	$(PY) -m pytest

test-slow: venv
	$(PY) -m pytest -m slow

bench: venv
	$(PY) bench/env_throughput.py
	$(PY) bench/inference.py
	$(PY) bench/learning.py
	$(PY) bench/ope.py
	$(PY) bench/offline.py
	$(PY) bench/faults.py
	$(PY) bench/serve_load.py

lint: venv
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

# The modules listed here are tests/test_hostile_doc.py's MARKED (that test checks the doc is current).
HOSTILE_TESTS := test_cli.py test_config.py test_hostile_files.py test_sweep.py test_serve_faults.py \
	test_serve.py test_ope.py test_export.py test_train.py
hostile-doc: venv
	$(PY) -m pytest --collect-only -q -p no:cacheprovider $(addprefix tests/,$(HOSTILE_TESTS)) \
		--hostile-table docs/hostile-inputs.md

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
