"""Plant known bugs one at a time and record which oracle tests catch each (issue 21).

Each mutant is a textual edit of one source file (nibble order, zero-point sign, scale layout,
activation rounding, RoPE rotation, a pattern alternative removed), applied to the working tree,
tested with that backend's oracle tests, and reverted in a `finally`. C++ mutants rebuild pyllmops._C
(incrementally) with the bug in; the clean extension is rebuilt before the next Python mutant and
at the end, so the tree and .venv's _C match the sources afterwards. Nothing is committed; run it
on a clean tree:

    .venv/bin/python scripts/mutation_check.py                 # the Python / Triton mutants
    .venv/bin/python scripts/mutation_check.py --native        # also the C++ ones (rebuilds _C)
    .venv/bin/python scripts/mutation_check.py -k nibble       # mutants whose name contains "nibble"
    .venv/bin/python scripts/mutation_check.py --native --json bench/results/mutation-<date>.json

A C++ mutant is planted in the code path that runs on this machine's CPU: `where` names it, and a
mutant whose path this CPU cannot take (an AVX-512 kernel on an AVX2 machine) is reported as NOT RUN
rather than as survived. Prints one row per mutant: the tests run, the tests failed, how many of
those name the mutated backend (in the test's name or parameters), and the first failed ids. A
mutant no test catches is reported as SURVIVED, a test run that crashed or did not collect as
ERROR; either makes the exit status 1. --json writes every row with the test command it ran.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
W4_TESTS = ("tests/ops/test_weight_only.py", "tests/ops/test_w4a8.py", "tests/nn/test_weight_only_linear.py")
W4_TRITON = ("tests/ops/test_weight_only.py", "tests/ops/test_w4a16_tc.py")
W4_CPP = ("tests/ops/test_weight_only.py",)
INT8_ROWS = ("tests/ops/test_quant_int8.py", "tests/ops/test_quant_int8_cpp.py")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return set()


@dataclass(frozen=True)
class Mutant:
    name: str             # the planted bug
    backend: str          # the implementation it is planted in
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    select: str = ""      # pytest -k expression narrowing the run to that backend's oracle tests
    where: str = ""       # the code path, for C++: the kernel that the dispatch picks on this CPU
    needs: tuple[str, ...] = ()  # /proc/cpuinfo flags without which that path never runs
    count: int = 1        # occurrences of `old` that the bug replaces (all of them)

    @property
    def native(self) -> bool:
        return self.path.startswith("csrc/")


def _swap(text: str, a: str, b: str) -> str:
    return text.replace(a, "\0").replace(b, a).replace("\0", b)


# w4_tile_avx2's FMAs: low nibbles (even channels) meet x[0, 16) of the de-interleaved unit
_FMA_AVX2 = """\
          acc0[m][j] = _mm256_fmadd_ps(lo0, _mm256_loadu_ps(xu), acc0[m][j]);
          acc1[m][j] = _mm256_fmadd_ps(lo1, _mm256_loadu_ps(xu + 8), acc1[m][j]);
          acc0[m][j] = _mm256_fmadd_ps(hi0, _mm256_loadu_ps(xu + 16), acc0[m][j]);
          acc1[m][j] = _mm256_fmadd_ps(hi1, _mm256_loadu_ps(xu + 24), acc1[m][j]);"""
_FMA_AVX2_SCALE = """\
      const float s = scales[(n + j) * G + g];
      const double sz = static_cast<double>(s) * zeros[(n + j) * G + g];
      for (int m = 0; m < MT; ++m) {
        total[m][j] = _mm256_fmadd_ps("""
_FMA_AVX512_SCALE = _FMA_AVX2_SCALE.replace("_mm256_", "_mm512_")
_ROPE_CPP = """\
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i + half] + a * sin[i + half];"""
_DIGITS = "cpp: avx2_digits (w4a16, M = 1, group a multiple of 128 or -1)"
_FMA = "cpp: avx2_fma (w4a16, M <= 32, any group a multiple of 32)"
_DEQ = "cpp: w4_dequantize, dequant_span_avx2 (w4a16 prefill, M > 32)"
_AVX512_FLAGS = ("avx512f", "avx512bw")
_VNNI_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
_VNNI = "cpp: vnni_digits (w4a16, group a multiple of 128 or -1)"
_FMA512 = "cpp: avx512_fma (w4a16, groups of 32 / 64 / 96 ...)"
_DEQ_TAIL = "cpp: w4_dequantize, dequant_span_scalar (prefill: odd group starts, spans < 16)"

MUTANTS = [
    # ---- int4 dequantization: torch (the package's own _reference shares it), Triton, C++
    Mutant("nibble order", "torch", "pyllmops/ops/weight_only.py",
           "torch.stack((qweight & 0xF, qweight >> 4), dim=-1)", "torch.stack((qweight >> 4, qweight & 0xF), dim=-1)",
           W4_TESTS, where="torch: dequantize_int4"),
    Mutant("zero-point sign", "torch", "pyllmops/ops/weight_only.py", "- zeros.to(dtype)", "+ zeros.to(dtype)",
           W4_TESTS, where="torch: dequantize_int4", count=2),
    Mutant("scale transposed", "torch", "pyllmops/ops/weight_only.py",
           "scales.to(dtype)", "scales.t().reshape(scales.shape).to(dtype)", W4_TESTS, where="torch: dequantize_int4",
           count=2),
    Mutant("nibble order", "triton", "kernels/triton/w4a16.py", "x_lo = tl.load(x_row + k_even[None, :],",
           "x_lo = tl.load(x_row + k_even[None, :] + 1,", W4_TRITON, "triton", where="triton: _w4a16_tc (interpreter)"),
    Mutant("zero-point sign", "triton", "kernels/triton/w4a16.py", "w_lo = ((q8 & 0xF) - z)",
           "w_lo = ((q8 & 0xF) + z)", W4_TRITON, "triton", where="triton: _w4a16_tc (interpreter)"),
    Mutant("scale transposed", "triton", "kernels/triton/w4a16.py", "s = tl.load(s_ptr + s_row + g, mask=n_ok",
           "s = tl.load(s_ptr + g * N + rn, mask=n_ok", W4_TRITON, "triton", where="triton: _w4a16_tc (interpreter)"),
    # C++ M = 1 digit kernel: the nibble vectors handed to the digit sums in the wrong order
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp", "digit_sums_avx2(lo0, lo1, hi0, hi1,",
           "digit_sums_avx2(hi0, hi1, lo0, lo1,", W4_CPP, "cpp", _DIGITS, ("avx2", "fma"), count=3),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp",
           "(hsum_avx2(total[m][j]) - corr[m][j]) * x.unscale", "(hsum_avx2(total[m][j]) + corr[m][j]) * x.unscale",
           W4_CPP, "cpp", _DIGITS, ("avx2", "fma")),
    Mutant("scale transposed", "cpp", "csrc/cpu/weight_only.cpp",
           "const float s = w.scales[(n + j) * G + x.block_group[b]];",
           "const float s = w.scales[x.block_group[b] * N + n + j];", W4_CPP, "cpp", _DIGITS, ("avx2", "fma")),
    # C++ FMA kernel (M > 1, and M = 1 with groups of 32 / 64)
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp", _FMA_AVX2,
           _swap(_swap(_FMA_AVX2, "lo0", "hi0"), "lo1", "hi1"), W4_CPP, "cpp", _FMA, ("avx2", "fma")),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp",
           "static_cast<float>(hsum_avx2(total[m][j]) - corr[m][j]);",
           "static_cast<float>(hsum_avx2(total[m][j]) + corr[m][j]);", W4_CPP, "cpp", _FMA, ("avx2", "fma")),
    Mutant("scale transposed", "cpp", "csrc/cpu/weight_only.cpp", _FMA_AVX2_SCALE,
           _FMA_AVX2_SCALE.replace("scales[(n + j) * G + g];", "scales[g * N + n + j];", 1),
           W4_CPP, "cpp", _FMA, ("avx2", "fma")),
    # C++ prefill dequantization (M > 32): 16 weights per AVX2 step, the scalar loop for the rest
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp",
           "_mm256_unpacklo_ps(lo, hi), c = _mm256_unpackhi_ps(lo, hi);",
           "_mm256_unpacklo_ps(hi, lo), c = _mm256_unpackhi_ps(hi, lo);", W4_CPP, "cpp", _DEQ, ("avx2", "fma")),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp",
           "zv = _mm256_set1_ps(z);", "zv = _mm256_set1_ps(-z);", W4_CPP, "cpp", _DEQ, ("avx2", "fma")),
    Mutant("scale transposed", "cpp", "csrc/cpu/weight_only.cpp", "const float s = scales[n * G + g], z",
           "const float s = scales[g * N + n], z", W4_CPP, "cpp", "cpp: w4_dequantize (both spans read this scale)"),
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp",
           "w[k] = (static_cast<float>(b & 0xF) - z) * s;\n    w[k + 1] = (static_cast<float>(b >> 4) - z) * s;",
           "w[k] = (static_cast<float>(b >> 4) - z) * s;\n    w[k + 1] = (static_cast<float>(b & 0xF) - z) * s;",
           W4_CPP, "cpp", _DEQ_TAIL),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp", "- z) * s", "+ z) * s", W4_CPP, "cpp", _DEQ_TAIL,
           count=5),  # the four in dequant_span_scalar and its comment
    # AVX-512 kernels: run where the CPU has them (the dispatch picks them over the AVX2 ones)
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp",
           "    lo[j] = _mm512_and_si512(v, low4);\n    hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);",
           "    hi[j] = _mm512_and_si512(v, low4);\n    lo[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);",
           W4_CPP, "cpp", _VNNI, _VNNI_FLAGS),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp",
           "total[m][j] = _mm512_sub_ps(_mm512_setzero_ps(), c[m]);", "total[m][j] = c[m];", W4_CPP, "cpp", _VNNI, _VNNI_FLAGS),
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp",
           "        lo[j] = _mm512_cvtepi32_ps(_mm512_and_si512(b, low4));\n"
           "        hi[j] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));",
           "        hi[j] = _mm512_cvtepi32_ps(_mm512_and_si512(b, low4));\n"
           "        lo[j] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));", W4_CPP, "cpp", _FMA512, _AVX512_FLAGS),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp", "_mm512_reduce_add_ps(total[m][j]) - corr[m][j]",
           "_mm512_reduce_add_ps(total[m][j]) + corr[m][j]", W4_CPP, "cpp", _FMA512, _AVX512_FLAGS),
    Mutant("scale transposed", "cpp", "csrc/cpu/weight_only.cpp", _FMA_AVX512_SCALE,
           _FMA_AVX512_SCALE.replace("scales[(n + j) * G + g];", "scales[g * N + n + j];", 1),
           W4_CPP, "cpp", _FMA512, _AVX512_FLAGS),
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp", "_mm512_permutex2var_ps(lo, first, hi)",
           "_mm512_permutex2var_ps(hi, first, lo)", W4_CPP, "cpp", "cpp: w4_dequantize, dequant_span_avx512",
           _AVX512_FLAGS),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp", "zv = _mm512_set1_ps(z);", "zv = _mm512_set1_ps(-z);",
           W4_CPP, "cpp", "cpp: w4_dequantize, dequant_span_avx512", _AVX512_FLAGS),
    # ---- activation quantization: int8 per token (W8A8), Q8_0 per 32 channels (W4A8)
    Mutant("activation rounding truncates", "torch", "pyllmops/ops/quant_int8.py",
           "    q = torch.round(xf / scale)\n", "    q = torch.trunc(xf / scale)\n", INT8_ROWS, "torch",
           where="torch: quantize_int8 per token"),
    Mutant("per-token absmax over the wrong axis", "torch", "pyllmops/ops/quant_int8.py",
           'dim=1 if granularity == "token" else 0', 'dim=0 if granularity == "token" else 1', INT8_ROWS, "torch",
           where="torch: quantize_int8 _reduce (shared with the package's reference_quantize_int8)"),
    Mutant("activation rounding truncates", "triton", "kernels/triton/quant_int8.py",
           "qv = _rint(tl.math.div_rn(v, scale[:, None]))", "qv = tl.math.div_rn(v, scale[:, None])", INT8_ROWS,
           "triton and not gpu", "triton: quantize_int8_rows (interpreter; the int8 store truncates)"),
    Mutant("activation rounding truncates", "cpp", "csrc/cpu/quant_int8_rows.cpp", "std::nearbyint(xi / s)",
           "std::trunc(xi / s)", INT8_ROWS, "cpp", "cpp: quantize_int8_rows, row_scalar (no AVX-512 here)"),
    Mutant("per-token absmax skips a channel", "cpp", "csrc/cpu/quant_int8_rows.cpp",
           "for (int64_t i = 0; i < N; ++i) amax = nan_max", "for (int64_t i = 1; i < N; ++i) amax = nan_max",
           INT8_ROWS, "cpp", "cpp: quantize_int8_rows, row_scalar (no AVX-512 here)"),
    Mutant("activation rounding truncates", "cpp", "csrc/cpu/quant_int8_rows.cpp",
           "_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT", "_mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO",
           INT8_ROWS, "cpp", "cpp: quantize_int8_rows, row_avx512", ("avx512f", "avx512bw", "avx512vl")),
    Mutant("activation rounding truncates", "cpp", "csrc/cpu/weight_only.cpp",
           "q0 = _mm512_cvtps_epi32(_mm512_div_ps(x0, dv));", "q0 = _mm512_cvttps_epi32(_mm512_div_ps(x0, dv));",
           ("tests/ops/test_w4a8.py",), "cpp", "cpp: w4a8_gemm quantize_q8 (Q8_0)", _VNNI_FLAGS),
    Mutant("activation rounding truncates", "torch", "pyllmops/ops/w4a8.py", "torch.round(xb / d[..., None])",
           "torch.trunc(xb / d[..., None])", ("tests/ops/test_w4a8.py",), "torch",
           where="torch: quantize_activations_q8 (Q8_0)"),
    # ---- RoPE: the rotation turned the other way (halves swapped)
    Mutant("RoPE half swap", "torch", "pyllmops/models/llama.py",
           "torch.cat([-x[..., half:], x[..., :half]], dim=-1)", "torch.cat([x[..., half:], -x[..., :half]], dim=-1)",
           ("tests/models/test_llama.py",), where="torch: models.llama rotate_half"),
    Mutant("RoPE half swap", "cpp", "csrc/cpu/decode.cpp", _ROPE_CPP,
           _swap(_ROPE_CPP, "- b * sin", "+ b * sin").replace("+ a * sin", "- a * sin"),
           ("tests/models/test_fused_decode.py",), "steps_match", "cpp: llama_decode_layers rope()"),
    # ---- pre-tokenizer patterns: an alternative dropped from the Python constant / the C++ scanner
    Mutant("o200k pattern alternative removed", "python", "pyllmops/tokenizer/_splits.py",
           '    r"""\\p{N}{1,3}""",\n', "", ("tests/tokenizer/test_exact.py", "tests/tokenizer/test_o200k_pattern.py"),
           "not every_code_point", "python: _splits.O200K_PATTERN (\\p{N}{1,3})"),
    Mutant("cl100k pattern alternative removed", "python", "pyllmops/tokenizer/_splits.py",
           r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s", r"|\s++$|\s+(?!\S)|\s",
           ("tests/tokenizer/test_splits.py", "tests/tokenizer/test_tiktoken_dropin.py"), "cl100k",
           "python: _splits.CL100K_PATTERN (\\s*[\\r\\n])"),
    Mutant("o200k pattern alternative removed", "cpp", "csrc/bpe/pretokenize.h",
           "    if (last_nl_end) return last_nl_end;\n    if (e2 == n_) return e2;", "    if (e2 == n_) return e2;",
           ("tests/tokenizer/test_o200k_pattern.py", "tests/tokenizer/test_exact.py"), "not every_code_point",
           "cpp: Scanner::next_o200k (\\s*[\\r\\n]+)"),
    Mutant("cl100k pattern alternative removed", "cpp", "csrc/bpe/pretokenize.h",
           "    if (last_nl_end) return last_nl_end;\n    if (e == n_) return e;", "    if (e == n_) return e;",
           ("tests/tokenizer/test_exact.py", "tests/tokenizer/test_splits.py"), "cl100k and not every_code_point",
           "cpp: Scanner::next_cl100k (\\s*[\\r\\n])"),
]


def rebuild() -> None:
    """pyllmops/_C*.so from the sources as they are now: setup.py's CMake build, in a build folder
    kept between runs (build/mutation, ignored), so only the mutated file recompiles (~25 s where
    `pip install -e .`, in a fresh folder each time, takes ~2 min)."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--build-temp", "build/mutation"],
                   cwd=ROOT, check=True, env={**os.environ, "PYLLMOPS_CUDA": "0"}, stdout=subprocess.DEVNULL)


def test_command(m: Mutant) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-rf", "-p", "no:cacheprovider", *m.tests]
    return cmd + (["-k", m.select] if m.select else [])


def run_tests(m: Mutant) -> tuple[int, int, list[str]]:
    """(pytest's exit status, tests run, ids of the failed ones)."""
    done = subprocess.run(test_command(m), cwd=ROOT, capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", done.stdout, re.M)))
    counts = re.findall(r"(\d+) (passed|failed)", done.stdout)
    return done.returncode, sum(int(n) for n, _ in counts), failed


def check(m: Mutant, flags: set[str]) -> dict:
    """Plant m, run its tests, revert; the result row."""
    row = {"bug": m.name, "backend": m.backend, "where": m.where, "file": m.path,
           "test_command": shlex.join([".venv/bin/python", *test_command(m)[1:]])}
    missing = [f for f in m.needs if f not in flags]
    if missing:
        return {**row, "status": "not run", "why": f"this CPU lacks {', '.join(missing)}: the path never runs here"}
    path = ROOT / m.path
    original = path.read_text()
    if original.count(m.old) != m.count:
        return {**row, "status": "stale", "why": f"pattern found {original.count(m.old)} times, expected {m.count}"}
    try:
        path.write_text(original.replace(m.old, m.new))
        if m.native:
            rebuild()
        rc, ran, failed = run_tests(m)
    finally:
        path.write_text(original)
    names_backend = [m.backend in t.split("::")[-1] for t in failed]  # in the test's name or parameters
    by_test = Counter(t.split("::")[-1].split("[")[0] for t in failed)
    # pytest exits 1 when tests failed; anything else (a crash, a collection error) is no verdict
    status = {0: "SURVIVED", 1: "caught" if failed else "error"}.get(rc, "error")
    return {**row, "status": status, "pytest_exit": rc, "run": ran, "failed": len(failed),
            "failed_naming_backend": sum(names_backend), "failed_by_test": dict(by_test.most_common()),
            "examples": [t for _, t in sorted(zip(names_backend, failed), key=lambda p: not p[0])][:10]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--native", action="store_true", help="also the C++ mutants (rebuilds pyllmops._C each)")
    ap.add_argument("-k", default="", help="run only mutants whose 'name backend' contains this")
    ap.add_argument("--json", type=Path, help="write the results (and this command) to this file")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a killed run still reverts (the finally below)
    flags = cpu_flags()
    rows, dirty = [], False  # dirty: _C holds a mutant's build
    try:
        for m in MUTANTS:
            if (m.native and not args.native) or args.k not in f"{m.name} {m.backend}":
                continue
            if dirty and not m.native:
                rebuild()
                dirty = False
            dirty |= m.native and not [f for f in m.needs if f not in flags]
            row = check(m, flags)
            rows.append(row)
            print(f"{m.name} [{m.backend}] {m.where}: " + (
                f"{row['failed']}/{row['run']} tests fail, {row['failed_naming_backend']} of them name "
                f"{m.backend}" + ("" if row["status"] == "caught" else f"  {row['status'].upper()}")
                if "run" in row else f"{row['status'].upper()} ({row['why']})"), flush=True)
            for test_id in row.get("examples", [])[:8]:
                print(f"    {test_id}")
    finally:
        if dirty:
            rebuild()
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        args.json.write_text(json.dumps({
            "command": shlex.join([".venv/bin/python", "scripts/mutation_check.py", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit, "cpu_simd": sorted(flags & {"avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                                          "avx512_vnni"}),
            "mutants": rows,
        }, indent=1) + "\n")
    return 1 if any(r["status"] in ("SURVIVED", "stale", "error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
