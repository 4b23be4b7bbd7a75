"""The Triton launches bench/kernel_report.py compiles: calls of every pyllmops.kernels launcher over
the inputs that change what it launches (dtypes, M buckets, optional operands, scale layouts).

The report runs these on CPU tensors with Triton's launch replaced by a recorder, so each call
yields the exact kernel specializations (signature, constexprs, warps, stages; every autotune
config) that the dispatch would launch on a GPU. A @triton.jit kernel in pyllmops.kernels that
no case reaches fails the report: a new kernel adds its calls here.
"""
import itertools

import torch

HALF = (torch.float16, torch.bfloat16)
ACTS = (torch.float32, *HALF)
# M buckets: decode (<= 16), just past it, prefill; K and N only move runtime arguments. No M is 1
# or a multiple of 16, so the recorded specialization is the general one (the report keeps one
# row per configuration, not per integer specialization).
MS = (5, 15, 17, 99, 515)
K = N = 4096


def _e(*shape, dtype):
    return torch.empty(*shape, dtype=dtype)


def weight_only():
    from pyllmops.kernels import w4a16
    from pyllmops.kernels import weight_only as wo

    for m, x_dtype, act_order, group in itertools.product(MS + (1, 33, 64), ACTS, (False, True), (128, 32)):
        x = _e(m, K, dtype=x_dtype)
        g_idx = torch.zeros(K, dtype=torch.int32) if act_order else None
        # The dispatch hands the scales over in x's dtype, zeros as uint8 (pyllmops/ops/weight_only.py).
        w4a16.w4a16_matmul(x, _e(N, K // 2, dtype=torch.uint8), _e(N, K // group, dtype=x_dtype),
                           _e(N, K // group, dtype=torch.uint8), group, g_idx)
        if not act_order and group == 128:
            wo.w8a16_matmul(x, _e(N, K, dtype=torch.int8), _e(N, dtype=x_dtype))


def w8a8():
    from pyllmops.kernels import w8a8 as k

    for m, out_dtype, bias, per_row, k_major in itertools.product(MS, ACTS, (False, True), (False, True),
                                                                 (True, False)):
        a = _e(m, K, dtype=torch.int8)
        # W8A8Linear passes weight.T (K-major b); the op takes a row-major [K, N] b as well
        b = _e(N, K, dtype=torch.int8).t() if k_major else _e(K, N, dtype=torch.int8)
        sa = _e(m, 1, dtype=torch.float32) if per_row else _e(1, dtype=torch.float32)
        sb = _e(1, N, dtype=torch.float32) if per_row else _e(1, dtype=torch.float32)
        k.w8a8_matmul(a, b, sa, sb, _e(N, dtype=torch.float32) if bias else None, out_dtype)


def quant_int8():
    from pyllmops.kernels import quant_int8 as k

    for n, dtype, static in itertools.product((64, 1000, 4096, 14336), ACTS, (None, "tensor", "token")):
        m = 15
        scale = {None: None, "tensor": _e(1, dtype=torch.float32), "token": _e(m, 1, dtype=torch.float32)}[static]
        k.quantize_int8_rows(_e(m, n, dtype=dtype), scale)


def sampling():
    from pyllmops.kernels import sampling as k

    for vocab, dtype, probs in itertools.product((32000, 128256), ACTS, (False, True)):
        b = 7
        f, i = (lambda: _e(b, dtype=torch.float32)), (lambda: _e(b, dtype=torch.int64))
        k.sample_rows(_e(b, vocab, dtype=dtype), f(), i(), f(), f(), i(), i(), want_probs=probs)


CASES = [weight_only, w8a8, quant_int8, sampling]
