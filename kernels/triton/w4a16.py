"""W4A16 GEMM on tensor cores in Triton: y [M, N] = x [M, K] @ W^T, W int4 in the internal packed
layout (pyllmops/quant/packing.py: qweight [N, K/2] uint8, byte j of row n = k 2j | 2j+1 << 4).

Small-M decode (M = 1..64) is the case this kernel is for, so it computes the transposed product
y^T [N, M] = W [N, K] @ x^T ("swap AB"): the weight tile is the MMA's A operand (its rows fill the
instruction's 64-row M side, and A may come from registers, so the dequantized weight goes
straight into wgmma / mma.sync) and the handful of tokens its narrow N side, instead of padding
1..16 tokens up to 64 rows of wasted MMA work. Per BLOCK_K step a program
  * loads its [BLOCK_N, BLOCK_K / 2] weight bytes once, as stored: each byte is read once, in
    16-byte vectors along K, through a `num_stages`-deep cp.async pipeline in shared memory;
  * takes the low nibbles (the even k) and the high nibbles (the odd k) as two [BLOCK_N,
    BLOCK_K / 2] halves of the tile, which meet x's even and odd columns in two dots: no nibble
    interleaving shuffle, and no repacking of the stored layout;
  * subtracts the zero point and multiplies by the scale in registers, casting straight into the
    dot's input dtype (x's: fp16/bf16 tensor cores on a GPU), accumulating in fp32.
Scales and zeros of a group: when no act-order g_idx is given and BLOCK_K divides the group size,
a K block lies in one group and the program loads one [BLOCK_N] vector of each per block; else it
gathers them per weight through g(k) (act-order, odd group sizes). A ragged last group (K % group
!= 0) needs nothing special: k past K is masked.

Split-K: at decode sizes the N / BLOCK_N output tiles are too few to fill a GPU, so K is split over
SPLIT_K programs writing fp32 partials [SPLIT_K, M, N], summed afterwards (deterministic, no
atomics). Tile shapes, split and pipeline depth come from a fixed table per M bucket
(`choose_config`), deterministic so tests can force every entry.
"""
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

# The CPU interpreter evaluates a bf16 tl.dot wrongly (numpy has no bf16), so under it a bf16 dot
# runs in fp32; fp16 it evaluates correctly, so the fp16 tensor-core path is tested on the CPU too.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dequant_gathered(q, k, k_ok, s_row, n_ok, s_ptr, z_ptr, gidx_ptr, group_size, HAS_GIDX: tl.constexpr):
    """(q [BLOCK_N, BLOCK_K / 2] - zero) * scale, each weight's group looked up by its k."""
    if HAS_GIDX:
        g = tl.load(gidx_ptr + k, mask=k_ok, other=0)
    else:
        g = k // group_size
    sz = s_row[:, None] + g[None, :]
    mask = n_ok[:, None] & k_ok[None, :]
    s = tl.load(s_ptr + sz, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + sz, mask=mask, other=0).to(tl.int32)
    return (q - z).to(tl.float32) * s


@triton.jit
def _w4a16_tc(x_ptr, q_ptr, s_ptr, z_ptr, gidx_ptr, out_ptr, M, N, K, G, group_size, k_per_split,
              stride_xm, HAS_GIDX: tl.constexpr, GROUP_ALIGNED: tl.constexpr, DOT_F32: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rb = tl.arange(0, BLOCK_K // 2)  # byte index within the K block: weights k = 2j (low nibble), 2j + 1
    n_ok, m_ok = rn < N, rm < M
    k_half = K // 2  # bytes per weight row (K is even)
    q_row = q_ptr + rn[:, None].to(tl.int64) * k_half
    s_row = rn.to(tl.int64) * G
    x_row = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    k_start = pid_k * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k0 in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        byte = k0 // 2 + rb
        b_ok = byte < k_end // 2
        q8 = tl.load(q_row + byte[None, :], mask=n_ok[:, None] & b_ok[None, :], other=0).to(tl.int32)
        k_even = 2 * byte
        if GROUP_ALIGNED:
            g = k0 // group_size
            s = tl.load(s_ptr + s_row + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
            z = tl.load(z_ptr + s_row + g, mask=n_ok, other=0).to(tl.int32)[:, None]
            w_lo = ((q8 & 0xF) - z).to(tl.float32) * s
            w_hi = ((q8 >> 4) - z).to(tl.float32) * s
        else:
            w_lo = _dequant_gathered(q8 & 0xF, k_even, b_ok, s_row, n_ok, s_ptr, z_ptr, gidx_ptr, group_size, HAS_GIDX)
            w_hi = _dequant_gathered(q8 >> 4, k_even + 1, b_ok, s_row, n_ok, s_ptr, z_ptr, gidx_ptr, group_size,
                                     HAS_GIDX)
        # x at the even and the odd k of the block, each meeting its nibble's half of the weight
        x_mask = m_ok[:, None] & b_ok[None, :]
        x_lo = tl.load(x_row + k_even[None, :], mask=x_mask, other=0.0)
        x_hi = tl.load(x_row + k_even[None, :] + 1, mask=x_mask, other=0.0)
        if DOT_F32:
            acc += tl.dot(w_lo, tl.trans(x_lo.to(tl.float32)), input_precision="ieee")
            acc += tl.dot(w_hi, tl.trans(x_hi.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(w_lo.to(x_lo.dtype), tl.trans(x_lo))
            acc += tl.dot(w_hi.to(x_hi.dtype), tl.trans(x_hi))
    out = out_ptr + pid_k.to(tl.int64) * M * N + rm[None, :].to(tl.int64) * N + rn[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


class Config(NamedTuple):
    """One launch configuration: tile shape (BLOCK_M tokens x BLOCK_N output channels x BLOCK_K),
    the K split, warps and pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int


# M bucket (largest M it serves) -> (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Up to 64
# tokens the weight stream dominates: narrow token tiles, deep pipelines, 64-element K steps of
# bytes (BLOCK_K = 128 weights); past that the tile grows toward a square compute-bound GEMM tile.
M_BUCKETS = (
    (16, (16, 64, 128, 4, 4)),
    (32, (32, 64, 128, 4, 4)),
    (64, (64, 64, 128, 4, 3)),
    (None, (64, 128, 64, 8, 3)),
)
# Split-K aims at this many programs per SM (the output tiles alone are N / BLOCK_N), keeping at
# least this many K blocks per split so each program still pipelines.
PROGRAMS_PER_SM = 2
MIN_BLOCKS_PER_SPLIT = 4
MAX_SPLIT_K = 16


def choose_config(m: int, n: int, k: int, group_size: int, has_gidx: bool, sm_count: int,
                  dot_f32: bool = False) -> Config:
    """The table entry for M, its BLOCK_K narrowed so that each K block lies in one group where the
    group size allows (a power of two >= 32), else halved for the per-weight scale gather (which
    holds a scale and a zero per weight in registers), and the split-K count that fills
    `sm_count` SMs. dot_f32 (fp32 activations): the fp32 operands take twice the registers, so
    tiles of 32+ tokens get 8 warps and, from 64 tokens, a K block of 4096 / BLOCK_N (the
    4-warp tiles spilled up to 19 KB at sm_80 and 784 B at sm_90a: bench/kernel_report.py)."""
    block_m, block_n, block_k, warps, stages = next(cfg for top, cfg in M_BUCKETS if top is None or m <= top)
    if dot_f32 and block_m >= 32:
        warps = 8
        if block_m >= 64:
            block_k = min(block_k, 4096 // block_n)
    if not has_gidx and group_size < block_k and group_size >= 32 and (group_size & (group_size - 1)) == 0:
        block_k = group_size
    elif has_gidx or group_size % block_k:
        block_k = min(block_k, 64)
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, block_m)
    k_blocks = triton.cdiv(k, block_k)
    split = triton.cdiv(PROGRAMS_PER_SM * sm_count, tiles)
    split = max(1, min(split, MAX_SPLIT_K, k_blocks // MIN_BLOCKS_PER_SPLIT))
    return Config(block_m, block_n, block_k, split, warps, stages)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: an H100's SM count, so CPU tests take the GPU's decisions


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, g_idx: Optional[torch.Tensor] = None,
                 config: Optional[Config] = None) -> torch.Tensor:
    """x [M, K] fp32/fp16/bf16; qweight [N, K/2] uint8; scales [N, G] float; zeros [N, G] uint8;
    group_size > 0 (resolved: K for per-channel); g_idx [K] int | None -> [M, N] x.dtype.
    `config` forces a launch configuration (tests); default: choose_config."""
    m, k = x.shape
    n, g = qweight.shape[0], scales.shape[1]
    dot_f32 = x.dtype == torch.float32 or (_INTERPRETED and x.dtype == torch.bfloat16)
    cfg = config or choose_config(m, n, k, group_size, g_idx is not None, _sm_count(x.device), dot_f32)
    aligned = g_idx is None and group_size % cfg.block_k == 0
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split_k = triton.cdiv(k, k_per_split)
    out_dtype = x.dtype if split_k == 1 else torch.float32
    out = torch.empty((split_k, m, n), dtype=out_dtype, device=x.device)
    xc = x.contiguous()
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m), split_k)
    _w4a16_tc[grid](
        xc, qweight.contiguous(), scales.contiguous(), zeros.contiguous(),
        g_idx.contiguous() if g_idx is not None else zeros, out, m, n, k, g, group_size, k_per_split,
        xc.stride(0), HAS_GIDX=g_idx is not None, GROUP_ALIGNED=aligned,
        DOT_F32=dot_f32, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps)
    return out[0] if split_k == 1 else out.sum(0).to(x.dtype)
