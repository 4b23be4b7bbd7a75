"""Weight-only quantized matmuls: activations stay in floating point, the weight is int4 or int8.

    w4a16_matmul(x [M, K] fp32/fp16/bf16, qweight [N, K/2] uint8, scales [N, G] float,
                 zeros [N, G] uint8, group_size, g_idx [K] int32 | None) -> [M, N] x.dtype
    w8a16_matmul(x [M, K], qweight [N, K] int8, scales [N] float) -> [M, N] x.dtype

Semantics: y = x @ W^T with W[n, k] = (q[n, k] - zeros[n, g(k)]) * scales[n, g(k)], g(k) =
g_idx[k] or k // group_size (group_size -1: one group); G = ceil(K / group_size), so the last
group may be ragged (K = 576, group 128: G = 5). The int4 layout is documented in
pyllmops/quant/packing.py. W8A16: W[n, k] = q[n, k] * scales[n].

Backends:
  reference  dequantize in float64, matmul, cast (the oracle).
  torch      dequantize to float32, F.linear in float32, cast; any shape, any device.
  cpp        csrc/cpu/weight_only.cpp, AVX-512 (AVX2 + FMA kernels on CPUs without it). Decode-sized M (int4: M <= 32, int8: M <= 16): the
             kernels read the packed bytes directly (int4: 1/8 of an fp32 weight's traffic); int4
             needs K % 32 == 0, group_size % 32 == 0 and no g_idx (nn.WeightOnlyLinear turns
             act-order into a column permutation, so the fast paths never see one), else the torch
             fallback serves. With AVX-512 VNNI and group_size a multiple of 128 or -1, the int4
             kernel splits x into 3 int8 digits per call and runs the int4 x int8 products on
             vpdpbusd, exactly (x rounded to 2^-24 of its 128-block's max, like an fp32 rounding):
             2.2x the speed of its FMA kernel at M = 1; AVX2 CPUs run the same digits on
             vpmaddubsw at M = 1 (`_ext.cpp().w4a16_kernel(K, group_size, M)` names the kernel a
             call gets). Larger M (prefill), any K and group size: blocks of 4 MB
             of the weight made float32 (int4: a C++ loop, the torch fallback's values) and
             F.linear on each (_blocked_linear), without the fallback's 64 MB buffer per call;
             bfloat16 x on a CPU with bf16 GEMMs (_bf16_prefill): the blocks rounded to bfloat16
             and the GEMM in bf16 (float32 sums), as GPU W4A16 kernels compute, ~2x float32.
  triton     int4: kernels/triton/w4a16.py, tensor cores (mma.sync on sm_80, wgmma on sm_90a) with the
             weight dequantized in registers as the MMA's A operand, every weight byte read once,
             a fixed tile / split-K / pipeline-depth table per M bucket; any M, K, group, g_idx.
             int8: kernels/triton/weight_only.py, split-K for small M.
  cuda       csrc/cuda/w4a16.cu: a CUDA-core GEMV (one warp per output row, an FMA per weight and
             row of x), int4 -> half with magic-number bit tricks.
Dispatch on CUDA (int4): the GEMV serves M <= CUDA_GEMV_MAX_M (= 4), where its FMAs still hide
behind the weight stream (M FMAs per 4-bit weight); from M = 5 on, and for every call the GEMV
cannot take (fp32 x, g_idx, K or group not a multiple of 32), the Triton tensor-core kernel. At
M = 16, K = N = 8192 the GEMV would do 2.1 GFLOP on CUDA cores (~35 us on an H100) to read 32 MB
(~11 us): the tensor-core kernel's products cost ~nothing beside that read. The bound is a
datasheet estimate, not a measurement (no GPU has run these kernels yet): bench/gpu_check.sh's
w4a16 rows at M = 1..16 decide it on the first GPU session.
torch.ops.aten._weight_int4pack_mm_for_cpu was measured and not used: it needs its own prepacked
weight (a per-call conversion), and on this CPU at M=1, K=N=4096 it is slower than float32
F.linear (32 ms vs 20 ms for bf16 x); its zero point convention is a float offset,
W = (q - 8) * s + zero_f, i.e. zero_f = (8 - zero) * s in ours (checked in tests).

Both ops are differentiable with respect to x (the weight is frozen): grad_x = grad_y @ W.
"""
from __future__ import annotations

import functools
import threading
from typing import Optional

import torch

from pyllmops.ops import _dispatch
from pyllmops.ops._validate import FLOAT_DTYPES, check_int, check_tensor

INDEX_DTYPES = (torch.int32, torch.int64)
DECODE_MAX_M = 16
# Up to here the C++ int4 kernel beats the prefill path (dequantize blocks + F.linear), measured
# at 4096 x 4096 on 2 cores: M = 32: 5.9 ms (float32 F.linear alone takes 6.3); M = 64: 12.3 ms
# against 10.4 for the prefill path.
CPU_DECODE_MAX_M = 32
# On CUDA, int4 calls up to this M go to the CUDA-core GEMV, larger ones to the Triton tensor-core
# kernel (module docstring: the rule and why).
CUDA_GEMV_MAX_M = 4


# ----------------------------------------------------------------------------- validation
def check_int4_weight(qweight, scales, zeros, group_size, g_idx=None, in_features=None) -> int:
    """Shape/dtype checks of an int4 weight; returns G. Raises naming the argument."""
    check_tensor("qweight", qweight, dtypes=(torch.uint8,), ndim=2)
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if in_features is not None and in_features != k:
        raise ValueError(f"qweight must have shape [N, K/2] = [{n}, {in_features // 2}] for x with K={in_features}, "
                         f"got {tuple(qweight.shape)}")
    check_int("group_size", group_size)
    if group_size != -1 and not 1 <= group_size <= k:
        raise ValueError(f"group_size must be -1 (per-channel) or in [1, K={k}], got {group_size}")
    groups = 1 if group_size == -1 else -(-k // group_size)
    check_tensor("scales", scales, dtypes=FLOAT_DTYPES, ndim=2, device=qweight.device)
    check_tensor("zeros", zeros, dtypes=(torch.uint8,), ndim=2, device=qweight.device)
    if tuple(scales.shape) != (n, groups):
        raise ValueError(f"scales must have shape [N, G] = [{n}, {groups}] (G = ceil(K={k} / group_size={group_size})), "
                         f"got {tuple(scales.shape)}")
    if tuple(zeros.shape) != (n, groups):
        raise ValueError(f"zeros must have shape [N, G] = [{n}, {groups}] like scales, got {tuple(zeros.shape)}")
    if g_idx is not None:
        check_tensor("g_idx", g_idx, dtypes=INDEX_DTYPES, ndim=1, device=qweight.device)
        if g_idx.shape[0] != k:
            raise ValueError(f"g_idx must have shape [K] = [{k}], got {tuple(g_idx.shape)}")
    return groups


def _check_g_idx_values(g_idx: Optional[torch.Tensor], groups: int) -> None:
    # value check (needs real data): run inside the op
    if g_idx is not None and bool(((g_idx < 0) | (g_idx >= groups)).any()):
        raise ValueError(f"g_idx values must lie in [0, G={groups}), got range "
                         f"[{int(g_idx.min())}, {int(g_idx.max())}]")


def _group_of(k: int, group_size: int, g_idx, device) -> torch.Tensor:
    if g_idx is not None:
        return g_idx.long()
    return torch.arange(k, device=device) // (k if group_size == -1 else group_size)


def dequantize_int4(qweight, scales, zeros, group_size, g_idx=None, dtype=torch.float32) -> torch.Tensor:
    """W [N, K] from the packed int4 layout, computed in `dtype` (use float32 or float64)."""
    q = torch.stack((qweight & 0xF, qweight >> 4), dim=-1).flatten(-2).to(dtype)
    n, k = q.shape
    gs = k if group_size == -1 else group_size
    if g_idx is None and k % gs == 0:
        # whole groups: broadcast each (row, group)'s zero and scale instead of gathering them per
        # weight (the same values; half the time of the gather at 4096 x 4096)
        w = (q.view(n, k // gs, gs) - zeros.to(dtype)[:, :, None]) * scales.to(dtype)[:, :, None]
        return w.view(n, k)
    g = _group_of(k, group_size, g_idx, q.device)
    return (q - zeros.to(dtype)[:, g]) * scales.to(dtype)[:, g]


# ----------------------------------------------------------------------------- w4a16 backends
@_dispatch.register("w4a16_matmul", "reference")
def _reference_w4(x, qweight, scales, zeros, group_size, g_idx):
    w = dequantize_int4(qweight, scales, zeros, group_size, g_idx, torch.float64)
    return (x.double() @ w.t()).to(x.dtype)


@_dispatch.register("w4a16_matmul", "torch")
def _torch_w4(x, qweight, scales, zeros, group_size, g_idx):
    w = dequantize_int4(qweight, scales, zeros, group_size, g_idx, torch.float32)
    return torch.nn.functional.linear(x.float(), w).to(x.dtype)


def _cpp_w4_supported(x, qweight, scales, zeros, group_size, g_idx):
    from pyllmops import _ext

    k = x.shape[1]
    gs = k if group_size == -1 else group_size
    if g_idx is not None:
        return False
    if x.shape[0] > CPU_DECODE_MAX_M:
        return True  # dequantize with the C++ loop, then a float32 GEMM
    return k % 32 == 0 and gs % 32 == 0 and _ext.cpp().weight_only_simd()


@_dispatch.register("w4a16_matmul", "cpp", devices=("cpu",), supports=_cpp_w4_supported)
def _cpp_w4(x, qweight, scales, zeros, group_size, g_idx):
    m, k = x.shape
    n = qweight.shape[0]
    qw, sf, zc = qweight.contiguous(), _f32_contiguous(scales), zeros.contiguous()
    gs = k if group_size == -1 else group_size
    if m > CPU_DECODE_MAX_M:
        if _bf16_prefill(x):
            return _cpp_w4_prefill(x.contiguous(), qw, sf, zc, gs)
        return _cpp_w4_prefill(_f32_contiguous(x), qw, sf, zc, gs).to(x.dtype)
    # bfloat16 x is exact in float32, so the bf16 kernel gives the same products, faster from 2 rows
    out = cpp_w4_decode(_f32_contiguous(x), qw, sf, zc, gs, torch.empty((m, n), dtype=torch.float32),
                        x.dtype == torch.bfloat16)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def cpp_w4_decode(x, qweight, scales, zeros, group_size, out, bf16_x: bool = False):
    """The C++ int4 kernel on prepared operands (nn.WeightOnlyLinear's decode path calls it too):
    x [M, K] float32 contiguous, M <= CPU_DECODE_MAX_M; qweight, zeros contiguous; scales float32
    contiguous; group_size resolved (K for per-channel); out [M, N] float32, returned. bf16_x:
    x rounded to bfloat16 first, the weight exact (w4a16_gemm_bf16: compute_dtype=bfloat16)."""
    from pyllmops import _ext

    cpp = _ext.cpp()
    gemm = cpp.w4a16_gemm_bf16 if bf16_x else cpp.w4a16_gemm
    gemm(x.data_ptr(), x.shape[0], x.shape[1], qweight.data_ptr(), scales.data_ptr(), zeros.data_ptr(),
         qweight.shape[0], group_size, out.data_ptr(), torch.get_num_threads())
    return out


# Weights per dequantized block of the prefill path: 4 MB of float32, reused across blocks (a fresh
# 64 MB buffer per call costs ~25 ms of page faults at 4096 x 4096) and still in cache for its GEMM.
PREFILL_BLOCK = 1 << 20


def _bf16_prefill(x: torch.Tensor) -> bool:
    """Whether a prefill-sized call computes in bfloat16: x is bfloat16 and the CPU multiplies
    bfloat16 in hardware (AVX512_BF16 / AMX; torch's bf16 GEMM is 2.2x its fp32 one on Zen 4).
    What W4A16 / W8A16 mean on GPUs (Marlin, vLLM; bitsandbytes' compute_dtype): the weight
    dequantized to the activations' 16-bit type, products accumulated in float32, the output
    rounded to it. float32 x keeps the exact float32 path; float16 x too (no CPU GEMM in float16)."""
    return x.dtype == torch.bfloat16 and cpu_bf16_native()


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX), where the bf16 paths
    of compute_dtype are the faster ones (the CLI's --compute-dtype auto)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _cpp_w4_prefill(x, qweight, scales, zeros, group_size):
    """x [M, K] fp32 (or bf16, _bf16_prefill) @ W^T for M past decode sizes, where the GEMM is
    compute-bound: blocks of output rows dequantized by the C++ loop (the torch fallback's float32
    values; rounded to bf16 for bf16 x), F.linear each."""
    from pyllmops import _ext

    def fill(n0, n1, w):
        _ext.cpp().w4_dequantize(qweight[n0:n1].data_ptr(), scales[n0:n1].data_ptr(), zeros[n0:n1].data_ptr(),
                                 n1 - n0, x.shape[1], group_size, w.data_ptr(), torch.get_num_threads())

    return _blocked_linear(x, qweight.shape[0], fill)


_buffers = threading.local()


def _prefill_buffer(dtype: torch.dtype, numel: int) -> torch.Tensor:
    """A flat buffer of at least `numel` elements, kept per thread and dtype and reused by every
    prefill call (a fresh 4 MB block per call was a page-faulted allocation each time)."""
    held = getattr(_buffers, "by_dtype", None)
    if held is None:
        held = _buffers.by_dtype = {}
    buf = held.get(dtype)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: written in place outside inference mode too
            buf = held[dtype] = torch.empty(max(numel, PREFILL_BLOCK), dtype=dtype)
    return buf[:numel]


def _blocked_linear(x, n, fill):
    """x [M, K] fp32 or bf16 @ W^T with W [N, K] made PREFILL_BLOCK weights at a time by
    fill(n0, n1, block [n1 - n0, K] float32) into one reused buffer (then rounded to bf16 for
    bf16 x); out [M, N] in x's dtype."""
    k = x.shape[1]
    rows = max(1, min(n, PREFILL_BLOCK // k))
    block = _prefill_buffer(torch.float32, rows * k).view(rows, k)
    half = _prefill_buffer(x.dtype, rows * k).view(rows, k) if x.dtype != torch.float32 else None
    if rows == n:  # one block (every SmolLM2 projection): F.linear's own output, no copy into out
        fill(0, n, block)
        return torch.nn.functional.linear(x, block if half is None else half.copy_(block))
    out = torch.empty((x.shape[0], n), dtype=x.dtype)
    for n0 in range(0, n, rows):
        n1 = min(n, n0 + rows)
        w = block[: n1 - n0]
        fill(n0, n1, w)
        if half is not None:
            w = half[: n1 - n0].copy_(w)
        out[:, n0:n1] = torch.nn.functional.linear(x, w)
    return out


def _f32_contiguous(t: torch.Tensor) -> torch.Tensor:
    # skips two dispatcher calls in the common case: ~10 us of a 170 us decode GEMM once the
    # weight stream has pushed the interpreter out of L2
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


@_dispatch.register("w4a16_matmul", "triton")
def _triton_w4(x, qweight, scales, zeros, group_size, g_idx):
    from pyllmops.kernels.w4a16 import w4a16_matmul as kernel

    return kernel(x, qweight, scales, zeros, x.shape[1] if group_size == -1 else group_size, g_idx)


def _cuda_w4_supported(x, qweight, scales, zeros, group_size, g_idx):
    # The GEMV runs any M <= DECODE_MAX_M when forced (benchmarks compare it with the tensor-core
    # kernel there); by default it takes only M <= CUDA_GEMV_MAX_M.
    k = x.shape[1]
    gs = k if group_size == -1 else group_size
    max_m = DECODE_MAX_M if _dispatch.forced_backends() is not None else CUDA_GEMV_MAX_M
    return (g_idx is None and x.shape[0] <= max_m and x.dtype in (torch.float16, torch.bfloat16)
            and k % 32 == 0 and gs % 32 == 0)


@_dispatch.register("w4a16_matmul", "cuda", devices=("cuda",), supports=_cuda_w4_supported)
def _cuda_w4(x, qweight, scales, zeros, group_size, g_idx):
    from pyllmops import _ext

    m, k = x.shape
    n = qweight.shape[0]
    xc, qw = _aligned16(x), _aligned16(qweight)
    sc, zc = scales.to(x.dtype).contiguous(), zeros.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    _ext.cuda().w4a16_gemm(xc.data_ptr(), _CUDA_DTYPES[x.dtype], m, k, qw.data_ptr(), sc.data_ptr(), zc.data_ptr(),
                           n, k if group_size == -1 else group_size, out.data_ptr(),
                           torch.cuda.current_stream(x.device).cuda_stream)
    return out


_CUDA_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _aligned16(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned (the CUDA kernels use 128-bit loads); copies a view that is not."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()


# ----------------------------------------------------------------------------- w8a16 backends
@_dispatch.register("w8a16_matmul", "reference")
def _reference_w8(x, qweight, scales):
    return (x.double() @ (qweight.double() * scales.double()[:, None]).t()).to(x.dtype)


@_dispatch.register("w8a16_matmul", "torch")
def _torch_w8(x, qweight, scales):
    # the per-channel scale commutes with the matmul: scale the [M, N] output, not the weight
    return (torch.nn.functional.linear(x.float(), qweight.float()) * scales.float()).to(x.dtype)


def _cpp_w8_supported(x, qweight, scales):
    from pyllmops import _ext

    if x.shape[0] > DECODE_MAX_M:
        return True  # blocks of the weight converted to float32, F.linear each
    return x.shape[1] % 16 == 0 and _ext.cpp().weight_only_simd()


@_dispatch.register("w8a16_matmul", "cpp", devices=("cpu",), supports=_cpp_w8_supported)
def _cpp_w8(x, qweight, scales):
    m, k = x.shape
    n = qweight.shape[0]
    qw, sf = qweight.contiguous(), _f32_contiguous(scales)
    if m > DECODE_MAX_M:
        if _bf16_prefill(x):  # the scales into the weight: one rounding to bf16 of q * s
            return _blocked_linear(x.contiguous(), n, lambda n0, n1, w: torch.mul(qw[n0:n1], sf[n0:n1, None], out=w))
        # as the torch fallback (scale the output), without its 4-bytes-per-weight buffer per call
        out = _blocked_linear(_f32_contiguous(x), n, lambda n0, n1, w: w.copy_(qw[n0:n1])).mul_(sf)
    else:
        out = cpp_w8_decode(_f32_contiguous(x), qw, sf, torch.empty((m, n), dtype=torch.float32),
                            x.dtype == torch.bfloat16)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def cpp_w8_decode(x, qweight, scales, out, bf16_x: bool = False):
    """The C++ int8 kernel on prepared operands: x [M, K] float32 contiguous (M <= DECODE_MAX_M),
    qweight contiguous, scales float32 contiguous, out [M, N] float32, returned. bf16_x: x rounded
    to bfloat16 first (w8a16_gemm_bf16)."""
    from pyllmops import _ext

    cpp = _ext.cpp()
    gemm = cpp.w8a16_gemm_bf16 if bf16_x else cpp.w8a16_gemm
    gemm(x.data_ptr(), x.shape[0], x.shape[1], qweight.data_ptr(), scales.data_ptr(), qweight.shape[0],
         out.data_ptr(), torch.get_num_threads())
    return out


@_dispatch.register("w8a16_matmul", "triton")
def _triton_w8(x, qweight, scales):
    from pyllmops.kernels.weight_only import w8a16_matmul as kernel

    return kernel(x, qweight, scales)


def _cuda_w8_supported(x, qweight, scales):
    return x.shape[0] <= DECODE_MAX_M and x.dtype in (torch.float16, torch.bfloat16) and x.shape[1] % 16 == 0


@_dispatch.register("w8a16_matmul", "cuda", devices=("cuda",), supports=_cuda_w8_supported)
def _cuda_w8(x, qweight, scales):
    from pyllmops import _ext

    m, k = x.shape
    n = qweight.shape[0]
    xc, qw, sc = _aligned16(x), _aligned16(qweight), scales.to(x.dtype).contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    _ext.cuda().w8a16_gemm(xc.data_ptr(), _CUDA_DTYPES[x.dtype], m, k, qw.data_ptr(), sc.data_ptr(), n,
                           out.data_ptr(), torch.cuda.current_stream(x.device).cuda_stream)
    return out


# ----------------------------------------------------------------------------- custom ops
def _w4a16(x, qweight, scales, zeros, group_size, g_idx):
    _check_g_idx_values(g_idx, scales.shape[1])
    return _dispatch.call("w4a16_matmul", x.device, x, qweight, scales, zeros, group_size, g_idx)


@torch.library.custom_op("pyllmops::w4a16_matmul", mutates_args=())
def _w4a16_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
              g_idx: Optional[torch.Tensor]) -> torch.Tensor:
    return _w4a16(x, qweight, scales, zeros, group_size, g_idx)


@_w4a16_op.register_fake
def _(x, qweight, scales, zeros, group_size, g_idx):
    return x.new_empty((x.shape[0], qweight.shape[0]))


def _w4_setup(ctx, inputs, output):
    _, qweight, scales, zeros, group_size, g_idx = inputs
    ctx.save_for_backward(qweight, scales, zeros, g_idx)
    ctx.group_size = group_size


def _w4_backward(ctx, grad):
    qweight, scales, zeros, g_idx = ctx.saved_tensors
    w = dequantize_int4(qweight, scales, zeros, ctx.group_size, g_idx, torch.float32)
    return (grad.float() @ w).to(grad.dtype), None, None, None, None, None


_w4a16_op.register_autograd(_w4_backward, setup_context=_w4_setup)


@torch.library.custom_op("pyllmops::w8a16_matmul", mutates_args=())
def _w8a16_op(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return _dispatch.call("w8a16_matmul", x.device, x, qweight, scales)


@_w8a16_op.register_fake
def _(x, qweight, scales):
    return x.new_empty((x.shape[0], qweight.shape[0]))


def _w8_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _w8_backward(ctx, grad):
    qweight, scales = ctx.saved_tensors
    return ((grad.float() * scales.float()) @ qweight.float()).to(grad.dtype), None, None


_w8a16_op.register_autograd(_w8_backward, setup_context=_w8_setup)


# ----------------------------------------------------------------------------- front doors
def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, g_idx: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T for an int4 weight in the internal layout (module docstring)."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES, ndim=2)
    check_int4_weight(qweight, scales, zeros, group_size, g_idx, in_features=x.shape[1])
    if qweight.device != x.device:
        raise ValueError(f"qweight is on {qweight.device} but must be on {x.device} (same device as x)")
    if _dispatch.eager(x, qweight, scales, zeros, g_idx):  # same result without the custom-op layer's cost
        return _w4a16(x, qweight, scales, zeros, group_size, g_idx)
    return torch.ops.pyllmops.w4a16_matmul(x, qweight, scales, zeros, group_size, g_idx)


def w8a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """y [M, N] = x [M, K] @ (qweight [N, K] int8 * scales [N, 1])^T."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES, ndim=2)
    check_tensor("qweight", qweight, dtypes=(torch.int8,), ndim=2, device=x.device)
    check_tensor("scales", scales, dtypes=FLOAT_DTYPES, ndim=1, device=x.device)
    n, k = qweight.shape
    if k != x.shape[1]:
        raise ValueError(f"qweight must have shape [N, K] with K={x.shape[1]} (x.shape[1]), got {tuple(qweight.shape)}")
    if tuple(scales.shape) != (n,):
        raise ValueError(f"scales must have shape [N] = [{n}] (one per output channel), got {tuple(scales.shape)}")
    if _dispatch.eager(x, qweight, scales):
        return _dispatch.call("w8a16_matmul", x.device, x, qweight, scales)
    return torch.ops.pyllmops.w8a16_matmul(x, qweight, scales)
