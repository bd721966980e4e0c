# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install test demo benchmark clean

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

# `dvc repro` brings every stage up to date (on a fresh clone the deterministic stages reproduce the committed
# results); the forced second pass runs the analysis stages for real so that MLflow shows each of them.
# The organism itself is not retrained (`dvc repro -f pretrain`, about 16 minutes, does that).
demo: $(STAMP)
	dvc repro
	dvc repro --force --single-item extract score select finetune evaluate
	$(PY) -m seg4diff.summary

benchmark: $(STAMP)
	$(PY) benchmarks/attention_capture.py

clean:
	rm -rf $(VENV)
