# make test: create .venv if missing, install pyglue with test extras, run the suite.
# make demo: same set-up, then run the main job on the embedded Postgres.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: test demo install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/pyglue demo

bench: $(STAMP)
	$(BIN)/python -m perf.bench_sequencer
	$(BIN)/python -m perf.bench_sync
	$(BIN)/python -m perf.bench_billing

clean:
	rm -rf $(VENV) .pyglue build *.egg-info
