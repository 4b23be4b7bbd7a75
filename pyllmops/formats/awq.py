"""AWQ GEMM checkpoints as AutoAWQ writes them (4-bit, zero_point=True, version "gemm").

Per layer `<name>.qweight` [K, N/8] int32 and `<name>.qzeros` [K/group_size, N/8] int32, both
packed along N in AWQ's nibble order, `<name>.scales` [K/group_size, N], `<name>.bias`. AutoAWQ
sizes its buffers with K // group_size, so group_size must divide every K (no ragged last group)
and there is no per-channel or act-order form. Scales keep the model's dtype (bit-identical reload).
"""
from __future__ import annotations

import torch

from pyllmops.formats._common import common_int4, layer_names
from pyllmops.formats._layer import FormatError, QuantizedLinear, require, take
from pyllmops.quant.packing import from_awq, to_awq

NAME = "awq"


def matches(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "awq"


def export(layers: dict[str, QuantizedLinear], ignore: list[str] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    group_size, bits = common_int4(NAME, layers)
    if bits != 4:
        raise FormatError(f"awq: bits={bits}; AWQ GEMM checkpoints are 4-bit")
    if group_size == -1:
        raise FormatError("awq: per-channel weights (group_size -1) have no AWQ GEMM form; quantize with a group "
                          "size or use format='gptq' / 'compressed-tensors'")
    tensors = {}
    for name, layer in layers.items():
        w = layer.weight
        n, k = w.shape
        if w.g_idx is not None:
            raise FormatError(f"awq: {name} has an act-order g_idx, which AWQ checkpoints cannot hold "
                              f"(use format='gptq' or 'compressed-tensors')")
        if k % group_size:
            raise FormatError(f"awq: {name} has K={k} input features, not a multiple of group_size={group_size}: "
                              f"AutoAWQ loads only whole groups (use format='gptq' or 'compressed-tensors')")
        if n % 8:
            raise FormatError(f"awq: {name}.qweight packs 8 output features per int32; N={n}")
        tensors.update({f"{name}.{k_}": v for k_, v in to_awq(w).items()})
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias
    qconfig = {"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": group_size, "zero_point": True,
               "modules_to_not_convert": sorted(ignore) or None}
    return tensors, qconfig


def extra_files(qconfig: dict) -> dict[str, dict]:
    return {}


def import_(tensors: dict[str, torch.Tensor], qconfig: dict) -> dict[str, QuantizedLinear]:
    bits, group_size = require(qconfig, "bits"), require(qconfig, "group_size")
    version = str(qconfig.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm" or not qconfig.get("zero_point", True):
        raise FormatError(f"awq: only 4-bit GEMM checkpoints with zero points are supported, got bits={bits}, "
                          f"version={version!r}, zero_point={qconfig.get('zero_point')}")
    out = {}
    for name in layer_names(tensors, ".qweight"):
        parts = [take(tensors, f"{name}.{p}", f"awq layer {name}") for p in ("qweight", "qzeros", "scales")]
        try:
            w = from_awq(*parts, group_size=group_size)
        except ValueError as e:
            raise FormatError(f"awq: {name}: {e}") from None
        out[name] = QuantizedLinear(w, tensors.pop(f"{name}.bias", None))
    if not out:
        raise FormatError("awq: no tensor named <layer>.qweight in the checkpoint")
    return out
