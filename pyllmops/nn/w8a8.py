"""W8A8Linear: a drop-in nn.Linear with int8 weights and int8 activations.

    y [..., N] (x's dtype) = w8a8_matmul(quantize_int8(x), weight.T, x_scale, weight_scale) + bias

State (all buffers, so state_dict / safetensors round-trip them):
  weight        [N, K] int8, symmetric, one scale per output channel
  weight_scale  [1, N] float32
  bias          [N] float32, or absent
  input_scale   [1] float32, only with act="static": the calibrated per-tensor activation scale
act="dynamic": each token (row of x) is quantized with its own absmax scale at run time.
act="static":  every token uses input_scale (values beyond its range saturate at +-127).

On CPU the weight is additionally kept in oneDNN's packed layout (built by from_linear, or on
first use after loading a state, and rebuilt when the weight changes); it is a cache, not part of
the state.
"""
from __future__ import annotations

import torch
from torch import nn

from pyllmops import _ext
from pyllmops.ops import pack_w8a8_weight, quantize_int8, w8a8_cpp, w8a8_matmul
from pyllmops.ops._dispatch import forced_backends
from pyllmops.ops._validate import FLOAT_DTYPES

ACTIVATIONS = ("dynamic", "static")


class W8A8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, act: str = "dynamic",
                 device: torch.device | str | None = None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {list(ACTIVATIONS)}, got {act!r}")
        self.in_features, self.out_features, self.act = in_features, out_features, act
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(1, out_features, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.register_buffer("input_scale", torch.ones(1, device=device) if act == "static" else None)
        self._packed: tuple[tuple, w8a8_cpp.LinearPlan] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, act: str = "dynamic", input_scale: torch.Tensor | float | None = None) -> "W8A8Linear":
        """Quantize `linear`'s weight per output channel. act="static" needs `input_scale` (the
        per-tensor activation scale, e.g. calibrated absmax / 127)."""
        if act == "static" and input_scale is None:
            raise ValueError("act='static' needs input_scale (calibrated activation absmax / 127)")
        if act == "dynamic" and input_scale is not None:
            raise ValueError("input_scale is only used with act='static'")
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, act, device=w.device)
        q = quantize_int8(w.float(), "token")  # one scale per row of [N, K] = per output channel
        mod.weight.copy_(q.values)
        mod.weight_scale.copy_(q.scale.reshape(1, -1))
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        if act == "static":
            scale = torch.as_tensor(input_scale, dtype=torch.float32, device=w.device).reshape(-1)
            if scale.numel() != 1 or not bool(torch.isfinite(scale).all()) or float(scale) <= 0:
                raise ValueError(f"input_scale must be one finite positive number, got {input_scale}")
            mod.input_scale.copy_(scale)
        if w.device.type == "cpu":
            mod._packed_weight()  # pack once now, not inside the first forward
        return mod

    def _weight_operand(self) -> torch.Tensor:
        """b [K, N] for w8a8_matmul: the packed weight on CPU (cached), weight.T elsewhere or when
        a backend other than cpp/torch is forced (only those read the packed form), and under
        torch.compile (the opaque oneDNN tensor has no fake-tensor form to trace with)."""
        if torch.compiler.is_compiling():
            return self.weight.t()
        forced = forced_backends()
        if self.weight.device.type != "cpu" or (forced is not None and forced[0] not in ("cpp", "torch")):
            return self.weight.t()
        return self._packed_weight()

    def _packed_weight(self) -> torch.Tensor:
        return self._cpu_plan().b

    def _cpu_plan(self) -> w8a8_cpp.LinearPlan:
        """The CPU-packed weight and the other operands in kernel form, rebuilt (and the scales
        re-checked) whenever the weight, a scale or the bias changed (state_dict loads write them
        in place)."""
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, self.weight_scale, self.input_scale, self.bias)
                    if t is not None)
        if self._packed is None or self._packed[0] != key:
            for name in ("weight_scale", "input_scale"):
                scale = getattr(self, name)
                if scale is not None and not bool((torch.isfinite(scale) & (scale > 0)).all()):
                    raise ValueError(f"{name} must be finite and > 0")
            plan = w8a8_cpp.LinearPlan(pack_w8a8_weight(self.weight.t()), self.weight_scale, self.bias, self.input_scale)
            self._packed = (key, plan)
        return self._packed[1]

    def _eager_cpu(self, x: torch.Tensor) -> bool:
        """Whether forward may call the CPU kernels directly: eager mode (torch.compile traces
        the ops), no autograd (the ops have none and say so), default backends, C++ core built."""
        return (x.device.type == "cpu" and self.weight.device.type == "cpu" and not x.requires_grad
                and not torch.compiler.is_compiling() and forced_backends() is None and _ext.has_cpp())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., K] float32/float16/bfloat16 -> [..., N], same dtype."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must have {self.in_features} features in its last dimension, got shape {tuple(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        if self._eager_cpu(x) and x2.dtype in FLOAT_DTYPES and x2.shape[0] > 0:
            # One Python call into the cpp backends instead of two op front doors (their checks
            # and dispatch cost ~0.15 ms, a fifth of a 128 x 2048 x 2048 int8 GEMM).
            out = w8a8_cpp.w8a8_linear(x2 if x2.stride(-1) == 1 else x2.contiguous(), self._cpu_plan())
            return out.reshape(*x.shape[:-1], self.out_features)
        if self.act == "static":
            q = quantize_int8(x2, "tensor", scale=self.input_scale)
        else:
            q = quantize_int8(x2, "token")
        out = w8a8_matmul(q.values, self._weight_operand(), q.scale, self.weight_scale, self.bias, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def __getstate__(self):
        # The packed weight is an opaque oneDNN tensor that cannot be copied or pickled; copies
        # rebuild it on first use.
        state = dict(self.__dict__)
        state["_packed"] = None
        return state

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, act={self.act}"
