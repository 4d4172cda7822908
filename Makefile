# Two entry points: `make demo` and `make test`. Each creates .venv with the pinned installs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

install: $(STAMP)

# requirements.lock pins every package (NeMo 3.0.0, torch 2.13.0 CPU, numpy 1.26.4 + pyarrow<26 so that
# pyctcdecode's numpy<2 pin and NeMo's datasets import both hold); setup.cfg names the direct ones.
$(STAMP): setup.cfg requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c requirements.lock -e '.[lm,export,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) .pytest_cache
