# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-test
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-fast lint bench clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One pip command installs everything (torch pinned, moto[server] resolved together with s3fs). The report's browser
# tests (tests/test_report.py) need Chromium: installed here when missing and this is root with apt-get (Debian's
# package works offline, browser downloads do not); without it those tests skip and say so.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[test]"
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -q && apt-get install -y -q chromium; } || \
		echo "chromium not installed: the browser tests of tests/test_report.py will skip"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flows.cli demo --compare

# Two pytest workers with one torch thread each: the suite waits on servers and subprocesses for much of its
# time, so two workers take 9 min where one process with two threads took 14 (2-core dev box).
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS)

# Developer loop: skips the tests marked integration (servers, subprocesses, training, long solves; see
# docs/benchmarks.md). `make test` still runs everything.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) -m "not integration"

lint: $(STAMP)
	$(VENV)/bin/ruff check rgi_core flows tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_inversion.py

clean-venv:
	rm -rf $(VENV)
