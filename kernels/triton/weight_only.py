"""W8A16 matmul in Triton: y [M, N] = x [M, K] @ W^T, W int8 per output channel, converted in
registers (int4 weights have their own tensor-core kernel, kernels/w4a16.py).

Each program owns a BLOCK_M x BLOCK_N output tile and one K slice; per BLOCK_K step it loads the x
tile and the weight tile, converts the weight to the dot's input dtype and accumulates in fp32;
the per-row scale is applied once at the end.

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
def _w8a16_matmul(x_ptr, q_ptr, s_ptr, out_ptr, M, N, K, k_per_split, stride_xm, DOT_F32: tl.constexpr,
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
        w = tl.load(q_ptr + rn[:, None].to(tl.int64) * K + rk[None, :], mask=w_mask, other=0).to(tl.float32)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
    acc *= tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + pid_k.to(tl.int64) * M * N + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(out, acc, mask=m_ok[:, None] & n_ok[None, :])


def w8a16_matmul(x, qweight, scales):
    """x [M, K]; qweight [N, K] int8; scales [N] -> [M, N] x.dtype."""
    m, k = x.shape
    n = qweight.shape[0]
    block_m, block_n, block_k = 16, 64, 64
    split_k = max(1, min(8, k // (4 * block_k))) if m <= 16 else 1
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    split_k = triton.cdiv(k, k_per_split)
    partial = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    xc = x.contiguous()
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
    dot_f32 = x.dtype == torch.float32 or _INTERPRETED
    # Register budget (bench/kernel_report.py, sm_80 and sm_90a): the fp32 dot spills at 4 warps;
    # 8 warps with 1 stage hold it. The int8 half path fits 4 warps with 3 stages.
    _w8a16_matmul[grid](xc, qweight.contiguous(), scales.contiguous(), partial, m, n, k, k_per_split, xc.stride(0),
                        DOT_F32=dot_f32, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                        num_warps=8 if dot_f32 else 4, num_stages=1 if dot_f32 else 3)
    return (partial[0] if split_k == 1 else partial.sum(0)).to(x.dtype)
