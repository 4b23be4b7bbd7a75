#!/usr/bin/env bash
# Build the BPE fuzz target (libFuzzer + ASan + UBSan, clang) and run it for a bounded number of
# inputs:  scripts/fuzz_bpe.sh [RUNS]   (default 1000000; inputs up to $FUZZ_MAX_LEN bytes, default 512)
# Needs clang with the libFuzzer runtime: on Debian `apt-get install -y clang` (clang-14 +
# libclang-rt-14-dev). Exits non-zero on any sanitizer report or violated property.
set -euo pipefail
RUNS=${1:-1000000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Inside the checkout (ignored): a CMake build tree is tied to the source folder it was made from.
BUILD=${PYLLMOPS_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
CXX=${CXX_FUZZ:-clang++}
command -v "$CXX" >/dev/null || { echo "fuzz_bpe.sh: $CXX not found (apt-get install -y clang)" >&2; exit 2; }
cmake -S "$ROOT" -B "$BUILD" -DPYLLMOPS_FUZZ=ON -DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE=Debug \
  $(command -v ninja >/dev/null && echo -G Ninja) >/dev/null
cmake --build "$BUILD" --target fuzz_bpe -j "$(nproc)"
CORPUS="$BUILD/corpus-bpe"
mkdir -p "$CORPUS"
# Seeds: short texts in each split mode (first byte) with the cases the scanners branch on.
i=0
for text in "Hello world, it's 2024!" $'a  \r\n\tb \xc5\xbf\'S x\'ll' $'\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9 e\xcc\x81' \
            "HTTPServer's ABC<|endoftext|>def" $'\xff\xfe\xc0\x80 invalid \xed\xa0\x80'; do
  for mode in 0 1 2 3 7 11 63 128 129; do
    printf "\\x$(printf %02x $mode)%s" "$text" > "$CORPUS/seed-$i"
    i=$((i + 1))
  done
done
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
start=$(date +%s)
"$BUILD/fuzz_bpe" -runs="$RUNS" -max_len="${FUZZ_MAX_LEN:-512}" -timeout=10 -print_final_stats=1 "$CORPUS" 2>&1 | tail -25
echo "fuzz_bpe.sh: $RUNS runs in $(( $(date +%s) - start )) s, no sanitizer report"
