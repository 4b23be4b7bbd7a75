"""The "cpp" (default CPU) backend of w8a8_matmul: the fastest int8 GEMM torch offers on the CPU,
with pyllmops._C's one-pass dequantizing epilogue (csrc/cpu/w8a8_epilogue.cpp) where the GEMM
cannot fuse it.

  packed b (pack_w8a8_weight): oneDNN's int8 linear, torch.ops.onednn.qlinear_pointwise (AMX or
    VNNI brgemm on the prepacked weight). It fuses the weight scales always, and the activation
    scale, the bias and a bfloat16/float32 output when the activation scale is per-tensor. A
    per-token scale_a is then applied by the C++ epilogue in one pass (in place for float32 out).
  strided b: torch._int_mm (int32 out) where the CPU has int8 dot-product instructions, else the
    float32 sgemm in exact K chunks (w8a8.int8_mm_cpu: torch._int_mm is 25-30x slower there), then
    the C++ epilogue for all scales, bias and the cast.

oneDNN on the packed weight beats torch._int_mm, which reorders the weight on every call
(bench/bench_w8a8.py; docs/cpu-kernels.md). The C++ passes run on torch's
OpenMP threads (csrc/cpu/parallel.h), which are still spinning from the GEMM next to them. Kept
apart from w8a8.py (which defines the op) like quant_int8_cpp.py.
"""
from __future__ import annotations

import functools

import torch

from pyllmops import _ext
from pyllmops.ops import _dispatch
from pyllmops.ops.quant_int8_cpp import DTYPES, cpp_quantize
from pyllmops.ops.w8a8 import int8_mm, is_packed

FUSED_OUT = (torch.float32, torch.bfloat16)  # output dtypes oneDNN's qlinear writes itself
def _ptr(t):
    return 0 if t is None else t.data_ptr()


def _epilogue(acc, scale_a, scale_b, bias, out_dtype):
    """out = out_dtype(float(acc) * scale_a * scale_b + bias); None scales/bias are skipped.
    acc [M, N] int32 or float32 (then written in place when out_dtype is float32)."""
    m, n = acc.shape
    out = acc if acc.dtype == out_dtype else torch.empty((m, n), dtype=out_dtype)
    sa = None if scale_a is None else scale_a.float().contiguous()
    sb = None if scale_b is None else scale_b.float().contiguous()
    bias = None if bias is None else bias.float().contiguous()
    _ext.cpp().w8a8_epilogue(
        acc.data_ptr(), acc.dtype == torch.int32, m, n, _ptr(sa), sa is not None and sa.numel() != 1,
        _ptr(sb), sb is not None and sb.numel() != 1, _ptr(bias), out.data_ptr(), DTYPES[out_dtype],
        torch.get_num_threads())
    return out


@functools.lru_cache(maxsize=64)
def _zero_points(n: int) -> torch.Tensor:
    """The weight zero points oneDNN's API wants (symmetric: all 0), made once per width N."""
    return torch.zeros(n, dtype=torch.int64)


def _weight_scales(scale_b: torch.Tensor, n: int) -> torch.Tensor:
    """scale_b [1] or [1, N] -> the [N] float32 vector oneDNN's qlinear takes."""
    return scale_b.float().reshape(-1).expand(n).contiguous()


def _onednn(a, b, scale_a, scale_b, bias, out_dtype):
    n = b.shape[1]
    return _qlinear(a, b, scale_a, _weight_scales(scale_b, n), _zero_points(n), bias, out_dtype)


def _qlinear(a, b, scale_a, w_scale, w_zp, bias, out_dtype):
    """oneDNN's int8 linear on the packed b, w_scale [N] float32 and w_zp [N] its weight scales and
    zero points; a per-token scale_a and the bias with it are left to the C++ epilogue."""
    per_tensor = scale_a.numel() == 1
    fused = per_tensor and out_dtype in FUSED_OUT
    out = torch.ops.onednn.qlinear_pointwise(
        a.contiguous(), float(scale_a) if per_tensor else 1.0, 0, b, w_scale, w_zp,
        None if bias is None or not per_tensor else bias.float(), 1.0, 0,
        out_dtype if fused else torch.float32, "none", [], "")
    if fused:
        return out
    if per_tensor:  # scales and bias are in; only the cast (float16) is left
        return _epilogue(out, None, None, None, out_dtype)
    return _epilogue(out, scale_a, None, bias, out_dtype)


@_dispatch.register("w8a8_matmul", "cpp", devices=("cpu",))
def _cpp_w8a8(a, b, scale_a, scale_b, bias, out_dtype):
    if is_packed(b):
        return _onednn(a, b, scale_a, scale_b, bias, out_dtype)
    return _epilogue(int8_mm(a.contiguous(), b), scale_a, scale_b, bias, out_dtype)


class LinearPlan:
    """What W8A8Linear's eager CPU forward needs, in the form the kernels take, made once per
    weight: the packed weight b, its scales as oneDNN's [N] float32 vector and zero points, the
    bias as float32, and the static activation scale [1] float32 (None: dynamic per token)."""

    __slots__ = ("b", "w_scale", "w_zp", "bias", "input_scale")

    def __init__(self, b: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 input_scale: torch.Tensor | None):
        n = b.shape[1]
        self.b = b
        self.w_scale = _weight_scales(weight_scale, n)
        self.w_zp = _zero_points(n)
        self.bias = None if bias is None else bias.float().contiguous()
        self.input_scale = None if input_scale is None else input_scale.float().reshape(1).contiguous()


def w8a8_linear(x: torch.Tensor, plan: LinearPlan) -> torch.Tensor:
    """x [M, K] float (unit column stride) -> [M, N] x.dtype: this backend's quantize_int8 (per
    token, or per tensor with plan.input_scale) and w8a8_matmul back to back, without the ops'
    per-call checks and conversions of constant operands (per call they cost about as much as
    a 128-token GEMM). x is still checked for NaN/inf, by the quantizing kernel."""
    gran = "token" if plan.input_scale is None else "tensor"
    q, scale_a, _, nonfinite = cpp_quantize(x, gran, True, plan.input_scale, None)
    if nonfinite:
        raise ValueError("x contains NaN or inf")
    if not is_packed(plan.b):  # oneDNN's packed int8 GEMM is not exact or not fast here (pack_w8a8_weight)
        return _epilogue(int8_mm(q, plan.b), scale_a, plan.w_scale, plan.bias, x.dtype)
    return _qlinear(q, plan.b, scale_a, plan.w_scale, plan.w_zp, plan.bias, x.dtype)
