# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODE   ?= quick

# Where datasets are looked for (os.pathsep-separated). ../shared/data is the
# offline copy that sits beside a checkout on the course machines.
PRUNINGLIB_DATA ?= $(CURDIR)/data:$(CURDIR)/../shared/data
export PRUNINGLIB_DATA
# Batch runs (make run / make test) have no widget front end: explorers draw static figures.
export PRUNINGLIB_STATIC ?= 1

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m ipykernel install --sys-prefix --name pruning --display-name "Python (pruning)" >/dev/null
	touch $(STAMP)

run: install
	$(PY) -m pruninglib.run --mode $(MODE)

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache
