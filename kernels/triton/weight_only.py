"""Weight-only matmul in Triton: y [M, N] = x [M, K] @ W^T, W int4 (internal packed layout,
pyllmops/quant/packing.py) or int8 per-channel, dequantized in registers.

One kernel serves both: each program owns a BLOCK_M x BLOCK_N output tile and one K slice; per
BLOCK_K step it loads the x tile, loads the weight tile (int4: each byte is read for its two
channels and the nibble picked by k % 2), gathers each channel's scale and zero by its group
(k // group_size, or g_idx[k] under act-order, so ragged groups and act-order need nothing special),
dequantizes to the dot's input dtype and accumulates in fp32. int8 applies the per-row scale once
at the end.

Split-K for small M: a decode GEMM (M <= 16) has only N / BLOCK_N tiles, too few to fill a GPU,
so K is split over SPLIT_K programs that write fp32 partials [SPLIT_K, M, N], summed afterwards
(deterministic, no atomics).
"""
import os

import torch
import triton
import triton.language as tl


# The CPU interpreter evaluates a bf16/fp16 tl.dot wrongly (numpy has no bf16), so under it the dot
# runs in fp32; on a GPU, half-precision x meets a weight dequantized to its dtype (tensor cores).
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _weight_only_matmul(x_ptr, q_ptr, s_ptr, z_ptr, gidx_ptr, out_ptr, M, N, K, G, group_size, k_per_split,
                        stride_xm, INT4: tl.constexpr, HAS_GIDX: tl.constexpr, DOT_F32: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = rm < M, rn < N
    k_start = pid_k * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < k_end
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + rk[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = n_ok[:, None] & k_ok[None, :]
        if INT4:
            byte = tl.load(q_ptr + rn[:, None].to(tl.int64) * (K // 2) + (rk // 2)[None, :], mask=w_mask, other=0)
            q = (byte.to(tl.int32) >> ((rk % 2) * 4)[None, :]) & 0xF
            if HAS_GIDX:
                g = tl.load(gidx_ptr + rk, mask=k_ok, other=0)
            else:
                g = rk // group_size
            sz = rn[:, None].to(tl.int64) * G + g[None, :]
            s = tl.load(s_ptr + sz, mask=w_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + sz, mask=w_mask, other=0).to(tl.float32)
            w = (q.to(tl.float32) - z) * s
        else:
            w = tl.load(q_ptr + rn[:, None].to(tl.int64) * K + rk[None, :], mask=w_mask, other=0).to(tl.float32)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    if not INT4:
        acc *= tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + pid_k.to(tl.int64) * M * N + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])


def _launch(x, qweight, scales, zeros, g_idx, group_size, n, int4):
    m, k = x.shape
    block_m, block_n, block_k = 16, 64, 64
    split_k = max(1, min(8, k // (4 * block_k))) if m <= 16 else 1
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    split_k = triton.cdiv(k, k_per_split)
    partial = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    xc = x.contiguous()
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
    _weight_only_matmul[grid](
        xc, qweight.contiguous(), scales.contiguous(), zeros.contiguous() if zeros is not None else scales,
        g_idx.contiguous() if g_idx is not None else scales, partial, m, n, k,
        scales.shape[1] if int4 else 1, group_size, k_per_split, xc.stride(0),
        INT4=int4, HAS_GIDX=g_idx is not None, DOT_F32=x.dtype == torch.float32 or _INTERPRETED,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return (partial[0] if split_k == 1 else partial.sum(0)).to(x.dtype)


def w4a16_matmul(x, qweight, scales, zeros, group_size, g_idx=None):
    """x [M, K]; qweight [N, K/2] uint8; scales/zeros [N, G]; group_size > 0 (no -1 here)."""
    return _launch(x, qweight, scales, zeros, g_idx, group_size, qweight.shape[0], True)


def w8a16_matmul(x, qweight, scales):
    """x [M, K]; qweight [N, K] int8; scales [N]."""
    return _launch(x, qweight, scales, None, None, 1, qweight.shape[0], False)
