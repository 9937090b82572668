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

.PHONY: install test demo bench bench-pairs bench-peers bench-cleanlab bench-chemprop cuda-check clean ext

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

# The same comparisons as medians of interleaved pairs (robust on a shared machine).
bench-pairs: install
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/interleaved_pairs.py $(PAIRS_ARGS)

# lipo_if's LiSSA vs pyDVL's LissaInfluence. pyDVL pins numpy<2, so it gets its own venv (torch first,
# so pip keeps the CPU build); the workload is prepared with the project venv (RDKit), results in runs/peers/.
bench-peers: install
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install -q $(TORCH_PIN)
	.venv-peers/bin/python -m pip install -q 'numpy<2' 'pydvl[influence]==0.10.0'
	test -f runs/peers/workload.pt || $(PY) benchmarks/peers/bench_pydvl.py --prepare runs/peers/workload.pt \
		$(if $(LIPO_IF_DATA),--data-dir $(LIPO_IF_DATA),--synthetic)
	PYTHONPATH=$(CURDIR) .venv-peers/bin/python benchmarks/peers/bench_pydvl.py --workload runs/peers/workload.pt \
		--json runs/peers/pydvl.json $(PEERS_ARGS)

# Wrong-label detection: cleanlab's CleanLearning (regression) vs lipo_if's detectors, side by side.
# cleanlab in its own venv (no torch, no lipo_if there); the workload (features, labels, known corruptions
# and lipo_if's detector values, 3 seeds × noisy/lowdata) is prepared with the project venv; results in runs/peers/.
bench-cleanlab: install
	test -x .venv-cleanlab/bin/python || $(PYTHON) -m venv .venv-cleanlab
	.venv-cleanlab/bin/python -m pip install -q 'cleanlab==2.9.*' scikit-learn numpy
	test -f runs/peers/cleanlab_workload.npz || $(PY) benchmarks/peers/bench_cleanlab.py \
		--prepare runs/peers/cleanlab_workload.npz --seeds 0 1 2 --scenarios noisy lowdata \
		$(if $(LIPO_IF_DATA),--data-dir $(LIPO_IF_DATA))
	.venv-cleanlab/bin/python benchmarks/peers/bench_cleanlab.py --workload runs/peers/cleanlab_workload.npz \
		--json runs/peers/cleanlab.json $(CLEANLAB_ARGS)

# Task-1 peer: chemprop 2.3.1's D-MPNN (its defaults, 50 epochs) on lipo_if's own splits, from its own venv
# (torch pinned first so pip keeps the CPU build); the splits are written (and checked against train_run) with the
# project venv; one JSON per split kind in runs/peers/. ≈ 5 min per split and seed on 2 idle cores.
CHEMPROP_SPLITS ?= random scaffold
bench-chemprop: install
	test -x .venv-chemprop/bin/python || $(PYTHON) -m venv .venv-chemprop
	.venv-chemprop/bin/python -m pip install -q $(TORCH_PIN)
	.venv-chemprop/bin/python -m pip install -q 'chemprop==2.3.1'
	test -f runs/peers/chemprop_splits/meta.json || $(PY) benchmarks/peers/bench_chemprop.py \
		--prepare runs/peers/chemprop_splits --seeds 0 1 2 3 4 --splits random scaffold \
		$(if $(LIPO_IF_DATA),--data-dir $(LIPO_IF_DATA))
	for s in $(CHEMPROP_SPLITS); do .venv-chemprop/bin/python benchmarks/peers/bench_chemprop.py \
		--run runs/peers/chemprop_splits --splits $$s --json runs/peers/chemprop_$$s.json $(CHEMPROP_ARGS) || exit 1; done

cuda-check:
	$(PY) tools/cuda_check.py

clean:
	rm -rf build *.egg-info lipo_if/_C*.so $(VENV) .pytest_cache
