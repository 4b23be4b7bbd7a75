"""int8 quantization of an M x N matrix (M tokens, N channels) at the seed's three granularities.

    quantize_int8(x [M, N] fp32/fp16/bf16, granularity, symmetric=True, scale=None, zero_point=None)
        -> Int8Quantized(values [M, N] int8, scale fp32, zero_point int32 | None)

scale shape by granularity: "tensor" [1], "token" [M, 1] (one per row), "channel" [1, N] (one per
column); it broadcasts against x, which is also the layout w8a8_matmul takes.

Symmetric (zero_point None): scale = max(absmax, TINY) / 127, values = clamp(round(x / scale),
-127, 127). -128 is never produced, so negation and the int8 GEMM stay symmetric.
Asymmetric: the range [min(x, 0), max(x, 0)] maps onto [-128, 127]:
scale = (hi - lo) / 255, zero_point = -128 - round(lo / scale), values = clamp(round(x / scale) +
zero_point, -128, 127), and dequantize gives (values - zero_point) * scale.
Rounding is round-half-to-even (torch.round); x / scale is an IEEE float32 division in every
backend. Each backend returns (values, scale, zero_point, nonfinite): nonfinite is whether x held
a NaN or inf when the kernel saw that on its way (the fused CPU kernel does), or None, and then
the front door checks (the dynamic scale shows it; a static one needs a pass over x). Dynamic when `scale` is None (computed from x), static otherwise (given, e.g. from
calibration). TINY = float32 tiny * 127 keeps an all-zero row's scale finite.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from pyllmops.ops import _dispatch
from pyllmops.ops._validate import FLOAT_DTYPES, check_choice, check_finite, check_tensor

GRANULARITIES = ("tensor", "token", "channel")
TINY_AMAX = torch.finfo(torch.float32).tiny * 127


class Int8Quantized(NamedTuple):
    values: torch.Tensor
    scale: torch.Tensor
    zero_point: Optional[torch.Tensor]


def scale_shape(granularity: str, m: int, n: int) -> tuple[int, ...]:
    return {"tensor": (1,), "token": (m, 1), "channel": (1, n)}[granularity]


def _reduce(x: torch.Tensor, granularity: str, fn: str) -> torch.Tensor:
    """amax/amin of x reduced to the granularity's scale shape."""
    red = getattr(torch, fn)
    if granularity == "tensor":
        return red(x).reshape(1)
    return red(x, dim=1 if granularity == "token" else 0, keepdim=True)


# ----------------------------------------------------------------------------- reference
def reference_quantize_int8(x, granularity, symmetric=True, scale=None, zero_point=None):
    """Plain float64 definition; the oracle in tests."""
    xd = x.double()
    if scale is None:
        if symmetric:
            scale = _reduce(xd.abs(), granularity, "amax").clamp(min=TINY_AMAX) / 127
        else:
            lo = _reduce(xd, granularity, "amin").clamp(max=0)
            hi = _reduce(xd, granularity, "amax").clamp(min=0)
            scale = (hi - lo).clamp(min=TINY_AMAX) / 255
            zero_point = -128 - torch.round(lo / scale)
    scale = scale.double()
    if symmetric:
        q = torch.round(xd / scale).clamp(-127, 127)
        return Int8Quantized(q.to(torch.int8), scale.float(), None)
    q = (torch.round(xd / scale) + zero_point.double()).clamp(-128, 127)
    return Int8Quantized(q.to(torch.int8), scale.float(), zero_point.to(torch.int32))


# ----------------------------------------------------------------------------- torch fallback
@_dispatch.register("quantize_int8", "torch")
def _torch_quantize(x, granularity, symmetric, scale, zero_point):
    xf = x.float()
    if scale is None:
        if symmetric:
            scale = _reduce(xf.abs(), granularity, "amax").clamp_(min=TINY_AMAX).div_(127)
        else:
            lo = _reduce(xf, granularity, "amin").clamp_(max=0)
            hi = _reduce(xf, granularity, "amax").clamp_(min=0)
            scale = (hi - lo).clamp_(min=TINY_AMAX).div_(255)
            zero_point = (-128 - torch.round(lo / scale)).to(torch.int32)
    q = torch.round(xf / scale)
    if symmetric:
        q = q.clamp_(-127, 127)
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
    else:
        q = q.add_(zero_point).clamp_(-128, 127)
    return q.to(torch.int8), scale, zero_point, None


def _rows_supported(x, granularity, symmetric, scale, zero_point):
    return symmetric and (granularity == "token" or (granularity == "tensor" and scale is not None)) and x.stride(-1) == 1


# ----------------------------------------------------------------------------- triton
@_dispatch.register("quantize_int8", "triton", supports=_rows_supported)
def _triton_quantize(x, granularity, symmetric, scale, zero_point):
    from pyllmops.kernels.quant_int8 import quantize_int8_rows

    q, row_scale = quantize_int8_rows(x, scale)
    out_scale = row_scale if granularity == "token" else scale
    return q, out_scale, torch.zeros(out_scale.shape, dtype=torch.int32, device=x.device), None


# ----------------------------------------------------------------------------- cuda
_CUDA_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


@_dispatch.register("quantize_int8", "cuda", devices=("cuda",), supports=_rows_supported)
def _cuda_quantize(x, granularity, symmetric, scale, zero_point):
    from pyllmops import _ext

    m, n = x.shape
    q = torch.empty((m, n), dtype=torch.int8, device=x.device)
    row_scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    static = scale.float().contiguous() if scale is not None else None
    _ext.cuda().quantize_int8_rows(
        x.data_ptr(), _CUDA_DTYPES[x.dtype], m, n, x.stride(0), static.data_ptr() if static is not None else 0,
        granularity == "tensor", q.data_ptr(), row_scale.data_ptr(), torch.cuda.current_stream(x.device).cuda_stream)
    out_scale = row_scale if granularity == "token" else static
    return q, out_scale, torch.zeros(out_scale.shape, dtype=torch.int32, device=x.device), None


# ----------------------------------------------------------------------------- front door
@torch.library.custom_op("pyllmops::quantize_int8", mutates_args=())
def _quantize_int8_op(x: torch.Tensor, granularity: str, symmetric: bool, scale: Optional[torch.Tensor],
                      zero_point: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if scale is not None:
        check_finite("scale", scale)
        if (scale.item() <= 0) if scale.numel() == 1 else bool((scale <= 0).any()):
            raise ValueError("scale must be > 0 everywhere")
    q, s, z, nonfinite = _dispatch.call("quantize_int8", x.device, x, granularity, symmetric, scale, zero_point)
    if nonfinite:
        raise ValueError("x contains NaN or inf")
    if nonfinite is None:
        # a NaN/inf anywhere in x shows up in its group's dynamic scale; a static scale hides it
        check_finite("x", s if scale is None else x)
    if scale is not None and s.data_ptr() == scale.data_ptr():
        s = s.clone()  # a custom op's outputs may not alias its inputs
    return q, s.float(), z


@_quantize_int8_op.register_fake
def _(x, granularity, symmetric, scale, zero_point):
    m, n = x.shape
    shape = scale_shape(granularity, m, n)
    return (x.new_empty((m, n), dtype=torch.int8), x.new_empty(shape, dtype=torch.float32),
            x.new_empty(shape, dtype=torch.int32))


def quantize_int8(x: torch.Tensor, granularity: str = "token", symmetric: bool = True,
                  scale: Optional[torch.Tensor] = None, zero_point: Optional[torch.Tensor] = None) -> Int8Quantized:
    """Quantize x [M, N] (fp32/fp16/bf16) to int8; see the module docstring for the exact rule.

    scale / zero_point, when given (static quantization), must have the granularity's shape
    ([1], [M, 1] or [1, N]); zero_point only for symmetric=False.
    """
    check_tensor("x", x, dtypes=FLOAT_DTYPES, ndim=2)
    check_choice("granularity", granularity, GRANULARITIES)
    if not isinstance(symmetric, bool):
        raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__}")
    want = scale_shape(granularity, *x.shape)
    if scale is not None:
        check_tensor("scale", scale, dtypes=FLOAT_DTYPES, device=x.device)
        if tuple(scale.shape) != want:
            raise ValueError(f"scale must have shape {want} for granularity={granularity!r}, got {tuple(scale.shape)}")
        if not symmetric:
            if zero_point is None:
                raise ValueError("zero_point is required with a static scale when symmetric=False")
            check_tensor("zero_point", zero_point, dtypes=(torch.int32, torch.int64, torch.int8), device=x.device)
            if tuple(zero_point.shape) != want:
                raise ValueError(f"zero_point must have shape {want}, got {tuple(zero_point.shape)}")
    elif zero_point is not None:
        raise ValueError("zero_point is only accepted together with a static scale")
    if symmetric and zero_point is not None:
        raise ValueError("zero_point must be None when symmetric=True")
    q, s, z = torch.ops.pyllmops.quantize_int8(x, granularity, symmetric, scale, zero_point)
    return Int8Quantized(q, s, None if symmetric else z)


def dequantize_int8(values: torch.Tensor, scale: torch.Tensor, zero_point: Optional[torch.Tensor] = None,
                    out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(values - zero_point) * scale in float32, cast to out_dtype. values [M, N] int8."""
    check_tensor("values", values, dtypes=(torch.int8,), ndim=2)
    check_tensor("scale", scale, dtypes=FLOAT_DTYPES, device=values.device)
    m, n = values.shape
    if tuple(scale.shape) not in {(1,), (m, 1), (1, n)}:
        raise ValueError(f"scale must have shape (1,), ({m}, 1) or (1, {n}) for values {tuple(values.shape)}, "
                         f"got {tuple(scale.shape)}")
    q = values.float()
    if zero_point is not None:
        check_tensor("zero_point", zero_point, device=values.device)
        if zero_point.shape != scale.shape:
            raise ValueError(f"zero_point shape {tuple(zero_point.shape)} must equal scale shape {tuple(scale.shape)}")
        q = q - zero_point.float()
    return (q * scale.float()).to(out_dtype)
