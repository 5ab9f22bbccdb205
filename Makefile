# softrepro — two commands do everything:
#   make reproduce [SCALE=smoke|cpu|paper] [PAPERS=id1,id2] [CORES=all] [ARGS='extra snakemake options']
#   make test
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
SCALE   ?= cpu
PAPERS  ?= all
CORES   ?= all
PROFILE ?= workflow/profiles/default
ARGS    ?=
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.softrepro-installed

.PHONY: install reproduce test validate dry-run clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch is pinned in pyproject.toml (torch==2.13.0): a bare `torch` would pull CUDA wheels
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

install: $(STAMP)

reproduce: install
	$(BIN)/snakemake --profile $(PROFILE) --cores $(CORES) --config scale=$(SCALE) papers=$(PAPERS) $(ARGS)
	@echo "report: results/$(SCALE)/report.pdf and results/$(SCALE)/report.html"

test: install
	$(BIN)/python -m pytest

validate: install
	$(BIN)/python -m softrepro.cli validate

dry-run: install
	$(BIN)/snakemake --profile $(PROFILE) --cores $(CORES) --config scale=$(SCALE) papers=$(PAPERS) -n

clean:
	rm -rf results .snakemake
