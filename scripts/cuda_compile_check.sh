#!/usr/bin/env bash
# CUDA compile check for a machine without a GPU: every csrc/cuda/*.cu is compiled by nvcc for
# sm_80 (A100) and sm_90a (H100/H200), then the whole pyllmops._cuda extension is configured, built
# and linked through CMakeLists.txt. The kernels are torch-free, so no CUDA torch is needed.
# When PYTHON has the nvidia-cutlass wheel (headers only: pip install --no-deps nvidia-cutlass), the
# extension also gets the Hopper W8A8 kernel (csrc/cuda/sm90/, sm_90a only, compiled once through
# CMake), and its SASS must contain IGMMA (int8 wgmma); without the wheel that kernel is skipped.
# Usage: scripts/cuda_compile_check.sh [PYTHON]   (PYTHON provides pybind11; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
NVCC=""
for cand in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
  # /usr/local/bin/nvcc may be a wrapper script; CMake wants the toolkit's own binary.
  if [ -x "$cand" ]; then NVCC=$cand; break; fi
done
if [ -z "$NVCC" ]; then
  echo "cuda_compile_check: SKIPPED (no nvcc found; set CUDA_HOME)"; exit 0
fi
echo "cuda_compile_check: using $NVCC ($("$NVCC" --version | tail -1))"
obj=$(mktemp -d)
export NVCC obj
start=$(date +%s)
ls csrc/cuda/*.cu | xargs -P "$(nproc)" -I{} sh -c '
  "$NVCC" -std=c++17 -Icsrc --expt-relaxed-constexpr -O3 -c {} -o "$obj/$(basename {}).o" \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a \
    && echo "  ok  {} (sm_80, sm_90a)"'
echo "cuda_compile_check: all .cu files compiled in $(( $(date +%s) - start )) s"
build=${PYLLMOPS_CUDA_BUILD_DIR:-$obj/build}
# the same lookup as setup.py's _cutlass_include()
cutlass=$("$PY" -c 'import importlib.util, pathlib
s = importlib.util.find_spec("cutlass_library")
p = pathlib.Path(s.origin).parent / "source" / "include" if s and s.origin else None
print(p if p and (p / "cutlass" / "cutlass.h").exists() else "")')
if [ -n "$cutlass" ]; then echo "cuda_compile_check: CUTLASS headers at $cutlass: building the sm_90a W8A8 kernel too"
else echo "cuda_compile_check: no CUTLASS headers (pip install --no-deps nvidia-cutlass): sm_90a W8A8 kernel skipped"; fi
cmake -S . -B "$build" -G Ninja -DPYLLMOPS_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DCMAKE_CUDA_ARCHITECTURES="80;90a" -DPython_EXECUTABLE="$(command -v "$PY")" -DPYLLMOPS_CUTLASS_INCLUDE="$cutlass" \
  -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" > "$obj/cmake.log"
cmake --build "$build" --target _cuda -j "$(nproc)" > "$obj/build.log" || { tail -50 "$obj/build.log"; exit 1; }
so=$(ls "$build"/_cuda*.so)
echo "cuda_compile_check: pyllmops._cuda linked: $so in $(( $(date +%s) - start )) s total"
if [ -n "$cutlass" ]; then
  # cuobjdump: the toolkit's, else the one Triton ships
  cuobjdump=$(command -v cuobjdump || "$PY" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))' 2>/dev/null || true)
  if [ -x "$cuobjdump" ]; then
    igmma=$("$cuobjdump" -sass -arch sm_90a "$so" | grep -c IGMMA || true)
    echo "cuda_compile_check: sm_90a W8A8 kernel: $igmma IGMMA instructions in the SASS"
    [ "$igmma" -gt 0 ] || { echo "cuda_compile_check: FAILED: no IGMMA (int8 wgmma) in the sm_90a SASS"; exit 1; }
  else
    echo "cuda_compile_check: no cuobjdump found: IGMMA check skipped"
  fi
fi
rm -rf "$obj"
