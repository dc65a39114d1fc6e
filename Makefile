# The two commands a new user needs: `make run` and `make test`.
# Both create .venv if it is missing and install tricode into it.
# CPU machines get the CPU build of torch (the wheel pinned below); on a machine with CUDA,
# run `make TORCH_SPEC=torch ...` (or install a CUDA torch into .venv first): the pinned
# wheel is only chosen when no torch is installed yet.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# pip's cache (downloads, and the wheel llama-cpp-python builds from source for the remote-backend
# tests: ~10 min on 2 cores) lives in the user's cache folder, so a second checkout or a fresh clone
# on the same machine reuses it; npm's stays in the build folder
XDG_CACHE_HOME ?= $(HOME)/.cache
export PIP_CACHE_DIR ?= $(XDG_CACHE_HOME)/tricode/pip
export npm_config_cache ?= $(CURDIR)/build/npm-cache

# the real code model (Qwen2.5-Coder 0.5B Instruct, 491 MB): pulled once per machine into the user's
# data folder ($$XDG_DATA_HOME/tricode/models, default ~/.local/share), like pip's cache, and checked
# against its pinned sha256; when it is already there the pull is a no-op. Tests that need it find it
# with registry.models.find (the real_gguf fixture).
MODEL ?= qwen2.5-coder-0.5b

.PHONY: run test bench install vscode clean model

run: $(STAMP) model
	$(VENV)/bin/tricode demo

test: $(STAMP) model
	$(PY) -m pytest -q -ra --durations=15 tests

model: $(STAMP)
	$(PY) -m registry pull $(MODEL)

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

vscode: $(STAMP)
	cd editor_clients/vscode && ./scripts/build.sh $(CURDIR)/build/tricode.vsix

clean:
	rm -rf $(VENV) build *.egg-info editor_clients/vscode/node_modules editor_clients/vscode/out
