"""The compiled Triton quantizer keeps the bit-identity claim of kernels/triton/quant_int8.py: compiled for
sm_80 and sm_90 (no GPU needed), its PTX divides only with div.rn.f32 (IEEE), never div.full /
div.approx / rcp.approx, which a plain `/` becomes and the interpreter never shows."""
import os
import re
import subprocess
import sys

import pytest

_SCRIPT = """
import re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pyllmops.kernels.quant_int8 import _quantize_rows

sig = {"x_ptr": "*bf16", "q_ptr": "*i8", "scale_ptr": "*fp32", "static_ptr": "*fp32", "M": "i32", "N": "i32",
       "stride_xm": "i32", "HAS_STATIC": "constexpr", "PER_TENSOR": "constexpr", "TINY": "constexpr",
       "ROWS": "constexpr", "BLOCK": "constexpr"}
for cap in map(int, sys.argv[1:]):
    for static in (False, True):
        src = ASTSource(_quantize_rows, sig, {(7,): static, (8,): False, (9,): 1e-30, (10,): 4, (11,): 1024})
        ptx = triton.compile(src, target=GPUTarget("cuda", cap, 32)).asm["ptx"]
        print(cap, static, sorted(set(re.findall(r"\\b(?:div|rcp)\\.[\\w.]+", ptx))))
"""


def test_compiled_divisions_are_ieee():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, "80", "90"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4, done.stdout
    for line in lines:
        ops = set(re.findall(r"'([^']+)'", line))
        assert "div.rn.f32" in ops, line
        assert not ops - {"div.rn.f32"}, f"approximate division in the compiled kernel: {line}"
