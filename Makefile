# lipo_if — developer entry points. `make test` and `make demo` are the two README commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

# Real data: $LIPO_IF_DATA if set, else ../shared/data when it exists.
ifeq ($(origin LIPO_IF_DATA), undefined)
  ifneq ($(wildcard ../shared/data/lipophilicity.csv),)
    LIPO_IF_DATA := $(abspath ../shared/data)
  endif
endif
export LIPO_IF_DATA

DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install test demo bench bench-peers cuda-check clean ext

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV)/bin/python setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*.h)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(TORCH_PIN) ninja numpy
	$(PIP) install -q --no-build-isolation -e .[dev]
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	@if [ -z "$$LIPO_IF_DATA" ]; then echo "LIPO_IF_DATA is not set and ../shared/data does not exist; trying the download cache."; fi
	$(VENV)/bin/lipo-if demo --out $(DEMO_OUT)

bench: install
	$(PY) -m pytest benchmarks -q --benchmark-only --benchmark-columns=min,median,mean,rounds

cuda-check:
	$(PY) tools/cuda_check.py

clean:
	rm -rf build *.egg-info lipo_if/_C*.so $(VENV) .pytest_cache
