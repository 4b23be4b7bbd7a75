"""W4A8: an int4 weight (the w4a16_matmul layout) times activations quantized to int8 per call.

    w4a8_matmul(x [M, K] fp32/fp16/bf16, qweight [N, K/2] uint8, scales [N, G] float,
                zeros [N, G] uint8, group_size) -> [M, N] x.dtype

x is quantized per row in blocks of 32 channels, symmetric, like llama.cpp's Q8_0 (with a float32
scale where Q8_0 stores fp16): d = max|x| / 127 and q = round(x / d), computed in float32, round
half to even, q = 0 in a block of zeros. Then y = (q * d) @ W^T with W[n, k] = (qweight[n, k] -
zeros[n, g(k)]) * scales[n, g(k)] as in w4a16_matmul; K % 32 == 0, G = ceil(K / group_size) (the last
group may be ragged). A block of x holding a NaN or inf makes the outputs it reaches NaN.

Why: on CPUs with AVX-512 VNNI, vpdpbusd does 64 int8 multiply-adds per instruction, so the int4 x
int8 products cost 2 instructions per 128 weights of a row where w4a16's exact kernel needs 6. It is
what IPEX (lowp_mode=INT8), torchao (Int8DynamicActivationInt4WeightConfig, "8da4w") and llama.cpp
(Q4 x Q8_0) run for int4 decode on CPUs. It is an approximation of w4a16_matmul: each activation
moves by up to half a step, max|x of its 32-block| / 254 (about 1% relative RMS error of the
output against the exact w4a16 product on real activations, several times less than what the int4
weight itself costs; measured in docs/cpu-kernels.md). Opt-in: nothing calls it in place of
w4a16_matmul.

Backends:
  reference  quantize x as above, dequantize q * d and W in float64, matmul (the oracle).
  torch      the same quantization, F.linear in float32 on the dequantized weight; any shape.
  cpp        csrc/cpu/weight_only.cpp w4a8_gemm, AVX-512 VNNI: decode-sized M <= 16, group_size a
             multiple of 128 or -1 (each 64-byte row block of 128 channels in one group).
Not differentiable (the rounding of x has no useful gradient); use w4a16_matmul to train through.
"""
from __future__ import annotations

import torch

from pyllmops.ops import _dispatch
from pyllmops.ops._validate import FLOAT_DTYPES, check_tensor
from pyllmops.ops.weight_only import DECODE_MAX_M, check_int4_weight, dequantize_int4

Q8_BLOCK = 32


def quantize_activations_q8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float (K % 32 == 0) -> (q [M, K] int8, d [M, K/32] float32), x ~= q * d per block."""
    m, k = x.shape
    xb = x.float().reshape(m, k // Q8_BLOCK, Q8_BLOCK)
    d = xb.abs().amax(-1) / 127
    # NaN/inf: d is NaN or inf, x / d is NaN where x is not finite and q * d is NaN (below)
    q = torch.where(d[..., None] > 0, torch.round(xb / d[..., None]), 0.0)
    q = torch.where(torch.isfinite(d)[..., None], q, 0.0)
    return q.to(torch.int8).reshape(m, k), d


def _dequantized_activations(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    q, d = quantize_activations_q8(x)
    m, k = x.shape
    # a block with a non-finite x contributes NaN, as the kernels do
    d = torch.where(torch.isfinite(d), d, float("nan"))
    return (q.to(dtype).reshape(m, k // Q8_BLOCK, Q8_BLOCK) * d.to(dtype)[..., None]).reshape(m, k)


# ----------------------------------------------------------------------------- backends
@_dispatch.register("w4a8_matmul", "reference")
def _reference(x, qweight, scales, zeros, group_size):
    w = dequantize_int4(qweight, scales, zeros, group_size, None, torch.float64)
    return (_dequantized_activations(x, torch.float64) @ w.t()).to(x.dtype)


@_dispatch.register("w4a8_matmul", "torch")
def _torch(x, qweight, scales, zeros, group_size):
    w = dequantize_int4(qweight, scales, zeros, group_size, None, torch.float32)
    return torch.nn.functional.linear(_dequantized_activations(x, torch.float32), w).to(x.dtype)


def _cpp_supported(x, qweight, scales, zeros, group_size):
    from pyllmops import _ext

    k = x.shape[1]
    gs = k if group_size == -1 else group_size
    return x.shape[0] <= DECODE_MAX_M and (gs % 128 == 0 or gs == k) and _ext.cpp().weight_only_vnni()


@_dispatch.register("w4a8_matmul", "cpp", devices=("cpu",), supports=_cpp_supported)
def _cpp(x, qweight, scales, zeros, group_size):
    from pyllmops import _ext

    m, k = x.shape
    n = qweight.shape[0]
    xf = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
    sf = scales if scales.dtype == torch.float32 and scales.is_contiguous() else scales.float().contiguous()
    qw, zc = qweight.contiguous(), zeros.contiguous()
    out = torch.empty((m, n), dtype=torch.float32)
    _ext.cpp().w4a8_gemm(xf.data_ptr(), m, k, qw.data_ptr(), sf.data_ptr(), zc.data_ptr(), n,
                         k if group_size == -1 else group_size, out.data_ptr(), torch.get_num_threads())
    return out if x.dtype == torch.float32 else out.to(x.dtype)


# ----------------------------------------------------------------------------- custom op
@torch.library.custom_op("pyllmops::w4a8_matmul", mutates_args=())
def _w4a8_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
             group_size: int) -> torch.Tensor:
    return _dispatch.call("w4a8_matmul", x.device, x, qweight, scales, zeros, group_size)


@_w4a8_op.register_fake
def _(x, qweight, scales, zeros, group_size):
    return x.new_empty((x.shape[0], qweight.shape[0]))


def w4a8_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                group_size: int) -> torch.Tensor:
    """y [M, N] = Q8_0(x [M, K]) @ W^T for an int4 weight in the internal layout (module docstring)."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES, ndim=2)
    if x.shape[1] % Q8_BLOCK:
        raise ValueError(f"x must have K (x.shape[1]) a multiple of {Q8_BLOCK} (the activation block), "
                         f"got K={x.shape[1]}")
    check_int4_weight(qweight, scales, zeros, group_size, None, in_features=x.shape[1])
    if qweight.device != x.device:
        raise ValueError(f"qweight is on {qweight.device} but must be on {x.device} (same device as x)")
    if _dispatch.eager(x, qweight, scales, zeros):  # same result without the custom-op layer's cost
        return _dispatch.call("w4a8_matmul", x.device, x, qweight, scales, zeros, group_size)
    return torch.ops.pyllmops.w4a8_matmul(x, qweight, scales, zeros, group_size)
