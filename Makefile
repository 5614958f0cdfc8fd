# Two entry points for a fresh machine (see README): `make quickstart` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install install-core docs quickstart test benchmark-accuracy benchmark-speed clean

# The core install (quickstart) is flcore and its required dependencies only; `make install`
# (the test suite) adds every optional extra: test, ray, plot, flwr, dp, docs.
$(BIN)/flcore: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.extras: $(BIN)/flcore
	$(BIN)/python -m pip install -q -e '.[test,ray,plot,flwr,dp,docs]'
	touch $@

install-core: $(BIN)/flcore

install: $(VENV)/.extras

quickstart: install-core
	$(BIN)/flcore fit --config configs/quickstart.yaml

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: install
	$(BIN)/python -m pytest

benchmark-accuracy: install
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf runs site .pytest_cache   # never the committed evidence under benchmarks/results

benchmark-speed: install
	$(BIN)/python benchmarks/speed.py
