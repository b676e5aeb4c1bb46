# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT ?= out

.PHONY: install build demo replay-demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build; an unpinned one pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,demo,embeddings]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The compiled per-event core (Cython; see setup.py). pip builds it on install; this
# rebuilds it in place after an edit, so tests never run an extension older than its source.
build: install
	$(BIN)/python setup.py --quiet build_ext --inplace

demo: build
	$(BIN)/driftmon demo

# The same silent upgrade, offline: generate a JSONL stream and replay it.
replay-demo: build
	@mkdir -p $(OUT)
	$(BIN)/driftmon generate --events 12000 --upgrade-endpoint sql-assistant --upgrade-at 6000 > $(OUT)/sample.jsonl
	$(BIN)/driftmon replay $(OUT)/sample.jsonl --report $(OUT)/report.json

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy driftmon

# -rsx: the run ends with why each skipped test skipped (and what to install for it).
unit: build
	$(BIN)/pytest -q -rsx

test: lint typecheck unit

bench: build
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/detection.py
	$(BIN)/python benchmarks/calibration.py

clean:
	rm -rf $(VENV) $(OUT) .mypy_cache .ruff_cache .pytest_cache build
	rm -f driftmon/core/*.c driftmon/core/*.so
