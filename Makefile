# dpcharge: `make demo` runs the example end to end, `make test` runs the test suite,
# `make benchmarks` computes the DFT densities and runs the accuracy benchmarks (hours): the
# paper's experiments, then issue 15's cost per step, ablations and 60-CPU-minute table, then
# issue 16's ensemble uncertainty and concurrent learning.
# Both create the virtual environment .venv (with `python3 -m venv`) if it is missing.

VENV ?= .venv
PYTHON := $(VENV)/bin/python

.PHONY: demo test lint install benchmarks

demo: $(VENV)/.installed
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/demo.sh

test: $(VENV)/.installed-test lint
	$(PYTHON) -m pytest

# Training steps per benchmark run: 100000 by default (about 16 h on 2 cores, see
# docs/benchmarks.md); `make benchmarks STEPS=10000` is the budget of the committed results.
# Densities: the snapshots the experiments use (Si64: 5 to train, 1 to test; the same Si64
# structures with the ultrasoft pseudopotential, si64us; two of them with k-points, si64k),
# then the large cells.
STEPS ?= 100000
JOBS ?= 2

benchmarks: $(VENV)/.installed
	$(PYTHON) benchmarks/data/make_densities.py --systems si64 si64us --snapshots 6
	$(PYTHON) benchmarks/data/make_densities.py --systems si64hot
	$(PYTHON) benchmarks/data/make_densities.py --systems si64k --seeds 1 6
	$(PYTHON) benchmarks/data/make_densities.py --systems si64k3
	$(PYTHON) benchmarks/data/make_densities.py --systems alslab --snapshots 4
	$(PYTHON) benchmarks/data/make_densities.py --systems almg32 asi64 --snapshots 3
	$(PYTHON) benchmarks/data/make_densities.py --systems water32 --snapshots 7
	$(PYTHON) benchmarks/data/make_densities.py --systems fe16 --snapshots 3
	$(PYTHON) benchmarks/data/make_densities.py --systems si216 almg108 water64
	$(PYTHON) benchmarks/accuracy.py --steps $(STEPS) --jobs $(JOBS)
	$(PYTHON) benchmarks/accuracy.py --report
	$(PYTHON) benchmarks/step_cost.py --variants template exclude_real --allocators glibc tcmalloc --table
	$(PYTHON) benchmarks/step_cost.py --variants exclude_real --allocators glibc glibc_tuned tcmalloc --steps 800
	$(PYTHON) benchmarks/step_cost.py --variants exclude_real_angular exclude_real_angular_sel40 --allocators tcmalloc --steps 600
	$(PYTHON) benchmarks/baseline_ablation.py --runs overhead screen budget loss optimiser width schedule --alone --table
	$(PYTHON) benchmarks/budget.py --jobs $(JOBS) --table --ensembles si64k_input_lr1e-3_2models si64us_input_lr1e-3_2models water32_4structures_input_lr1e-3_2models
	$(PYTHON) benchmarks/spin.py --variant angular --jobs $(JOBS)
	$(PYTHON) benchmarks/uncertainty.py --experiments ranking water points structures --jobs $(JOBS) --table

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install: $(VENV)/.installed

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python setup.cfg pyproject.toml
	$(PYTHON) -m pip install --quiet -e .
	touch $@

# The MPI tests need Open MPI (Debian's openmpi-bin) and mpi4py, the Quantum ESPRESSO tests
# pw.x and its pseudopotentials (Debian's quantum-espresso, quantum-espresso-data): installed
# here when root; without them those tests are skipped with the reason.
$(VENV)/.installed-test: $(VENV)/bin/python setup.cfg pyproject.toml
	@if ! command -v mpirun >/dev/null || ! command -v pw.x >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq openmpi-bin libopenmpi-dev quantum-espresso quantum-espresso-data; \
	  else echo "mpirun or pw.x missing and not root: the MPI and pw.x tests will be skipped"; fi; fi
	$(PYTHON) -m pip install --quiet -e ".[test,mpi]"
	touch $(VENV)/.installed $@
