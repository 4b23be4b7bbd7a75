"""GPTQ checkpoints as AutoGPTQ and GPTQModel write them (4-bit, checkpoint_format "gptq", i.e.
version 1: qzeros hold zero - 1; "gptq_v2" is read too).

Per layer `<name>.qweight` [K/8, N] int32, `<name>.qzeros` [G, N/8] int32, `<name>.scales` [G, N],
`<name>.g_idx` [K] int32, `<name>.bias`; G = ceil(K / group_size) (AutoGPTQ sizes its buffers with
ceil, so a ragged last group loads). quantize_config.json (and config.json's
quantization_config) state bits, group_size (-1 per channel), desc_act, sym. Scales are written in
the model's dtype (loaders cast them to theirs) so that a reload is bit-identical.
"""
from __future__ import annotations

import torch

from pyllmops.formats._common import common_int4, layer_names
from pyllmops.formats._layer import FormatError, QuantizedLinear, require, take
from pyllmops.quant.packing import from_gptq, to_gptq

NAME = "gptq"


def matches(qconfig: dict) -> bool:
    return qconfig.get("quant_method") == "gptq"


def export(layers: dict[str, QuantizedLinear], ignore: list[str] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    group_size, bits = common_int4(NAME, layers)
    if bits != 4:
        raise FormatError(f"gptq: bits={bits}; GPTQ's int32 packing here is 4-bit only")
    tensors, sym, desc_act = {}, True, False
    for name, layer in layers.items():
        w = layer.weight
        n, k = w.shape
        if k % 8 or n % 8:
            raise FormatError(f"gptq: {name}.qweight/qzeros pack 8 values per int32 along K and N; "
                              f"{name} is [N={n}, K={k}]")
        sym &= bool((w.zeros == 2 ** (w.bits - 1)).all())
        desc_act |= w.g_idx is not None
        try:
            packed = to_gptq(w, version=1)
        except ValueError as e:
            raise FormatError(f"gptq: {name}.qzeros: {e} (quantize symmetrically or use format='compressed-tensors')") from None
        tensors.update({f"{name}.{k_}": v for k_, v in packed.items()})
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias
    qconfig = {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": 4, "group_size": group_size,
               "desc_act": desc_act, "sym": sym, "static_groups": False, "true_sequential": True,
               "damp_percent": 0.01}
    return tensors, qconfig


def extra_files(qconfig: dict) -> dict[str, dict]:
    return {"quantize_config.json": qconfig}


def import_(tensors: dict[str, torch.Tensor], qconfig: dict) -> dict[str, QuantizedLinear]:
    bits = require(qconfig, "bits")
    group_size = require(qconfig, "group_size")
    if bits != 4:
        raise FormatError(f"gptq: bits={bits}; only 4-bit GPTQ checkpoints map onto pyllmops' int4 layout")
    fmt = qconfig.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise FormatError(f"gptq: checkpoint_format {fmt!r} is not 'gptq' or 'gptq_v2'")
    out = {}
    for name in layer_names(tensors, ".qweight"):
        parts = [take(tensors, f"{name}.{p}", f"gptq layer {name}") for p in ("qweight", "qzeros", "scales")]
        g_idx = tensors.pop(f"{name}.g_idx", None)
        try:
            w = from_gptq(*parts, g_idx, group_size=group_size, bits=bits, version=2 if fmt == "gptq_v2" else 1)
        except ValueError as e:
            raise FormatError(f"gptq: {name}: {e}") from None
        out[name] = QuantizedLinear(w, tensors.pop(f"{name}.bias", None))
    if not out:
        raise FormatError("gptq: no tensor named <layer>.qweight in the checkpoint")
    return out
