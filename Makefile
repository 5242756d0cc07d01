# `make demo` and `make test` set up .venv themselves (pinned CPU install, requirements/cpu.txt).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.grand-installed
# tiny checkpoints and other caches stay inside the checkout (not ~/.cache) for make targets
export GRAND_CACHE ?= $(CURDIR)/.cache/grand
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test test-fast install benchmark clean

demo: $(STAMP)
	$(BIN)/grand demo --output demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## unit tests only (no Ray runs)
	$(BIN)/python -m pytest -q -m "not slow"

benchmark: $(STAMP)
	$(BIN)/python benchmarks/level1.py

install: $(STAMP)

$(STAMP): requirements/cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and exactly pinned: an unpinned torch resolves to a multi-GB CUDA build
	$(BIN)/python -m pip install -q -r requirements/cpu.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	# no torchvision on CPU machines: the only one on the registry is a CUDA build whose ops fail to
	# load and break transformers' image processors (docs/install.md)
	-$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null
	touch $(STAMP)

clean:
	rm -rf $(VENV) .cache demo-out .pytest_cache
