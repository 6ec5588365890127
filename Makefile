# The whole set-up on a fresh machine: `make test` (the suite) and `make demo` (the system).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-unit test-integration lint format deps bench-transport demo clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[dev]'
	touch $(STAMP)

deps:
	./ops/scripts/system-deps.sh

test: deps $(STAMP)
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: deps $(STAMP)
	$(PY) -m pytest -q tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check actors learner protocol ops tests
	$(VENV)/bin/ruff format --check actors learner protocol ops tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix actors learner protocol ops tests
	$(VENV)/bin/ruff format actors learner protocol ops tests

bench-transport: deps $(STAMP)
	$(PY) -m ops.bench transport

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# The system end to end on the embedded default: tiny policy, synthetic task, 2 CPU cores.
demo: deps $(STAMP)
	$(PY) -m ops.launch --config ops/configs/demo.toml
