# Quick start: `make run` trains and evaluates the default config, `make test` runs the tests.
# Both create .venv and install what is missing on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default

.PHONY: run test clean

$(VENV)/.installed: requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# The release's three stages, each from the one before: stage 1 (cross-attention) into
# $(WORKDIR)/stage1, stage 2 (the full CAMP, fusion and score layers trained) into
# $(WORKDIR)/stage2, stage 3 (everything fine-tuned) into $(WORKDIR). The last run prints
# the test table of the three.
run: $(VENV)/.installed
	$(PY) -m camp_jax.main --config=configs/default.py:stage1 --workdir=$(WORKDIR)/stage1
	$(PY) -m camp_jax.main --config=configs/default.py:stage2 --workdir=$(WORKDIR)/stage2 \
	    --config.init_from=$(WORKDIR)/stage1
	$(PY) -m camp_jax.main --config=configs/default.py:stage3 --workdir=$(WORKDIR) \
	    --config.init_from=$(WORKDIR)/stage2

# libtpu goes beside the venv, not in it: CPU runs never probe for a TPU, and the tests'
# compile-only TPU checks load it through TPU_LIBRARY_PATH (tests/conftest.py). Only for the
# jax whose libtpu is known (jax 0.10.2 -> libtpu 0.0.42); elsewhere those tests skip.
$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	if $(PY) -c 'import jax, sys; sys.exit(jax.__version__ != "0.10.2")'; then \
	  $(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/tpu-plugin 'libtpu==0.0.42.*'; fi
	touch $@

test: $(VENV)/.test-installed
	$(PY) -m pytest -q --durations=10 tests

clean:
	rm -rf $(WORKDIR)
