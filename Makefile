PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-load test-bench protos lint clean chromium

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,optuna,ray,report,mlflow,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneyard demo

# The dashboard's end-to-end test drives Debian's headless chromium; install it when missing and
# allowed (root with apt-get), else that one test is skipped and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
		echo "chromium not installed: the dashboard browser test will be skipped"

# The suite runs on TEST_WORKERS pytest-xdist processes, a test file to each (`--dist loadfile`: a
# file's module fixtures, and the Ray cluster of test_ray_executor.py, stay in one process). Most
# tests wait on subprocesses and loopback gRPC, so two of them share this 2-core machine well.
TEST_WORKERS ?= 2

test: $(STAMP) chromium
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-bench: $(STAMP)
	$(PY) -m pytest -m bench tests/test_bench_overhead.py tests/test_bench_asktell.py tests/test_bench_fused.py tests/test_bench_multifidelity.py tests/test_bench_pbt.py

test-load: $(STAMP)
	$(PY) -m pytest -m load -s tests/test_load.py

# mypy cannot follow setuptools' package-dir mapping, so lint links the import package's tree under
# build/mypy (pyproject's [tool.mypy] mypy_path) and type-checks it there.
MYPY_TREE := build/mypy/tuneyard

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check --extend-exclude '*.md' .
	rm -rf $(MYPY_TREE) && mkdir -p $(MYPY_TREE)
	for f in __init__.py py.typed v1 common; do ln -s $(CURDIR)/protos/tuneyard/$$f $(MYPY_TREE)/$$f || exit 1; done
	for d in server plugins client examples; do ln -s $(CURDIR)/$$d $(MYPY_TREE)/$$d || exit 1; done
	$(VENV)/bin/mypy

protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos --grpc_python_out=protos protos/tuneyard/v1/*.proto

clean:
	rm -rf $(VENV) build dist *.egg-info
