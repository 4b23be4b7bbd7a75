"""Checkpoint formats: one module per format, each converting between that format's tensors and
config and the layouts of pyllmops.quant.packing. Only these modules know file layouts.

    compressed_tensors  what llmcompressor writes and vLLM / transformers load: int4 (and 2-8 bit)
                        "pack-quantized" weight-only, int8 "int-quantized" W8A8
    gptq                AutoGPTQ / GPTQModel: quantize_config.json, int32-packed qweight, qzeros
                        with the version-1 offset, scales, g_idx
    awq                 AutoAWQ GEMM: qweight packed along N in AWQ's nibble order

A format module has:
    NAME                                  its name for save_quantized(format=...)
    matches(config) -> bool               whether a config.json dict (plus quantize_config.json,
                                          merged under "quantization_config") is in this format
    export(layers) -> (tensors, qconfig)  {layer name: QuantizedLinear} -> {tensor name: tensor},
                                          the config.json "quantization_config" dict
    extra_files(qconfig) -> {file: dict}  other JSON files the format's loaders read
    import_(tensors, qconfig) -> {layer name: QuantizedLinear}; the tensors it did not use are
                                          left in `tensors` (embeddings, norms, float layers)
A tensor, shape, group size or bit width a format cannot hold raises FormatError naming it.
"""
from __future__ import annotations

from pyllmops.formats._layer import FormatError, FormatWarning, QuantizedLinear


def format_module(name: str):
    """The module of format `name` (see FORMATS)."""
    from pyllmops.formats import awq, compressed_tensors, gptq

    modules = {m.NAME: m for m in (compressed_tensors, gptq, awq)}
    if name not in modules:
        raise ValueError(f"format must be one of {sorted(modules)}, got {name!r}")
    return modules[name]


FORMATS = ("compressed-tensors", "gptq", "awq")


def detect(config: dict) -> str:
    """The format of a checkpoint from its config.json (with quantize_config.json merged in as
    "quantization_config" when config.json has none)."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        raise FormatError("config has no quantization_config (and there is no quantize_config.json): "
                          "not a quantized checkpoint")
    for name in FORMATS:
        if format_module(name).matches(qc):
            return name
    raise FormatError(f"quantization_config.quant_method {qc.get('quant_method')!r} (format "
                      f"{qc.get('format')!r}) is none of {list(FORMATS)}")


__all__ = ["FORMATS", "FormatError", "FormatWarning", "QuantizedLinear", "detect", "format_module"]
