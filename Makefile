# softrepro — two commands do everything:
#   make reproduce [SCALE=smoke|cpu|paper] [PAPERS=id1,id2] [FAMILY=losses,softmax,kernels] [CORES=all] [ARGS='extra snakemake options']
#   make test
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
SCALE   ?= cpu
PAPERS  ?= all
FAMILY  ?= all
CORES   ?= all
PROFILE ?= workflow/profiles/default
ARGS    ?=
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.softrepro-installed
LOCK    := requirements.lock

TRITON  := 3.9.0

.PHONY: install lock reproduce test test-slurm test-faults test-triton validate dry-run estimate clean

# The environment is the lock file's exact versions (torch's CPU build among them), then the
# project itself without resolving anything again.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m softrepro.methods.kernels.two_pass  # the C softmax kernels (rebuilt on use when their source changes)
	@touch $@

install: $(STAMP)

# Regenerate the lock file from pyproject.toml after changing a dependency (uv's resolver; torch
# is held at its CPU build so the lock pulls no CUDA wheels: where no local wheel folder has it,
# set UV_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, and PIP_EXTRA_INDEX_URL for install).
lock:
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q uv
	echo "torch==2.13.0+cpu" > $(VENV)/torch-cpu.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	    $(if $(wildcard /opt/wheels),--find-links /opt/wheels) --constraint $(VENV)/torch-cpu.txt \
	    --no-header --annotation-style line -o $(VENV)/lock.tmp
	{ head -n 3 $(LOCK); cat $(VENV)/lock.tmp; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

reproduce: install
	$(BIN)/python -m softrepro.cli dag --profile $(PROFILE) --cores $(CORES) --config scale=$(SCALE) papers=$(PAPERS) families=$(FAMILY) $(ARGS)
	@echo "report: results/$(SCALE)/report.pdf and results/$(SCALE)/report.html"

test: install
	$(BIN)/python -m pytest

# Every fault-injection case (the quick ones also run in `make test`), then benchmarks/faults.md.
test-faults: install
	SOFTREPRO_FAULTS_REPORT=benchmarks/faults.md $(BIN)/python -m pytest -x -m "faults or not faults" tests/test_heal.py tests/test_faults.py

# The smoke DAG through workflow/profiles/slurm on a single-node SLURM started on this machine
# (as root; Debian's slurm-wlm and munge are installed when missing).
test-slurm: install
	$(BIN)/python -m pytest -m slurm -p no:cacheprovider tests/test_slurm.py

# The Triton GPU kernels and benchmarks on the CPU, through Triton's interpreter.  triton goes into
# build/triton-<version>, on the path of this target only: the CPU install stays without it.
test-triton: install
	@test -d build/triton-$(TRITON)/triton || $(BIN)/python -m pip install -q --no-deps --target build/triton-$(TRITON) triton==$(TRITON)
	TRITON_INTERPRET=1 PYTHONPATH=build/triton-$(TRITON) $(BIN)/python -m pytest -m triton tests/test_triton_kernels.py

validate: install
	$(BIN)/python -m softrepro.cli validate

estimate: install
	$(BIN)/python -m softrepro.cli estimate --scale $(SCALE) --papers $(PAPERS) --families $(FAMILY)

dry-run: install
	$(BIN)/snakemake --profile $(PROFILE) --cores $(CORES) --config scale=$(SCALE) papers=$(PAPERS) families=$(FAMILY) -n

clean:
	rm -rf results .snakemake
