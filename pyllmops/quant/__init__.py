"""pyllmops.quant: quantization, in two layers.

Algorithms on tensors (this folder; they import ops/ and nothing above it):
    packing.py      int4 / int8 weight-only storage layouts, GPTQ / AWQ checkpoint layouts
    rtn.py          round-to-nearest (int4 group-wise with ragged last group, int8 per-channel)
    gptq.py         GPTQ (Hessian accumulation, Cholesky, lazy block updates, act-order)
    awq.py          AWQ (activation-aware scale search, clipping search)
    smoothquant.py  SmoothQuant smoothing (per-channel migration of activation range into weights)
    calibration.py  forward hooks that record what the algorithms need from calibration data

The verb on models (`methods/`, above nn/): `quantize(model, method)` walks a model, runs the
algorithms on each linear and swaps in nn/ modules. Nothing in this folder imports methods/.
"""
