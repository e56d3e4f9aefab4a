# Two commands: `make book` (execute notebooks, render the book) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
export OMP_WAIT_POLICY ?= PASSIVE
RUN_ARGS ?=

.PHONY: book test venv smoke clean bench help

help:
	@echo "make book   execute the notebooks ($(PROFILE) profile) and render the book to _build/html"
	@echo "make test   run the test suite"
	@echo "make smoke  a fast book on the smoke profile"
	@echo "make clean  remove executed notebooks, results and the build"

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

book: venv
	$(PY) -m neuroage_utils.run --profile $(PROFILE) $(RUN_ARGS)

smoke: venv
	$(PY) -m neuroage_utils.run --profile smoke $(RUN_ARGS)

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) bench/bench_book.py --profile $(PROFILE)

clean:
	rm -rf _build executed results .cache _toc.partial.yml
