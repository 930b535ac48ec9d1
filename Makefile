# Two commands do all set-up: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser-installed
MODE   ?= quick

# Where datasets are looked for (os.pathsep-separated). ../shared/data is the
# offline copy that sits beside a checkout on the course machines.
PRUNINGLIB_DATA ?= $(CURDIR)/data:$(CURDIR)/../shared/data
export PRUNINGLIB_DATA
# Batch runs (make run / make test) have no widget front end: explorers draw static figures.
export PRUNINGLIB_STATIC ?= 1

.PHONY: install run test test-paper test-browser bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[deploy,llm]"
	$(PY) -m ipykernel install --sys-prefix --name pruning --display-name "Python (pruning)" >/dev/null
	touch $(STAMP)

run: install
	$(PY) -m pruninglib.run --mode $(MODE)

test: install
	$(PY) -m pytest -n 2 --dist loadfile

# Every lesson's paper-mode code path (--smoke, stand-in data) and every resume kill test: longer than make test
# allows on a 2-core CPU (tens of minutes); run it before spending GPU hours.
test-paper: install
	PRUNINGLIB_SLOW_TESTS=1 $(PY) -m pytest tests/test_paper_smoke.py tests/test_resume_lessons.py

# The device check (bench/gpu_check.py): smoke runs on CUDA, throughput and latency ratios -> bench/GPU.md.
gpu-check: install
	$(PY) bench/gpu_check.py

# Lessons 00, 01 and 04 in JupyterLab in headless Chromium with live widgets (tests/browser/check_lessons.py).
# Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver); says so when
# they are missing and fails. Screenshots in runs/browser/. BROWSER_ARGS="--lessons 04" checks one lesson.
BROWSER_ARGS ?=
test-browser: install $(BROWSER_STAMP)
	$(PY) tests/browser/check_lessons.py $(BROWSER_ARGS)

$(BROWSER_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[deploy,llm,browser]"
	touch $(BROWSER_STAMP)

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache
