"""pyllmops.quant: quantization algorithms as plain functions on tensors (no module swapping).

    packing.py  int4 / int8 weight-only storage, GPTQ / AWQ checkpoint layouts, safetensors
    rtn.py      round-to-nearest (int4 group-wise with ragged last group, int8 per-channel)
    gptq.py     GPTQ (Hessian accumulation, Cholesky, lazy block updates, act-order)
    awq.py      AWQ (activation-aware scale search, clipping search)
"""
