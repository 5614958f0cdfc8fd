# Two entry points for a fresh machine (see README): `make quickstart` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install quickstart test benchmark-accuracy benchmark-speed clean

$(BIN)/flcore: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,ray,plot,flwr,dp]'
	touch $@

install: $(BIN)/flcore

quickstart: install
	$(BIN)/flcore fit --config configs/quickstart.yaml

test: install
	$(BIN)/python -m pytest

benchmark-accuracy: install
	$(BIN)/python benchmarks/accuracy.py

clean:
	rm -rf runs benchmarks/results .pytest_cache

benchmark-speed: install
	$(BIN)/python benchmarks/speed.py
