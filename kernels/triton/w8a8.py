"""W8A8 GEMM with the dequantization fused into the epilogue.

One program computes a BLOCK_M x BLOCK_N tile of out = float32(a @ b) * scale_a * scale_b + bias:
tl.dot on int8 tiles accumulates in int32 over K, then the tile is converted to float32 once,
scaled by its rows' scale_a and columns' scale_b, biased and stored in out's dtype. Per-tensor
scales are read through a zero stride, so one kernel serves every scale combination. Any shape and
any strides: edges are masked (masked int8 loads are 0, which adds nothing to the int32 sum).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _w8a8_kernel(a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, out_ptr, M, N, K,
                 stride_am, stride_ak, stride_bk, stride_bn, stride_sa, stride_sb, stride_om,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    mask_n = rn < N
    a_tile = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_tile = b_ptr + rk[:, None] * stride_bk + rn[None, :].to(tl.int64) * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = k0 + rk < K
        a = tl.load(a_tile, mask=mask_m[:, None] & mask_k[None, :], other=0)
        b = tl.load(b_tile, mask=mask_k[:, None] & mask_n[None, :], other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
        a_tile += BLOCK_K * stride_ak
        b_tile += BLOCK_K * stride_bk
    sa = tl.load(sa_ptr + rm * stride_sa, mask=mask_m, other=0.0)
    sb = tl.load(sb_ptr + rn * stride_sb, mask=mask_n, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn, mask=mask_n, other=0.0)[None, :]
    out_tile = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    tl.store(out_tile, out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def w8a8_matmul(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] int8, b [K, N] int8 (any strides), scale_a [1]/[M, 1] fp32, scale_b [1]/[1, N] fp32,
    bias [N] fp32 or None -> out [M, N] out_dtype. Arguments were validated by the front door."""
    m, k = a.shape
    n = b.shape[1]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    # tl.dot needs every block dimension >= 16; 64 x 64 x 64 keeps the interpreter quick and is a
    # sane GPU default for these int8 tiles.
    block_m = 16 if m <= 16 else 64
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    _w8a8_kernel[grid](
        a, b, scale_a, scale_b, bias if bias is not None else scale_b, out, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        0 if scale_a.numel() == 1 else 1, 0 if scale_b.numel() == 1 else 1, out.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=64)
    return out
