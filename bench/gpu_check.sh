#!/usr/bin/env bash
# ONE script for a GPU machine (no network, its own CUDA torch): check prerequisites, build in
# place, run the `gpu` tests with compiled Triton and CUDA_LAUNCH_BLOCKING=1, a compute-sanitizer
# pass, then the GPU benchmarks, each writing its results under OUT_DIR as soon as it ends (a
# timeout keeps what finished). Budget: 8 minutes in all (GPU_CHECK_BUDGET_S), each step capped by
# what is left.
#
# Usage: bash bench/gpu_check.sh [--quick] [--dry-run] [OUT_DIR]     (OUT_DIR default: gpu-check-out)
#   --quick    fewer benchmark rounds (a smoke run; the numbers are indicative only)
#   --dry-run  no GPU needed (CI runs it): checks the prerequisites (a GPU and its tools excepted),
#              parses this script, compiles every kernel for sm_80/sm_90a with the kernel report,
#              collects the gpu tests and the benchmarks, and lists what a GPU run would execute.
# Wheels carried in .whl/ (bench/gpu_wheels.sh) are installed into a private folder first.
set -uo pipefail
QUICK=0 DRY=0 OUT=""
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "gpu_check: unknown option $a" >&2; exit 2 ;;
    *) OUT=$a ;;
  esac
done
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
BUDGET=${GPU_CHECK_BUDGET_S:-$([ $DRY = 1 ] && echo 1800 || echo 480)}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# step NAME SECONDS CMD...: run CMD with a timeout of min(SECONDS, time left), log to OUT/NAME.log,
# record its status in OUT/steps.txt at once.
step() {
  local name=$1 want=$2; shift 2
  local cap; cap=$(left); [ "$want" -lt "$cap" ] && cap=$want
  if [ "$cap" -le 5 ]; then echo "SKIPPED $name (budget spent)" | tee -a "$OUT/steps.txt"; return 1; fi
  local s; s=$(date +%s)
  echo "== $name (timeout ${cap}s): $*"
  timeout "$cap" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -25 "$OUT/$name.log"
  echo "$name rc=$rc $(( $(date +%s) - s ))s$([ $rc = 124 ] && echo ' TIMED OUT')" | tee -a "$OUT/steps.txt"
  return $rc
}
: > "$OUT/steps.txt"

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/pyllmops-site .whl/*.whl \
    && export PYTHONPATH=/tmp/pyllmops-site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -n "${CUDA_HOME:-}" ] || for d in /usr/local/cuda /usr/local/cuda-*; do [ -x "$d/bin/nvcc" ] && export CUDA_HOME=$d && break; done

{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
} | tee "$OUT/env.txt"

# 1. Prerequisites, all at once, before anything is built.
if ! "$PY" -m bench.gpu_prereqs $([ $DRY = 1 ] || echo --gpu) | tee "$OUT/prereqs.txt"; then
  echo "gpu_check: prerequisites missing (above); nothing was run"; exit 3
fi

TESTS=(-m gpu -q -p no:cacheprovider -rfEs tests)
BENCH=(bench/bench_weight_only.py bench/bench_w8a8.py bench/bench_sampling.py)
if [ $DRY = 1 ]; then
  rc=0
  bash -n "$0" || rc=1
  # Everything that needs no GPU: every kernel compiled for both targets (fails on spills of hot
  # kernels and missing tensor-core instructions), the gpu tests and benchmarks collected.
  step kernel_report 900 "$PY" -m bench.kernel_report --check --out "$OUT/kernel_report.json" || rc=1
  step collect_gpu_tests 300 "$PY" -m pytest --collect-only "${TESTS[@]}" || rc=1
  step collect_bench 300 "$PY" -m pytest --collect-only -q -p no:cacheprovider -o "python_files=bench_*.py" \
    "${BENCH[@]}" || rc=1
  cat <<EOF
gpu_check --dry-run: a GPU run would execute, within ${BUDGET}s:
  build     PYLLMOPS_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -e .
  tests     TRITON_INTERPRET=0 CUDA_LAUNCH_BLOCKING=1 $PY -m pytest ${TESTS[*]}   ($(grep -c '::' "$OUT/collect_gpu_tests.log" 2>/dev/null || echo '?') gpu tests)
  sanitizer compute-sanitizer --tool memcheck $PY -m pytest -m gpu -q tests/ops/test_sampling_gpu.py tests/ops/test_w8a8.py (if installed)
  bench     PYLLMOPS_BENCH_DEVICE=cuda $PY -m bench $([ $QUICK = 1 ] && echo --quick) FILE --out $OUT   for FILE in ${BENCH[*]}
EOF
  echo "gpu_check --dry-run: $([ $rc = 0 ] && echo ok || echo FAILED) in $(( $(date +%s) - T0 )) s"
  exit $rc
fi

# 2. Build (the CUDA extension too), 3. gpu tests on compiled Triton, 4. sanitizer, 5. benchmarks.
export PYLLMOPS_CUDA=1
step build 120 "$PY" -m pip install --no-build-isolation --no-deps -e . || { echo "gpu_check: build failed"; exit 1; }
"$PY" -c "import pyllmops; print(pyllmops.build_info())" | tee -a "$OUT/env.txt"
TRITON_INTERPRET=0 CUDA_LAUNCH_BLOCKING=1 step gpu_tests 120 "$PY" -m pytest "${TESTS[@]}" --junitxml="$OUT/gpu_tests.xml"
if command -v compute-sanitizer > /dev/null; then
  TRITON_INTERPRET=0 step sanitizer 45 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PY" -m pytest -m gpu -q -x -p no:cacheprovider tests/ops/test_sampling_gpu.py tests/ops/test_w8a8.py
else
  echo "SKIPPED sanitizer (no compute-sanitizer)" | tee -a "$OUT/steps.txt"
fi
for f in "${BENCH[@]}"; do
  PYLLMOPS_BENCH_DEVICE=cuda step "bench_$(basename "$f" .py)" 60 "$PY" -m bench $([ $QUICK = 1 ] && echo --quick) \
    "$f" --out "$OUT"
done
echo "gpu_check: total $(( $(date +%s) - T0 )) s; steps:"; cat "$OUT/steps.txt"
