"""Op front doors. Each submodule registers its torch.library custom op (namespace `pyllmops`)
and its backends on import."""
from pyllmops.ops._dispatch import available_backends, registered_ops, select, use_backend
from pyllmops.ops.quant_int4 import Int4Quantized, dequantize_int4_grouped, quantize_int4_grouped
from pyllmops.ops.quant_int8 import Int8Quantized, dequantize_int8, quantize_int8
from pyllmops.ops.sampling import sample, top_k_top_p_filter

__all__ = [
    "Int4Quantized", "Int8Quantized", "available_backends", "dequantize_int4_grouped", "dequantize_int8",
    "quantize_int4_grouped", "quantize_int8", "registered_ops", "sample", "select", "top_k_top_p_filter",
    "use_backend",
]
