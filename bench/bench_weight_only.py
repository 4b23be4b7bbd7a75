"""Weight-only GEMMs (W4A16 / W8A16) against the float GEMM a user would otherwise run.

CPU baseline: float32 F.linear (what an unquantized model does on a CPU). GPU baseline: fp16
F.linear (cuBLAS). Decode shapes (M = 1..16) are the point of weight-only quantization: the GEMM
is bound by the bytes of the weight it streams, and int4 streams 1/8 of fp32's (1/4 of fp16's).
The torch fallback (dequantize, then GEMM) is timed at M >= 64 only: at small M it is far slower
than the baseline, by design (it is the any-shape correctness path).
On a shared CPU the numbers move with the other processes' load; compare ratios from one run.
"""
import pytest
import torch
import torch.nn.functional as F

import pyllmops
from bench.conftest import bench_device, perf_backends, record, sync
from pyllmops.quant.rtn import rtn_int4, rtn_int8

DEV = bench_device()
K = N = 8192 if DEV.type == "cuda" else 4096
MS = [1, 4, 16] if DEV.type == "cpu" else [1, 4, 16, 64]
ACT = torch.float16 if DEV.type == "cuda" else torch.float32


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    w = torch.randn(N, K) * 0.02
    q4, q8 = rtn_int4(w, 128).to(DEV), rtn_int8(w)
    return {"w": w.to(DEV, ACT), "q4": q4, "q8": (q8.qweight.to(DEV), q8.scales.to(DEV))}


def _backends(op, m):
    return [b for b in perf_backends(op, DEV) if b != "torch" or m >= 64]


def _cases(op):
    return [(m, b) for m in MS for b in ["baseline"] + _backends(op, m)]


def _run(benchmark, fn):
    fn()
    sync(DEV)
    benchmark(lambda: (fn(), sync(DEV)))


@pytest.mark.parametrize("m, backend", _cases("w4a16_matmul"), ids=lambda v: str(v))
def test_w4a16(benchmark, weights, m, backend):
    x = torch.randn(m, K, device=DEV, dtype=ACT)
    base = backend == "baseline"
    record(benchmark, op="w4a16_matmul g128", shape=f"M={m} K={K} N={N} {str(ACT)[6:]}",
           backend=f"F.linear {str(ACT)[6:]}" if base else backend, baseline=base)
    if base:
        _run(benchmark, lambda: F.linear(x, weights["w"]))
        return
    q = weights["q4"]
    scales = q.scales.to(ACT) if DEV.type == "cuda" else q.scales

    def fn():
        with pyllmops.use_backend(backend):
            return pyllmops.w4a16_matmul(x, q.qweight, scales, q.zeros, q.group_size)
    _run(benchmark, fn)


@pytest.mark.parametrize("m, backend", _cases("w8a16_matmul"), ids=lambda v: str(v))
def test_w8a16(benchmark, weights, m, backend):
    x = torch.randn(m, K, device=DEV, dtype=ACT)
    base = backend == "baseline"
    record(benchmark, op="w8a16_matmul", shape=f"M={m} K={K} N={N} {str(ACT)[6:]}",
           backend=f"F.linear {str(ACT)[6:]}" if base else backend, baseline=base)
    if base:
        _run(benchmark, lambda: F.linear(x, weights["w"]))
        return
    qweight, scales = weights["q8"]
    scales = scales.to(ACT) if DEV.type == "cuda" else scales

    def fn():
        with pyllmops.use_backend(backend):
            return pyllmops.w8a16_matmul(x, qweight, scales)
    _run(benchmark, fn)
