"""W8A8 GEMM: int8 activations x int8 weights, int32 accumulation, dequantization fused.

    w8a8_matmul(a [M, K] int8, b [K, N] int8, scale_a, scale_b, bias=None, out_dtype=float32)
        -> out [M, N] out_dtype,   out = float32(a @ b) * scale_a * scale_b + bias

scale_a: [1] (per-tensor) or [M, 1] (per-token); scale_b: [1] (per-tensor) or [1, N] (per-channel),
any combination, float (used as float32); bias: [N] float or None. These are exactly the scale
shapes `quantize_int8` returns for granularity "tensor"/"token" (activations) and "channel" (the
weight quantized as b [K, N]: one scale per output column). The epilogue runs in float32 (the
accumulator is converted once, then scaled and biased) and is cast to out_dtype at the end.

b, the weight, may come in two layouts:
  * a strided int8 [K, N] tensor, any strides. An nn.Linear-style weight w [N, K] is passed as
    the view `w.t()` (no copy); that "K-major" layout is what the CUDA kernel reads.
  * the packed form from `pack_w8a8_weight(b)`: on CPU, oneDNN's prepacked (AMX/VNNI-blocked)
    weight, an opaque torch._mkldnn tensor of shape [K, N]. Packing once instead of reordering the
    weight on every call is what makes the CPU path fast; on other devices packing returns the
    K-major strided tensor.

Backends: reference (exact int64 product, float64 epilogue), cpp (the CPU default,
pyllmops/ops/w8a8_cpp.py: oneDNN int8 linear for packed b, torch._int_mm otherwise — or, on a CPU
without int8 dot-product instructions, the float32 GEMM in K chunks where it is exact (int8_mm_cpu)
— each with a one-pass C++ epilogue where oneDNN cannot fuse it), torch (pure torch: the same GEMMs
with a torch epilogue; torch._int_mm on the CPU accepts any M, K, N, on CUDA only M > 16 with K, N
multiples of 8),
triton (kernels/triton/w8a8.py, any shape), cuda (csrc/cuda/w8a8.cu: K-major b, K % 16 == 0; mma.sync on
sm_80+. On sm_90 devices, for M >= SM90_MIN_M and N % 16 == 0, csrc/cuda/sm90/w8a8_sm90.cu:
CUTLASS 3.x TMA + wgmma with the same epilogue, built when the nvidia-cutlass headers are present;
`cuda_w8a8_kernel(a, b)` names the kernel a call gets and why).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Optional

import torch

from pyllmops.ops import _dispatch
from pyllmops.ops._validate import FLOAT_DTYPES, check_finite, check_tensor

OUT_DTYPES = FLOAT_DTYPES


def is_packed(b: torch.Tensor) -> bool:
    return b.layout == torch._mkldnn


@functools.cache
def onednn_int8_exact() -> bool:
    """Whether oneDNN's int8 GEMM is exact on this CPU. It is where the CPU has int8 dot-product
    instructions (AVX512-VNNI, AVX-VNNI, AMX). Without them (e.g. AVX2-only x86) oneDNN multiplies
    u8 x s8 pairs with vpmaddubsw, whose int16 pair sums saturate: large products come out wrong.
    Read from /proc/cpuinfo; anywhere it cannot be read the answer is False (torch._int_mm, exact
    everywhere, serves instead)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


@functools.cache
def onednn_packed_int8_fast() -> bool:
    """Whether oneDNN runs its int8 linear on a prepacked weight with a JIT kernel on this CPU.
    Having int8 dot products is not enough: torch 2.13's oneDNN (3.12) on an AMD EPYC Zen 4 VM
    (AVX512-VNNI, no AMX) refuses every shape in its brgemm blocking heuristic and runs its
    reference loop, ref_int8, at ~0.1 G multiply-adds/s: a 37 x 576 x 1536 product took 380 ms
    against torch._int_mm's 0.11 (ONEDNN_VERBOSE names the implementation). One timed probe per
    process (a 32 x 256 x 256 product, the best of three calls each way after a warm-up): the
    packed weight is kept unless its call is over 20x torch._int_mm's, a margin no timing noise
    crosses while that fallback costs 1000x. PYLLMOPS_W8A8_PACKED=1 / 0 replaces the probe (never
    the exactness check)."""
    if not (torch.backends.mkldnn.is_available() and onednn_int8_exact()):
        return False
    forced = os.environ.get("PYLLMOPS_W8A8_PACKED")
    if forced in ("0", "1"):
        return forced == "1"
    g = torch.Generator().manual_seed(0)  # the caller's random stream stays untouched
    a = torch.randint(-127, 128, (32, 256), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (256, 256), dtype=torch.int8, generator=g)
    packed = torch.ops.onednn.qlinear_prepack(b.t().contiguous(), None)
    ones, zero_points = torch.ones(256), torch.zeros(256, dtype=torch.int64)

    def onednn():
        torch.ops.onednn.qlinear_pointwise(a, 1.0, 0, packed, ones, zero_points, None, 1.0, 0, torch.float32,
                                           "none", [], "")

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    return best(onednn) < 20 * best(lambda: torch._int_mm(a, b))


# Every partial sum of at most this many int8 x int8 products is an integer of magnitude <= 2^24
# (|product| <= 128 * 128 = 2^14), which float32 holds exactly, in any summation order.
EXACT_F32_K = 1024


def int8_mm_cpu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32(a @ b) for int8 a [M, K], b [K, N] (any strides) on the CPU, exactly what
    float32(torch._int_mm(a, b)) gives, computed with the float32 GEMM (MKL / oneDNN sgemm).

    Why: on a CPU without int8 dot-product instructions (no AVX512-VNNI / AVX-VNNI / AMX, e.g.
    AVX2-only x86; onednn_int8_exact() is False) torch._int_mm runs a slow exact path, 25-30x
    slower than sgemm at M = 128-512 (docs/cpu-kernels.md). Exact because K is cut into chunks of
    EXACT_F32_K: each chunk's sums are integers float32 holds exactly, the chunks are added in
    float64 (exact for any K a tensor can have) and the total is rounded to float32 once."""
    k = a.shape[1]
    if k <= EXACT_F32_K:
        return torch.mm(a.float(), b.float())
    acc = None
    for k0 in range(0, k, EXACT_F32_K):
        part = torch.mm(a[:, k0:k0 + EXACT_F32_K].float(), b[k0:k0 + EXACT_F32_K].float())
        acc = part.double() if acc is None else acc.add_(part)
    return acc.float()


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The exact int8 GEMM of the torch and cpp backends for a strided b: int8_mm_cpu (float32) on a
    CPU without int8 dot-product instructions, torch._int_mm (int32) everywhere else."""
    if a.device.type == "cpu" and not onednn_int8_exact():
        return int8_mm_cpu(a, b)
    return torch._int_mm(a, b)


def _epilogue(acc: torch.Tensor, scale_a, scale_b, bias, out_dtype) -> torch.Tensor:
    """float32(acc) * scale_a * scale_b + bias, cast to out_dtype. acc [M, N] int32."""
    out = torch.mul(acc, scale_a.float())  # int32 * float32 -> float32, one pass
    out.mul_(scale_b.float())
    if bias is not None:
        out.add_(bias.float())
    return out.to(out_dtype)


# ----------------------------------------------------------------------------- reference
def reference_w8a8_matmul(a, b, scale_a, scale_b, bias=None, out_dtype=torch.float32):
    """Exact int64 product, float64 epilogue, one final rounding to out_dtype: the test oracle.
    b must be strided here."""
    acc = a.long() @ b.long()
    out = acc.double() * scale_a.double() * scale_b.double()
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


@_dispatch.register("w8a8_matmul", "reference", supports=lambda a, b, *rest: not is_packed(b))
def _reference(a, b, scale_a, scale_b, bias, out_dtype):
    return reference_w8a8_matmul(a, b, scale_a, scale_b, bias, out_dtype)


# ----------------------------------------------------------------------------- torch / oneDNN
def _onednn_packed(a, b, scale_a, scale_b, bias, out_dtype):
    """oneDNN's int8 linear on a prepacked weight. It takes only a per-tensor activation scale:
    per-token scales run it with scale 1 in float32 and apply scale_a and the bias after."""
    n = b.shape[1]
    w_scale = scale_b.float().reshape(-1).expand(n).contiguous()
    w_zp = torch.zeros(n, dtype=torch.int64)
    per_tensor = scale_a.numel() == 1
    x_scale = float(scale_a) if per_tensor else 1.0
    fused_bias = bias.float() if per_tensor and bias is not None else None
    out = torch.ops.onednn.qlinear_pointwise(
        a.contiguous(), x_scale, 0, b, w_scale, w_zp, fused_bias, 1.0, 0,
        out_dtype if per_tensor else torch.float32, "none", [], "")
    if per_tensor:
        return out
    out.mul_(scale_a.float())
    if bias is not None:
        out.add_(bias.float())
    return out.to(out_dtype)


def _torch_supports(a, b, *rest):
    # torch._int_mm's rules on CUDA: M > 16, K and N multiples of 8. The CPU build takes any shape.
    return a.device.type == "cpu" or (a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0)


@_dispatch.register("w8a8_matmul", "torch", supports=_torch_supports)
def _torch_w8a8(a, b, scale_a, scale_b, bias, out_dtype):
    if is_packed(b):
        return _onednn_packed(a, b, scale_a, scale_b, bias, out_dtype)
    return _epilogue(int8_mm(a, b), scale_a, scale_b, bias, out_dtype)


# ----------------------------------------------------------------------------- triton
@_dispatch.register("w8a8_matmul", "triton", supports=lambda a, b, *rest: not is_packed(b))
def _triton_w8a8(a, b, scale_a, scale_b, bias, out_dtype):
    from pyllmops.kernels.w8a8 import w8a8_matmul as kernel

    return kernel(a, b, scale_a.float(), scale_b.float(), None if bias is None else bias.float(), out_dtype)


# ----------------------------------------------------------------------------- cuda
_CUDA_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _cuda_supports(a, b, *rest):
    # The kernel reads 16-byte chunks along K from both operands: K-major b, aligned rows.
    k = a.shape[1]
    return (not is_packed(b) and b.stride(0) == 1 and a.stride(1) == 1 and k % 16 == 0
            and a.stride(0) % 16 == 0 and b.stride(1) % 16 == 0
            and a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0)


# The Hopper kernel (csrc/cuda/sm90/w8a8_sm90.cu, CUTLASS wgmma) tiles the output 128 x 128:
# decode-sized M stays on the mma.sync kernel's 16-row tiles.
SM90_MIN_M = 65


def sm90_decline_reason(m: int, n: int, capability: tuple[int, int], built: bool) -> str | None:
    """Why a call that the CUDA backend serves does not run on the Hopper wgmma kernel (None: it
    does). On top of _cuda_supports (K, strides multiples of 16, aligned pointers), the kernel's
    TMA store needs N % 16 == 0."""
    if not built:
        return "pyllmops._cuda was built without CUTLASS (pip install nvidia-cutlass, then rebuild)"
    if capability[0] != 9:
        return f"the device is sm_{capability[0]}{capability[1]}, the kernel is sm_90a only"
    if m < SM90_MIN_M:
        return f"M = {m} < {SM90_MIN_M}: decode sizes run on the mma.sync kernel's 16-row tiles"
    if n % 16:
        return f"N = {n} is not a multiple of 16 (the kernel's TMA store)"
    return None


def cuda_w8a8_kernel(a: torch.Tensor, b: torch.Tensor) -> tuple[str, str | None]:
    """(kernel, why not the Hopper one) for a call the cuda backend serves: ("sm90_wgmma", None) or
    ("mma_sync", reason)."""
    from pyllmops import _ext

    reason = sm90_decline_reason(a.shape[0], b.shape[1], torch.cuda.get_device_capability(a.device),
                                 bool(getattr(_ext.cuda(), "has_w8a8_sm90", False)))
    return ("mma_sync", reason) if reason else ("sm90_wgmma", None)


@_dispatch.register("w8a8_matmul", "cuda", devices=("cuda",), supports=_cuda_supports)
def _cuda_w8a8(a, b, scale_a, scale_b, bias, out_dtype):
    from pyllmops import _ext

    m, k = a.shape
    n = b.shape[1]
    sa = scale_a.float().contiguous()
    sb = scale_b.float().contiguous()
    bf = bias.float().contiguous() if bias is not None else None
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    kernel = _ext.cuda().w8a8_matmul
    if cuda_w8a8_kernel(a, b)[0] == "sm90_wgmma":
        # its row broadcasts (scale_b, bias) copy 16-byte vectors: realign a view that is not
        kernel = _ext.cuda().w8a8_matmul_sm90
        sb = sb if sb.data_ptr() % 16 == 0 else sb.clone()
        bf = bf if bf is None or bf.data_ptr() % 16 == 0 else bf.clone()
    kernel(a.data_ptr(), a.stride(0), b.data_ptr(), b.stride(1), m, n, k,
           sa.data_ptr(), sa.numel() != 1, sb.data_ptr(), sb.numel() != 1,
           bf.data_ptr() if bf is not None else 0, out.data_ptr(), _CUDA_DTYPES[out_dtype],
           torch.cuda.current_stream(a.device).cuda_stream)
    return out


# ----------------------------------------------------------------------------- front door
@torch.library.custom_op("pyllmops::w8a8_matmul", mutates_args=())
def _w8a8_matmul_op(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                    bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    check_finite("scale_a", scale_a)
    check_finite("scale_b", scale_b)
    return _dispatch.call("w8a8_matmul", a.device, a, b, scale_a, scale_b, bias, out_dtype)


@_w8a8_matmul_op.register_fake
def _(a, b, scale_a, scale_b, bias, out_dtype):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


def w8a8_matmul(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                bias: Optional[torch.Tensor] = None, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """out [M, N] = float32(a @ b) * scale_a * scale_b + bias, cast to out_dtype.

    a: [M, K] int8. b: [K, N] int8 (strided, any strides, or `pack_w8a8_weight(b)`).
    scale_a: [1] or [M, 1] float. scale_b: [1] or [1, N] float. bias: [N] float or None.
    out_dtype: float32, float16 or bfloat16. Scales must be finite.
    """
    check_tensor("a", a, dtypes=(torch.int8,), ndim=2)
    check_tensor("b", b, dtypes=(torch.int8,), ndim=2, device=a.device)
    m, k = a.shape
    if b.shape[0] != k:
        raise ValueError(f"b must be [K, N] with K = a.shape[1] = {k}, got b of shape {tuple(b.shape)} "
                         f"(an nn.Linear weight [N, K] is passed as weight.t())")
    n = b.shape[1]
    check_tensor("scale_a", scale_a, dtypes=FLOAT_DTYPES, device=a.device)
    if tuple(scale_a.shape) not in {(1,), (m, 1)}:
        raise ValueError(f"scale_a must have shape (1,) (per-tensor) or ({m}, 1) (per-token), got {tuple(scale_a.shape)}")
    check_tensor("scale_b", scale_b, dtypes=FLOAT_DTYPES, device=a.device)
    if tuple(scale_b.shape) not in {(1,), (1, n)}:
        raise ValueError(f"scale_b must have shape (1,) (per-tensor) or (1, {n}) (per-channel), got {tuple(scale_b.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOAT_DTYPES, device=a.device)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of float32, float16, bfloat16, got {out_dtype}")
    return torch.ops.pyllmops.w8a8_matmul(a, b, scale_a, scale_b, bias, out_dtype)


def pack_w8a8_weight(b: torch.Tensor) -> torch.Tensor:
    """The fastest layout of the weight b [K, N] int8 for w8a8_matmul on b's device.

    CPU with oneDNN, int8 dot-product instructions (onednn_int8_exact()) and oneDNN's JIT kernels
    for them (onednn_packed_int8_fast()): the prepacked oneDNN tensor (torch._mkldnn layout, shape
    [K, N]); it is not a state_dict format — keep the strided weight for saving and pack after
    loading. Elsewhere: b as a K-major view (b.stride(0) == 1), the layout the CUDA kernel reads
    and torch._int_mm takes.
    """
    check_tensor("b", b, dtypes=(torch.int8,), ndim=2)
    if b.device.type == "cpu" and onednn_packed_int8_fast():
        return torch.ops.onednn.qlinear_prepack(b.t().contiguous(), None)
    return b.t().contiguous().t()
