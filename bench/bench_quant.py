"""Quantization primitives against the plain torch expression a user would write."""
import pytest
import torch

import pyllmops
from bench.conftest import bench_device, perf_backends, record, sync

SHAPES = [(1, 4096), (128, 4096), (2048, 4096)]


def _plain_per_token(x):
    scale = x.float().abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    return (x.float() / scale).round().clamp(-127, 127).to(torch.int8), scale


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("backend", ["baseline"] + perf_backends("quantize_int8", bench_device()))
def test_quantize_int8_per_token(benchmark, device, shape, backend):
    x = torch.randn(shape, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    record(benchmark, op="quantize_int8 per-token", shape=f"{shape[0]}x{shape[1]} {str(x.dtype)[6:]}",
           backend="plain torch" if backend == "baseline" else backend, baseline=backend == "baseline")
    if backend == "baseline":
        fn = lambda: _plain_per_token(x)  # noqa: E731
    else:
        def fn():
            with pyllmops.use_backend(backend):
                return pyllmops.quantize_int8(x, "token")
    fn()
    benchmark(lambda: (fn(), sync(device)))


def _plain_grouped(w, group_size):
    g = w.float().reshape(w.shape[0], -1, group_size)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo).clamp(min=1e-12) / 15
    zero = (-lo / scale).round()
    return ((g / scale).round() + zero).clamp(0, 15).to(torch.uint8), scale, zero


@pytest.mark.parametrize("backend", ["baseline"] + perf_backends("quantize_int4_grouped", bench_device()))
def test_quantize_int4_grouped(benchmark, device, backend):
    w = torch.randn(4096, 4096, device=device) * 0.02
    record(benchmark, op="quantize_int4_grouped g128", shape="4096x4096 f32",
           backend="plain torch" if backend == "baseline" else backend, baseline=backend == "baseline")
    if backend == "baseline":
        fn = lambda: _plain_grouped(w, 128)  # noqa: E731
    else:
        def fn():
            with pyllmops.use_backend(backend):
                return pyllmops.quantize_int4_grouped(w, 128)
    benchmark(lambda: (fn(), sync(device)))
