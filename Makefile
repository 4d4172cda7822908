# Two entry points: `make demo` and `make test`. Each creates .venv with the pinned installs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install requirements lint test demo clean

install: $(STAMP)

# requirements.lock pins every package (NeMo 3.0.0, torch 2.13.0 CPU, numpy 1.26.4 + pyarrow<26 so that
# pyctcdecode's numpy<2 pin and NeMo's datasets import both hold); setup.cfg names the direct ones.
$(STAMP): setup.cfg requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c requirements.lock -e '.[lm,export,demo,dev]'
	touch $(STAMP)

# The demo's Debian packages (TTS voices, telephone prompts): the demo tests use them too. Only missing ones
# are installed, so a second run costs a dpkg check.
requirements: $(STAMP)
	$(PY) -m ibnet_nemo.demo --install-only

# Import order, style and formatting (ruff, configured in pyproject.toml); `make test` runs it first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: requirements lint
	$(PY) -m pytest tests

# The offline demo (docs/demo.md): installs the missing Debian TTS/prompt packages and the `demo` extra, builds the
# corpus, trains IBNet, prints the WER table. All of it is `python -m ibnet_nemo.demo` (`--compare` also trains
# QuartzNet beside it).
demo: requirements
	$(PY) -m ibnet_nemo.demo --no-install

clean:
	rm -rf $(VENV) .pytest_cache
