"""Fused per-row symmetric int8 quantization: absmax, scale and round in one kernel.

Each program owns ROWS rows, read twice (absmax pass, quantize pass) in BLOCK-wide chunks, so any
N works with registers bounded by ROWS x BLOCK. Both divisions (amax / 127 and x / scale) are IEEE
(div_rn: compiled, a plain `/` is div.full.f32, ~2 ulp) and rounding is round-half-to-even (rint),
so scale and values match the torch fallback bit for bit, compiled or interpreted.
"""
import torch
import triton
import triton.language as tl

from pyllmops.ops.quant_int8 import TINY_AMAX


@triton.jit
def _rint(v):
    # Round half to even using only floor (no libdevice, so the CPU interpreter runs it too).
    # v - floor(v) is exact for |v| < 2**23; larger floats are already integers.
    r = tl.floor(v)
    d = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def _quantize_rows(x_ptr, q_ptr, scale_ptr, static_ptr, M, N, stride_xm,
                   HAS_STATIC: tl.constexpr, PER_TENSOR: tl.constexpr, TINY: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # A program owns ROWS rows (several short rows per program keeps small-N launches efficient).
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    x_rows = x_ptr + rows[:, None] * stride_xm
    offs = tl.arange(0, BLOCK)[None, :]
    if HAS_STATIC:
        if PER_TENSOR:
            scale = tl.load(static_ptr + rows * 0, mask=row_ok, other=1.0)
        else:
            scale = tl.load(static_ptr + rows, mask=row_ok, other=1.0)
    else:
        amax = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for start in range(0, N, BLOCK):
            m = row_ok[:, None] & (start + offs < N)
            v = tl.abs(tl.load(x_rows + start + offs, mask=m, other=0.0).to(tl.float32))
            # keep NaN visible: max() would drop it
            amax = tl.where((v != v) | (v > amax), v, amax)
        row_max = tl.max(amax, axis=1)
        has_nan = tl.sum((amax != amax).to(tl.int32), axis=1) > 0
        scale = tl.math.div_rn(tl.maximum(row_max, TINY), tl.full([ROWS], 127.0, tl.float32))
        scale = tl.where(has_nan, float("nan"), scale)
    tl.store(scale_ptr + rows, scale, mask=row_ok)
    for start in range(0, N, BLOCK):
        m = row_ok[:, None] & (start + offs < N)
        v = tl.load(x_rows + start + offs, mask=m, other=0.0).to(tl.float32)
        qv = _rint(tl.math.div_rn(v, scale[:, None]))
        qv = tl.minimum(tl.maximum(qv, -127.0), 127.0)
        tl.store(q_ptr + rows[:, None] * N + start + offs, qv.to(tl.int8), mask=m)


def quantize_int8_rows(x: torch.Tensor, static_scale: torch.Tensor | None = None):
    """x [M, N] with unit column stride -> (q [M, N] int8, scale [M, 1] fp32).

    static_scale: None (dynamic per-row), [1] (per-tensor) or [M, 1] (per-row), fp32."""
    m, n = x.shape
    q = torch.empty((m, n), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    static = static_scale.float().contiguous() if static_scale is not None else scale
    block = min(4096, triton.next_power_of_2(max(n, 16)))
    rows = max(1, min(16, 4096 // block))
    if m:
        _quantize_rows[(triton.cdiv(m, rows),)](
            x, q, scale, static, m, n, x.stride(0),
            HAS_STATIC=static_scale is not None,
            PER_TENSOR=static_scale is not None and static_scale.numel() == 1,
            TINY=TINY_AMAX, ROWS=rows, BLOCK=block,
            num_warps=8 if block >= 2048 else 4)  # 4096-wide chunks spill at 4 warps (sm_80)
    return q, scale
