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

# Disk space, checked before anything is written: $(call need_disk,FOLDER,GB,WHAT).
# The virtual environment takes about 6.6 GB (PyPI's torch wheel carries CUDA); make test writes up to about
# 7 GB of temporaries (the smoke sweep's paper-size models and K-FAC factors), removed when it passes.
define need_disk
	@mkdir -p "$(1)"; avail=$$(df -Pk "$(1)" | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$avail" -lt "$(2)" ]; then \
	  echo "error: $(3) needs about $(2) GB free in $(1), and only $$avail GB is free there." >&2; \
	  echo "fix: free disk space there (old clones and their .venv folders, old pytest-of-* folders in the" >&2; \
	  echo "     temporary folder) or point TMPDIR at a larger disk, then rerun." >&2; \
	  exit 1; \
	fi
endef
TMP_ROOT := $(or $(TMPDIR),/tmp)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(if $(wildcard $(VENV)/bin/python),,$(call need_disk,$(CURDIR),8,installing the virtual environment))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[deploy,llm]"
	$(PY) -m ipykernel install --sys-prefix --name pruning --display-name "Python (pruning)" >/dev/null
	touch $(STAMP)

run: install
	$(PY) -m pruninglib.run --mode $(MODE)

test: install
	$(call need_disk,$(TMP_ROOT),8,make test)
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
