#!/usr/bin/env bash
# ONE script for a GPU machine (no network, its own CUDA torch): build in place, run the GPU tests,
# run the GPU benchmarks, write everything under OUT_DIR. Budget: under 8 minutes.
# Usage: bash bench/gpu_check.sh OUT_DIR
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYLLMOPS_CUDA=1
[ -n "${CUDA_HOME:-}" ] || for d in /usr/local/cuda /usr/local/cuda-*; do [ -x "$d/bin/nvcc" ] && export CUDA_HOME=$d && break; done
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
} | tee "$OUT/env.txt"
t0=$(date +%s)
timeout 240 python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { echo "build failed"; tail -40 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
python3 -c "import pyllmops; print(pyllmops.build_info())" | tee -a "$OUT/env.txt"
timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
PYLLMOPS_BENCH_DEVICE=cuda timeout 180 python3 -m bench --out "$OUT" 2>&1 | tee "$OUT/bench.log" | tail -60
echo "total $(( $(date +%s) - t0 )) s"
