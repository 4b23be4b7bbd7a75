"""Round-to-nearest weight quantization (no calibration), and the per-group rule GPTQ/AWQ reuse.

    rtn_int4(w [N, K] float, group_size=128, bits=4, symmetric=False) -> Int4Weight
    rtn_int8(w [N, K] float) -> Int8Weight            (symmetric, per output channel)

The rounding rule is pyllmops.quantize_int4_grouped's (asymmetric: the range [min(w, 0), max(w, 0)]
onto [0, 2**bits - 1]; symmetric: absmax / (2**(bits-1) - 1) with zero 2**(bits-1)). When
group_size does not divide K the last group is ragged: it is quantized on its own, per channel
over its (shorter) slice, exactly as if it were a full group.
"""
from __future__ import annotations

import torch

from pyllmops.ops.quant_int4 import quantize_int4_grouped
from pyllmops.ops.quant_int8 import quantize_int8
from pyllmops.quant.packing import Int4Weight, Int8Weight


def group_params(w: torch.Tensor, bits: int = 4, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale [N] fp32, zero [N] fp32) for one group w [N, g] (every column shares them)."""
    q = quantize_int4_grouped(w, -1, symmetric, bits)
    return q.scales[:, 0], q.zeros[:, 0].float()


def group_params_mse(w: torch.Tensor, bits: int = 4, symmetric: bool = False, grid: int = 50,
                     max_shrink: float = 0.5, norm: float = 2.4) -> tuple[torch.Tensor, torch.Tensor]:
    """group_params with the range shrunk per row, by the factor in [1 - max_shrink, 1] (grid
    points) that minimises sum |w - dequant(quant(w))|^norm over the group (GPTQ's `mse` grid:
    at 3 bits a clipped range rounds most weights finer than the full one)."""
    w = w.float()
    best_s, best_z = group_params(w, bits, symmetric)
    best_err = _deq_err(w, best_s, best_z, bits, norm)
    for p in torch.linspace(1.0, 1.0 - max_shrink, grid)[1:].tolist():
        lo, hi = w.amin(1, keepdim=True).clamp(max=0) * p, w.amax(1, keepdim=True).clamp(min=0) * p
        s, z = group_params(torch.maximum(torch.minimum(w, hi), lo), bits, symmetric)
        err = _deq_err(w, s, z, bits, norm)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def _deq_err(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, bits: int, norm: float) -> torch.Tensor:
    return ((quantize_with(w, s, z, bits) - z[:, None]) * s[:, None] - w).abs().pow(norm).sum(1)


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer values (float tensor) of w [N, ...] with per-row scale/zero [N]: clamp(round(w/s) + z)."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (torch.round(w.float() / scale.view(shape)) + zero.view(shape)).clamp_(0, 2**bits - 1)


def rtn_int4(w: torch.Tensor, group_size: int = 128, bits: int = 4, symmetric: bool = False) -> Int4Weight:
    """Group-wise RTN of a linear weight w [N, K] into the int4 layout (ragged last group allowed)."""
    n, k = w.shape
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be -1 or positive, got {group_size}")
    gs = k if group_size == -1 else min(group_size, k)  # a group wider than K is one group
    full = (k // gs) * gs
    parts = []
    if full:
        parts.append(quantize_int4_grouped(w[:, :full], gs, symmetric, bits))
    if full < k:
        parts.append(quantize_int4_grouped(w[:, full:], -1, symmetric, bits))
    values, scales, zeros = (torch.cat(t, dim=1) for t in zip(*parts))
    return Int4Weight.from_values(values, scales, zeros, gs, bits)


def rtn_int8(w: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel int8 (W8A16): scales [N] = absmax(row) / 127."""
    q = quantize_int8(w, "token", symmetric=True)
    return Int8Weight(q.values, q.scale[:, 0])
