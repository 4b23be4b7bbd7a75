"""Group-wise low-bit (default 4-bit) quantization of a weight matrix, the layout weight-only
GEMMs consume.

    quantize_int4_grouped(w [N, K] fp32/fp16/bf16, group_size, symmetric=False, bits=4)
        -> Int4Quantized(values [N, K] uint8 in [0, 2**bits - 1], scales [N, G] fp32, zeros [N, G] uint8)

w is a linear layer's weight (N output features, K input features); groups of `group_size`
consecutive input features share a scale and zero point (G = K / group_size; group_size=-1 means
one group per row, i.e. per-channel). group_size must divide K.

Asymmetric: the group's range [min(w, 0), max(w, 0)] maps onto [0, 2**bits - 1]:
scale = (hi - lo) / (2**bits - 1), zero = round(-lo / scale), values = clamp(round(w / scale) + zero).
Symmetric: scale = absmax / (2**(bits-1) - 1), zero = 2**(bits-1) (GPTQ's convention, so both
variants share one unsigned storage format). Dequantize: (values - zero) * scale.
Rounding is round-half-to-even.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from pyllmops.ops import _dispatch
from pyllmops.ops._validate import FLOAT_DTYPES, check_finite, check_int, check_tensor

TINY = torch.finfo(torch.float32).tiny * 127


class Int4Quantized(NamedTuple):
    values: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = w.shape
    return w.reshape(n, k // group_size, group_size)


def reference_quantize_int4_grouped(w, group_size, symmetric=False, bits=4):
    """Plain float64 definition; the oracle in tests."""
    g = _grouped(w.double(), w.shape[1] if group_size == -1 else group_size)
    qmax = 2**bits - 1
    if symmetric:
        scale = g.abs().amax(-1, keepdim=True).clamp(min=TINY) / (2 ** (bits - 1) - 1)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo).clamp(min=TINY) / qmax
        zero = torch.round(-lo / scale)
    q = (torch.round(g / scale) + zero).clamp(0, qmax)
    return Int4Quantized(q.reshape(w.shape).to(torch.uint8), scale.squeeze(-1).float(), zero.squeeze(-1).to(torch.uint8))


@_dispatch.register("quantize_int4_grouped", "torch")
def _torch_quantize(w, group_size, symmetric, bits):
    g = _grouped(w.float(), group_size)
    qmax = 2**bits - 1
    if symmetric:
        scale = g.abs().amax(-1, keepdim=True).clamp_(min=TINY).div_(2 ** (bits - 1) - 1)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        lo = g.amin(-1, keepdim=True).clamp_(max=0)
        hi = g.amax(-1, keepdim=True).clamp_(min=0)
        scale = (hi - lo).clamp_(min=TINY).div_(qmax)
        zero = torch.round(-lo / scale)
    q = torch.round(g / scale).add_(zero).clamp_(0, qmax)
    return q.reshape(w.shape).to(torch.uint8), scale.squeeze(-1), zero.squeeze(-1).to(torch.uint8)


@torch.library.custom_op("pyllmops::quantize_int4_grouped", mutates_args=())
def _quantize_int4_op(w: torch.Tensor, group_size: int, symmetric: bool, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, s, z = _dispatch.call("quantize_int4_grouped", w.device, w, group_size, symmetric, bits)
    check_finite("w", s)
    return q, s, z


@_quantize_int4_op.register_fake
def _(w, group_size, symmetric, bits):
    n, k = w.shape
    groups = k // group_size
    return (w.new_empty((n, k), dtype=torch.uint8), w.new_empty((n, groups), dtype=torch.float32),
            w.new_empty((n, groups), dtype=torch.uint8))


def quantize_int4_grouped(w: torch.Tensor, group_size: int = 128, symmetric: bool = False, bits: int = 4) -> Int4Quantized:
    """Quantize w [N, K] group-wise along K; see the module docstring for the exact rule."""
    check_tensor("w", w, dtypes=FLOAT_DTYPES, ndim=2)
    check_int("group_size", group_size)
    check_int("bits", bits)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8], got {bits}")
    k = w.shape[1]
    if group_size == -1:
        group_size = k
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group_size must be -1 or a positive divisor of w.shape[1]={k}, got {group_size}")
    return Int4Quantized(*torch.ops.pyllmops.quantize_int4_grouped(w, group_size, bool(symmetric), bits))


def dequantize_int4_grouped(values: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                            out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(values - zeros) * scales, broadcast over each group: values [N, K], scales/zeros [N, G]."""
    check_tensor("values", values, dtypes=(torch.uint8,), ndim=2)
    check_tensor("scales", scales, dtypes=FLOAT_DTYPES, ndim=2, device=values.device)
    check_tensor("zeros", zeros, ndim=2, device=values.device)
    n, k = values.shape
    if scales.shape[0] != n or k % scales.shape[1]:
        raise ValueError(f"scales shape {tuple(scales.shape)} does not fit values {tuple(values.shape)}: "
                         f"need [N={n}, G] with G dividing K={k}")
    if zeros.shape != scales.shape:
        raise ValueError(f"zeros shape {tuple(zeros.shape)} must equal scales shape {tuple(scales.shape)}")
    gs = k // scales.shape[1]
    g = _grouped(values.float(), gs)
    out = (g - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return out.reshape(n, k).to(out_dtype)
