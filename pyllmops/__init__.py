"""pyllmops: LLM inference kernels as drop-in torch ops.

`import pyllmops` registers every op under torch.ops.pyllmops.*; the functions here are the
validated Python front doors to them."""
from pyllmops import ops
from pyllmops.ops import (
    available_backends,
    dequantize_int4_grouped,
    dequantize_int8,
    pack_w8a8_weight,
    quantize_int4_grouped,
    quantize_int8,
    sample,
    top_k_top_p_filter,
    use_backend,
    w4a8_matmul,
    w4a16_matmul,
    w8a8_matmul,
    w8a16_matmul,
)

from pyllmops.quant.methods import available_methods, quantize
from pyllmops.quant.methods.checkpoint import load_quantized, save_quantized

__version__ = "0.1.0"


def build_info() -> dict:
    """Which compiled pieces this install has (handy in bug reports and the README table)."""
    from pyllmops import _ext
    from pyllmops.ops._dispatch import triton_available
    import torch

    return {
        "version": __version__,
        "torch": torch.__version__,
        "cpp": _ext.has_cpp(),
        "cuda_ext": _ext.has_cuda(),
        "triton_cpu_interpreter": triton_available("cpu"),
        "triton_gpu": triton_available("cuda"),
    }


__all__ = [
    "available_backends", "available_methods", "build_info", "dequantize_int4_grouped", "dequantize_int8", "load_quantized", "ops",
    "pack_w8a8_weight", "quantize", "quantize_int4_grouped", "quantize_int8", "sample", "save_quantized", "top_k_top_p_filter",
    "use_backend", "w4a8_matmul", "w4a16_matmul", "w8a16_matmul", "w8a8_matmul",
]
