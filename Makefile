PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-load protos lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,optuna,ray,report,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneyard demo

test: $(STAMP)
	$(PY) -m pytest

test-load: $(STAMP)
	$(PY) -m pytest -m load -s tests/test_load.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos --grpc_python_out=protos protos/tuneyard/v1/*.proto

clean:
	rm -rf $(VENV) build dist *.egg-info
