# `make test` and `make demo` are the two commands the README shows; both install what they need.
PY ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.xfm-installed
# torch comes from this machine's disk (a CUDA build that runs on CPU); pin it so pip never
# resolves a newer multi-GB wheel from the index.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

export OMP_NUM_THREADS ?= 1
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-long demo clean-venv

$(STAMP): setup.py
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q $(TORCH_PINS)
	$(VPY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q tests -m "not long" $(PYTEST_ARGS)

# the tests that take minutes each on 2 cores: the shortened demo end to end, compiled steps
# under DeepSpeed ZeRO-2/3 and with activation checkpointing
test-long: $(STAMP)
	$(VPY) -m pytest -q tests -m long $(PYTEST_ARGS)

# the demo shares the cores among its ranks itself (scripts/demo_run.py): it gets the Makefile's
# one-thread default only when the caller set OMP_NUM_THREADS
demo: $(STAMP)
	$(if $(filter file,$(origin OMP_NUM_THREADS)),env -u OMP_NUM_THREADS) bash scripts/demo.sh

clean-venv:
	rm -rf $(VENV)
