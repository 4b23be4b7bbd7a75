"""Plant known bugs one at a time and record which oracle tests catch each (issue 21).

Each mutant is a textual edit of one source file (nibble order, zero-point sign, scale layout,
RoPE rotation, a pattern alternative removed), applied to the working tree, tested, and reverted in
a `finally` (C++ mutants rebuild the extension before and after). Nothing is committed; run it on a
clean tree:

    .venv/bin/python scripts/mutation_check.py                 # the Python / Triton mutants
    .venv/bin/python scripts/mutation_check.py --native        # also the C++ ones (rebuilds _C)
    .venv/bin/python scripts/mutation_check.py -k nibble       # mutants whose name contains "nibble"

Prints one row per mutant: the tests run, the tests failed, how many of those name the mutated
backend in their parameters (for torch mutants the package's own `reference` backend shares the
code, so its tests fail too), and the first failed ids. A mutant no test catches is reported as SURVIVED and makes the
exit status 1.
"""
from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
W4_TESTS = ("tests/ops/test_weight_only.py", "tests/ops/test_w4a8.py", "tests/nn/test_weight_only_linear.py")


@dataclass(frozen=True)
class Mutant:
    name: str
    backend: str          # the implementation the bug is planted in
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    select: str = ""      # pytest -k expression narrowing the run to that backend's tests

    @property
    def native(self) -> bool:
        return self.path.startswith("csrc/")


MUTANTS = [
    # int4 dequantization: torch (and the package's own _reference, which shares it), Triton, C++
    Mutant("nibble order", "torch", "pyllmops/ops/weight_only.py",
           "torch.stack((qweight & 0xF, qweight >> 4), dim=-1)", "torch.stack((qweight >> 4, qweight & 0xF), dim=-1)",
           W4_TESTS),
    Mutant("zero-point sign", "torch", "pyllmops/ops/weight_only.py", "- zeros.to(dtype)", "+ zeros.to(dtype)",
           W4_TESTS),
    Mutant("scale transposed", "torch", "pyllmops/ops/weight_only.py",
           "scales.to(dtype)", "scales.t().reshape(scales.shape).to(dtype)", W4_TESTS),
    Mutant("nibble order", "triton", "kernels/triton/w4a16.py", "x_lo = tl.load(x_row + k_even[None, :],",
           "x_lo = tl.load(x_row + k_even[None, :] + 1,", ("tests/ops/test_weight_only.py", "tests/ops/test_w4a16_tc.py"),
           "triton"),
    Mutant("zero-point sign", "triton", "kernels/triton/w4a16.py", "w_lo = ((q8 & 0xF) - z)",
           "w_lo = ((q8 & 0xF) + z)", ("tests/ops/test_weight_only.py", "tests/ops/test_w4a16_tc.py"), "triton"),
    Mutant("scale transposed", "triton", "kernels/triton/w4a16.py", "s = tl.load(s_ptr + s_row + g, mask=n_ok",
           "s = tl.load(s_ptr + g * N + rn, mask=n_ok",
           ("tests/ops/test_weight_only.py", "tests/ops/test_w4a16_tc.py"), "triton"),
    Mutant("nibble order", "cpp", "csrc/cpu/weight_only.cpp",
           "w[k] = (static_cast<float>(b & 0xF) - z) * s;\n    w[k + 1] = (static_cast<float>(b >> 4) - z) * s;",
           "w[k] = (static_cast<float>(b >> 4) - z) * s;\n    w[k + 1] = (static_cast<float>(b & 0xF) - z) * s;",
           ("tests/ops/test_weight_only.py",), "cpp"),
    Mutant("zero-point sign", "cpp", "csrc/cpu/weight_only.cpp", "- z) * s", "+ z) * s",
           ("tests/ops/test_weight_only.py",), "cpp"),
    Mutant("scale transposed", "cpp", "csrc/cpu/weight_only.cpp", "const float s = scales[n * G + g]",
           "const float s = scales[g * N + n]", ("tests/ops/test_weight_only.py",), "cpp"),
    # RoPE: the model's rotate-half turned the other way (halves swapped)
    Mutant("RoPE half swap", "torch", "pyllmops/models/llama.py",
           "torch.cat([-x[..., half:], x[..., :half]], dim=-1)", "torch.cat([x[..., half:], -x[..., :half]], dim=-1)",
           ("tests/models/test_llama.py",)),
    # o200k: the digit-run alternative dropped from the package's pattern constant
    Mutant("o200k pattern alternative removed", "tokenizer", "pyllmops/tokenizer/_splits.py",
           '    r"""\\p{N}{1,3}""",\n', "", ("tests/tokenizer/test_exact.py", "tests/tokenizer/test_o200k_pattern.py"),
           "not every_code_point"),
]


def rebuild() -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."],
                   cwd=ROOT, check=True, env={**__import__("os").environ, "PYLLMOPS_CUDA": "0"})


def run_tests(m: Mutant) -> tuple[int, list[str]]:
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=no", "-rf", "-p", "no:cacheprovider", *m.tests]
    if m.select:
        cmd += ["-k", m.select]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).stdout
    failed = sorted(set(re.findall(r"^FAILED (\S+)", out, re.M)))
    counts = re.findall(r"(\d+) (passed|failed)", out)
    return sum(int(n) for n, _ in counts), failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--native", action="store_true", help="also the C++ mutants (rebuilds pyllmops._C each)")
    ap.add_argument("-k", default="", help="run only mutants whose 'name backend' contains this")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a killed run still reverts (the finally below)
    survived = 0
    for m in MUTANTS:
        if (m.native and not args.native) or args.k not in f"{m.name} {m.backend}":
            continue
        path = ROOT / m.path
        original = path.read_text()
        if m.old not in original:
            print(f"{m.name} [{m.backend}]: pattern not found in {m.path} (the mutant needs updating)")
            survived += 1
            continue
        try:
            path.write_text(original.replace(m.old, m.new))
            if m.native:
                rebuild()
            ran, failed = run_tests(m)
        finally:
            path.write_text(original)
            if m.native:
                rebuild()
        survived += not failed
        own = sum(f"[{m.backend}-" in t or f"-{m.backend}-" in t or f"-{m.backend}]" in t for t in failed)
        print(f"{m.name} [{m.backend}]: {len(failed)}/{ran} tests fail, {own} of them parametrized on {m.backend}"
              + ("" if failed else "  SURVIVED"))
        for test_id in failed[:8]:
            print(f"    {test_id}")
        if len(failed) > 8:
            print(f"    ... and {len(failed) - 8} more")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
