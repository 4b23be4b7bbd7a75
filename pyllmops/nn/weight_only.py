"""WeightOnlyLinear: a drop-in for nn.Linear whose weight is stored int4 (W4A16) or int8 (W8A16).

    WeightOnlyLinear(Int4Weight | Int8Weight, bias=None, input_scale=None)
    WeightOnlyLinear.from_linear(linear, bits=4, group_size=128, symmetric=False)   (RTN)
    forward(x [..., K] fp32/fp16/bf16) -> [..., N] x.dtype

The quantized weight is a frozen buffer; forward is differentiable with respect to x (the op's
backward multiplies by the dequantized weight), so adapters such as LoRA can be trained on top.

Act-order (GPTQ desc_act, a g_idx that is not k // group_size) is turned into a column permutation
at construction: the input channels are reordered so that each group is contiguous again, the
packed weight is stored in that order, and forward gathers x[..., perm] (K values per token, far
cheaper than gathering scales per weight). The fast kernels therefore never see a g_idx.

input_scale [K] (optional): forward computes layer(x / input_scale). AWQ uses it when a model
gives no op to fold its scales into.

compute_dtype (None or torch.bfloat16; set_compute_dtype for a whole model): the dtype x is
rounded to before it meets the weight. None keeps x's dtype: float32 x gets float32 products of
the exact dequantized weight. bfloat16 is what W4A16 kernels do on GPUs (Marlin, vLLM) and
bitsandbytes' bf16 compute_dtype: x rounded to bfloat16, products summed in float32. Calls of up
to 32 (int4) / 16 (int8) rows (decode, batched decode) keep the weight exact: on CPUs with
AVX512_BF16 they run on vdpbf16ps, ~1.6x the exact kernel's rate at 8 rows (docs/decode.md), else
the exact kernel on the rounded x. Larger calls (prefill) round the dequantized weight to
bfloat16 too and run torch's bf16 GEMM, ~2x its float32 one with AVX512_BF16 or AMX; their output
is rounded to bfloat16, then cast back to x's dtype. One row is rounded as eight are, so a
sequence decodes to the same values batched or alone (up to the float32 summation order).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from pyllmops import _ext
from pyllmops.ops import weight_only as ops
from pyllmops.ops import _dispatch
from pyllmops.ops._dispatch import forced_backends
from pyllmops.ops._validate import FLOAT_DTYPES
from pyllmops.ops.weight_only import w4a16_matmul, w8a16_matmul
from pyllmops.quant.packing import Int4Weight, Int8Weight, default_g_idx, pack_int4, unpack_int4
from pyllmops.quant.rtn import rtn_int4, rtn_int8


COMPUTE_DTYPES = (None, torch.bfloat16)


def set_compute_dtype(model: nn.Module, dtype: Optional[torch.dtype]) -> int:
    """Sets compute_dtype (see the module docstring) on every WeightOnlyLinear of `model`; returns
    how many. ValueError for a dtype other than None or torch.bfloat16, or a model without one."""
    layers = [m for m in model.modules() if isinstance(m, WeightOnlyLinear)]
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
    if not layers:
        raise ValueError("model has no WeightOnlyLinear layer (quantize it with a weight-only method first)")
    for m in layers:
        m.compute_dtype = dtype
    return len(layers)


def _contiguous_groups(w: Int4Weight) -> tuple[Int4Weight, Optional[torch.Tensor]]:
    """Reorder act-order input channels so groups are contiguous; returns (weight, perm or None)."""
    if w.g_idx is None:
        return w, None
    perm = torch.argsort(w.g_idx.long(), stable=True)
    k = w.shape[1]
    if not torch.equal(w.g_idx[perm], default_g_idx(k, w.group_size, w.g_idx.device)):
        # groups of unequal sizes: keep g_idx (served by the torch / Triton backends)
        return w, None
    return Int4Weight(pack_int4(w.values()[:, perm]), w.scales, w.zeros, w.group_size, w.bits), perm


class WeightOnlyLinear(nn.Module):
    def __init__(self, weight: Union[Int4Weight, Int8Weight], bias: Optional[torch.Tensor] = None,
                 input_scale: Optional[torch.Tensor] = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.int4 = isinstance(weight, Int4Weight)
        perm = None
        if self.int4:
            weight.validate()
            weight, perm = _contiguous_groups(weight)
            self.group_size, self.bits = weight.group_size, weight.bits
            self.register_buffer("zeros", weight.zeros)
            self.register_buffer("g_idx", weight.g_idx)
        elif isinstance(weight, Int8Weight):
            self.group_size, self.bits = -1, 8
        else:
            raise TypeError(f"weight must be Int4Weight or Int8Weight, got {type(weight).__name__}")
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("perm", perm)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("input_scale", None if input_scale is None else input_scale.detach().clone())
        self.compute_dtype: Optional[torch.dtype] = None

    def __setstate__(self, state: dict) -> None:
        if "_prefill_dtype" in state:  # pickled under the attribute's first name (prefill only)
            state["_compute_dtype"] = state.pop("_prefill_dtype")
        super().__setstate__(state)

    @property
    def compute_dtype(self) -> Optional[torch.dtype]:
        return self.__dict__.get("_compute_dtype")  # absent in a layer pickled before it existed

    @compute_dtype.setter
    def compute_dtype(self, dtype: Optional[torch.dtype]) -> None:
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
        self.__dict__["_compute_dtype"] = dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 4, group_size: int = 128, symmetric: bool = False) -> "WeightOnlyLinear":
        """RTN-quantize an nn.Linear (bits 2-4: int4 layout, group-wise; bits 8: per-channel int8)."""
        w = linear.weight.detach()
        q = rtn_int8(w) if bits == 8 else rtn_int4(w, group_size, bits, symmetric)
        return cls(q, linear.bias)

    def quantized_weight(self) -> Union[Int4Weight, Int8Weight]:
        """The weight in input-channel order (act-order as a g_idx again), as constructed; the
        input_scale, if any, is not in it."""
        if not self.int4:
            return Int8Weight(self.qweight, self.scales)
        if self.perm is None:
            return Int4Weight(self.qweight, self.scales, self.zeros, self.group_size, self.bits, self.g_idx)
        inverse = torch.argsort(self.perm)
        g_idx = default_g_idx(self.in_features, self.group_size, self.perm.device)[inverse]
        return Int4Weight(pack_int4(unpack_int4(self.qweight)[:, inverse]), self.scales, self.zeros, self.group_size,
                          self.bits, g_idx)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W [N, K] as forward applies it to x (input order, input_scale folded in)."""
        if self.int4:
            w = Int4Weight(self.qweight, self.scales, self.zeros, self.group_size, self.bits, self.g_idx).dequantize(dtype)
            if self.perm is not None:
                w = w[:, torch.argsort(self.perm)]
        else:
            w = Int8Weight(self.qweight, self.scales).dequantize(dtype)
        return w if self.input_scale is None else w / self.input_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buffers = self._buffers  # nn.Module.__getattr__ costs ~0.5 us per buffer read
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if buffers["input_scale"] is not None:
            x2 = x2 / buffers["input_scale"].to(x.dtype)
        if buffers["perm"] is not None:
            x2 = x2[:, buffers["perm"]]
        y = self._decode(x2)
        if y is None:
            pd = self.__dict__.get("_compute_dtype")
            if pd is None or x2.dtype == pd:
                y = self._matmul(x2)
            elif x2.shape[0] > self._decode_rows():  # prefill: the bf16 GEMM
                y = self._matmul(x2.to(pd)).to(x2.dtype)
            else:  # a decode-sized call the kernels did not take (autograd, a graph): the same values
                y = self._matmul(x2.to(pd).to(x2.dtype))
        if buffers["bias"] is not None:
            y = y + buffers["bias"].to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """Every call the decode path does not take: the cpp backend directly when it serves the
        call in plain eager mode (the op front door's checks of the constant operands, validated
        at construction, and its dispatch cost ~20 us), else the op front door."""
        if self._eager_cpp(x2):
            return (ops._cpp_w4(x2, self.qweight, self.scales, self.zeros, self.group_size, None) if self.int4
                    else ops._cpp_w8(x2, self.qweight, self.scales))
        if self.int4:
            return w4a16_matmul(x2, self.qweight, self.scales, self.zeros, self.group_size, self.g_idx)
        return w8a16_matmul(x2, self.qweight, self.scales)

    def _decode(self, x2: torch.Tensor) -> Optional[torch.Tensor]:
        """The decode step's path: a float32 CPU x2 [M, K] with M within the C++ kernel's decode
        range, plain eager (_dispatch.eager) and no forced backend, straight into the kernel. Its
        conditions on the buffers (on the CPU, contiguous, float32 scales, a shape the kernel
        serves) are checked once per set of buffer objects, not per call (per-call checks are a
        visible share of a decode step's small GEMMs). None when it does not apply."""
        if torch.compiler.is_compiling():
            return None  # the op (and its fake) is what a graph should hold
        buffers = self._buffers
        weights = (buffers["qweight"], buffers["scales"], buffers.get("zeros"))
        seen = self.__dict__.get("_decode_for")
        if seen is None or any(a is not b for a, b in zip(seen, weights)):
            self.__dict__["_decode_for"], self.__dict__["_decode_ok"] = weights, self._decode_supported()
        if not (self.__dict__["_decode_ok"] and type(x2) is torch.Tensor and x2.dtype == torch.float32
                and x2.is_cpu and x2.shape[0] <= self._decode_rows()
                and x2.shape[1] == self.in_features and _dispatch.eager(x2) and forced_backends() is None):
            return None
        x2 = x2.contiguous()
        out = torch.empty((x2.shape[0], self.out_features), dtype=torch.float32)
        bf16 = self.__dict__.get("_compute_dtype") is not None
        if self.int4:
            gs = self.in_features if self.group_size == -1 else self.group_size
            return ops.cpp_w4_decode(x2, weights[0], weights[1], weights[2], gs, out, bf16)
        return ops.cpp_w8_decode(x2, weights[0], weights[1], out, bf16)

    def _decode_rows(self) -> int:
        """The most rows the C++ decode kernels take (more: the prefill path)."""
        return ops.CPU_DECODE_MAX_M if self.int4 else ops.DECODE_MAX_M

    def _decode_supported(self) -> bool:
        qweight, scales = self.qweight, self.scales
        if not (_ext.has_cpp() and qweight.is_cpu and qweight.is_contiguous() and scales.dtype == torch.float32
                and scales.is_contiguous() and (not self.int4 or self.zeros.is_contiguous())):
            return False
        one = torch.empty((1, self.in_features))
        if self.int4:
            return ops._cpp_w4_supported(one, qweight, scales, self.zeros, self.group_size, self.g_idx)
        return ops._cpp_w8_supported(one, qweight, scales)

    def _eager_cpp(self, x2: torch.Tensor) -> bool:
        """Whether forward may call the cpp backend itself: eager CPU mode without autograd and
        with the default backends, on a call that backend serves (its own `supports` check). A
        wrong width goes to the front door, which names it."""
        if not (x2.shape[1] == self.in_features and x2.device.type == "cpu" and self.qweight.device.type == "cpu"
                and x2.dtype in FLOAT_DTYPES and _dispatch.eager(x2) and forced_backends() is None
                and _ext.has_cpp()):
            return False
        if self.int4:
            return ops._cpp_w4_supported(x2, self.qweight, self.scales, self.zeros, self.group_size, self.g_idx)
        return ops._cpp_w8_supported(x2, self.qweight, self.scales)

    def extra_repr(self) -> str:
        kind = f"int{self.bits}, group_size={self.group_size}" if self.int4 else "int8 per-channel"
        act_order = self.perm is not None or getattr(self, "g_idx", None) is not None
        pd = "" if self.compute_dtype is None else f", compute_dtype={self.compute_dtype}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kind}, "
                f"act_order={act_order}, bias={self.bias is not None}{pd}")
