# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install test test-fast lint demo benchmark ui-check clean

install: $(STAMP)

# torch first and pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest

# ruff's linter and formatter check (configured in pyproject.toml: line length 120); CI runs it beside the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# everything but the real-server, end-to-end and kill tests (marked slow)
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The pipeline flow, once, against one Prefect server (started here unless PREFECT_API_URL names one): each stage
# that dvc.lock calls up to date is reused (its MLflow run shows the recorded outputs), the others run and are
# committed to dvc.lock. On a fresh clone that is prepare and extract; the organism is not retrained
# (`dvc repro -f pretrain` does that: about 19 minutes with SEG4DIFF_NUMERICS=native, 2.7× that pinned).
demo: $(STAMP)
	$(PY) -m flows.pipeline
	$(PY) -m flows.summary

benchmark: $(STAMP)
	$(PY) benchmarks/attention_capture.py

# Opens the MLflow UI in headless Chromium (Debian's package, installed here when missing) after `make demo`.
ui-check: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { echo "ui-check: installing Debian's chromium (apt-get)"; \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  { echo "ui-check: cannot install chromium (apt-get failed or needs root): the MLflow UI check needs a browser"; exit 1; }; }
	bash .ci/mlflow_ui_check.sh

clean:
	rm -rf $(VENV)
