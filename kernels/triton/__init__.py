"""Triton kernels (installed as pyllmops.kernels). Imported lazily by pyllmops.ops, so that
TRITON_INTERPRET=1 (CPU testing) can be set before triton.jit runs."""
