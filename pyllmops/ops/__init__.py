"""Op front doors. Each submodule registers its torch.library custom op (namespace `pyllmops`)
and its backends on import."""
from pyllmops.ops._dispatch import available_backends, registered_ops, select, use_backend
from pyllmops.ops.quant_int4 import Int4Quantized, dequantize_int4_grouped, quantize_int4_grouped
from pyllmops.ops.quant_int8 import Int8Quantized, dequantize_int8, quantize_int8
from pyllmops.ops import quant_int8_cpp  # noqa: F401  (registers quantize_int8's cpp backend)
from pyllmops.ops.sampling import sample, top_k_top_p_filter
from pyllmops.ops.w8a8 import pack_w8a8_weight, w8a8_matmul
from pyllmops.ops import w8a8_cpp  # noqa: F401  (registers w8a8_matmul's cpp backend)
from pyllmops.ops.weight_only import w4a16_matmul, w8a16_matmul
from pyllmops.ops.w4a8 import w4a8_matmul

__all__ = [
    "Int4Quantized", "Int8Quantized", "available_backends", "dequantize_int4_grouped", "dequantize_int8",
    "pack_w8a8_weight", "quantize_int4_grouped", "quantize_int8", "registered_ops", "sample", "select",
    "top_k_top_p_filter", "use_backend", "w4a8_matmul", "w4a16_matmul", "w8a16_matmul", "w8a8_matmul",
]
