"""The "cpp" backend of quantize_int8: csrc/cpu/quant_int8_rows.cpp, one fused AVX-512 pass per row
(absmax, then scale + round + store) instead of the torch fallback's half-dozen full-tensor ops.
It feeds W8A8Linear's activations, where the torch path cost as much as a third of the int8 GEMM.

Kept apart from quant_int8.py (which defines the op) so the two can change independently; it
serves what the W8A8 layers need: symmetric, per-token dynamic or static per-tensor / per-token
scales, rows with unit column stride. Results are bit-identical to the torch fallback. The kernel
also reports NaN/inf in x, so the front door needs no separate isfinite pass (static scales).
"""
from __future__ import annotations

import torch

from pyllmops import _ext
from pyllmops.ops import _dispatch

DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # csrc FloatType


def _supports(x, granularity, symmetric, scale, zero_point):
    return (symmetric and x.stride(-1) == 1 and x.dtype in DTYPES
            and (granularity == "token" or (granularity == "tensor" and scale is not None)))


@_dispatch.register("quantize_int8", "cpp", devices=("cpu",), supports=_supports)
def cpp_quantize(x, granularity, symmetric, scale, zero_point):
    m, n = x.shape
    q = torch.empty((m, n), dtype=torch.int8)
    row_scale = torch.empty((m, 1), dtype=torch.float32)
    static = scale.float().contiguous() if scale is not None else None
    bad_rows = _ext.cpp().quantize_int8_rows(
        x.data_ptr(), DTYPES[x.dtype], m, n, x.stride(0), static.data_ptr() if static is not None else 0,
        granularity == "tensor", q.data_ptr(), row_scale.data_ptr(), torch.get_num_threads())
    out_scale = row_scale if granularity == "token" else static
    return q, out_scale, torch.zeros(out_scale.shape, dtype=torch.int32), bad_rows > 0
