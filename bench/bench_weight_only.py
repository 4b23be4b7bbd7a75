"""Weight-only GEMMs (W4A16 / W8A16) against the float GEMM a user would otherwise run.

CPU baseline: float32 F.linear (what an unquantized model does on a CPU). GPU baseline: fp16
F.linear (cuBLAS). Decode shapes (M = 1..16) are the point of weight-only quantization: the GEMM
is bound by the bytes of the weight it streams, and int4 streams 1/8 of fp32's (1/4 of fp16's).
The torch fallback (dequantize, then GEMM) is timed at M >= 64 only: at small M it is far slower
than the baseline, by design (it is the any-shape correctness path).
On a shared CPU the numbers move with the other processes' load; compare ratios from one run.

"layers=1": the same weight every call, so it stays cached (this VM reports a 480 MB L3: even the
64 MB fp32 4096 x 4096 weight does). "layers=10" (CPU): each call takes the next of 10 layers'
weights, as a decode step through a 10-layer model does: 640 MB of fp32 no longer fits the
cache, while the 84 MB of int4 weights do; that difference is the point of the compression.
w4a8 (CPU only): the opt-in int8-activation mode on the same int4 weights, same baseline; "x in
bf16" (CPU only): the decode kernels of WeightOnlyLinear.compute_dtype = torch.bfloat16.

Every row's throughput is the bytes the call must read (x, and the weight with its scales and
zeros) over its median time, in GB/s; the roofline columns (GPU) count the output written too, and
2 M K N fp16/bf16 tensor FLOPs. test_copy_bandwidth measures the reference for it: a
device-to-device copy_ of a 1 GiB buffer, counted as bytes read + written (as CUDA's
bandwidthTest reports it). The issue's GPU bar is M=1 W4A16 at >= 80% of that.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import pyllmops
from bench.conftest import bench_device, perf_backends, record, roofline_info, sync
from pyllmops.quant.rtn import rtn_int4, rtn_int8

DEV = bench_device()
K = N = 8192 if DEV.type == "cuda" else 4096
MS = [1, 4, 16] if DEV.type == "cpu" else [1, 4, 16, 64]
LAYERS = [1, 10] if DEV.type == "cpu" else [1]
ACT = torch.float16 if DEV.type == "cuda" else torch.float32


@pytest.fixture(scope="module")
def layers():
    """max(LAYERS) layers' weights: float, int4 (with its scales in the dtype the kernels read:
    the activation dtype on GPU, float32 on CPU) and int8 forms of each."""
    torch.manual_seed(0)
    scale_dtype = ACT if DEV.type == "cuda" else torch.float32
    out = []
    for _ in range(max(LAYERS)):
        w = torch.randn(N, K) * 0.02
        q4, q8 = rtn_int4(w, 128).to(DEV), rtn_int8(w)
        out.append({"w": w.to(DEV, ACT), "q4": q4, "s4": q4.scales.to(scale_dtype),
                    "q8": q8.qweight.to(DEV), "s8": q8.scales.to(DEV, scale_dtype)})
    return out


def _backends(op, m):
    return [b for b in perf_backends(op, DEV) if b != "torch" or m >= 64]


def _cases(op):
    return [(m, b) for m in MS for b in ["baseline"] + _backends(op, m)]


def _run(benchmark, fn):
    fn()
    sync(DEV)
    benchmark(lambda: (fn(), sync(DEV)))


def _shape(m, n_layers):
    return f"M={m} K={K} N={N} {str(ACT)[6:]}" + (f" layers={n_layers}" if len(LAYERS) > 1 else "")


def _bench_op(benchmark, layers, n_layers, m, backend, op, call, weight_keys):
    """One row: `call(x, layer)` on `backend` (each call takes the next of n_layers layers), or the
    float F.linear baseline on the same layers; weight_keys name the layer tensors the op reads."""
    x = torch.randn(m, K, device=DEV, dtype=ACT)
    base = backend == "baseline"
    record(benchmark, op=op, shape=_shape(m, n_layers),
           backend=f"F.linear {str(ACT)[6:]}" if base else backend, baseline=base, unit="GB/s read")
    layer = itertools.cycle(layers[:n_layers])
    if base:
        _run(benchmark, lambda: F.linear(x, next(layer)["w"]))
    else:
        def fn():
            with pyllmops.use_backend(backend):
                return call(x, next(layer))
        _run(benchmark, fn)
    read = _nbytes(x) + sum(_nbytes(layers[0][k]) for k in (("w",) if base else weight_keys))
    benchmark.extra_info["throughput"] = read / benchmark.stats.stats.median / 1e9
    roofline_info(benchmark, nbytes=read + m * N * x.element_size(), flops=2 * m * K * N, dtype=ACT)


def _nbytes(t) -> int:
    """Bytes of a tensor, or of an Int4Weight's qweight + zeros (its scales are counted apart)."""
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    return _nbytes(t.qweight) + _nbytes(t.zeros)


def test_copy_bandwidth(benchmark):
    """The bandwidth reference: copy_ between two 1 GiB device buffers, (read + written) / time."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=DEV).random_(0, 255)
    dst = torch.empty_like(src)
    record(benchmark, op="device copy_ (bandwidth reference)", shape="1 GiB", backend="torch",
           unit="GB/s read+written")
    _run(benchmark, lambda: dst.copy_(src))
    benchmark.extra_info["throughput"] = 2 * n / benchmark.stats.stats.median / 1e9
    roofline_info(benchmark, nbytes=2 * n)


@pytest.mark.parametrize("n_layers", LAYERS, ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("m, backend", _cases("w4a16_matmul"), ids=lambda v: str(v))
def test_w4a16(benchmark, layers, n_layers, m, backend):
    _bench_op(benchmark, layers, n_layers, m, backend, "w4a16_matmul g128",
              lambda x, l: pyllmops.w4a16_matmul(x, l["q4"].qweight, l["s4"], l["q4"].zeros, l["q4"].group_size),
              ("q4", "s4"))


@pytest.mark.parametrize("n_layers", LAYERS, ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("m, backend", _cases("w4a8_matmul") if DEV.type == "cpu" else [], ids=lambda v: str(v))
def test_w4a8(benchmark, layers, n_layers, m, backend):
    """The opt-in int8-activation mode (pyllmops/ops/w4a8.py) on the same int4 weights: an
    approximation of w4a16, timed against the same float32 baseline."""
    _bench_op(benchmark, layers, n_layers, m, backend, "w4a8_matmul g128",
              lambda x, l: pyllmops.w4a8_matmul(x, l["q4"].qweight, l["s4"], l["q4"].zeros, l["q4"].group_size),
              ("q4", "s4"))


@pytest.mark.parametrize("n_layers", LAYERS, ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("m, backend", _cases("w8a16_matmul"), ids=lambda v: str(v))
def test_w8a16(benchmark, layers, n_layers, m, backend):
    _bench_op(benchmark, layers, n_layers, m, backend, "w8a16_matmul",
              lambda x, l: pyllmops.w8a16_matmul(x, l["q8"], l["s8"]), ("q8", "s8"))


def _bf16_x_cases():
    from pyllmops import _ext

    return [(m, b) for m in MS for b in ("baseline", "cpp")] if DEV.type == "cpu" and _ext.has_cpp() else []


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n_layers", LAYERS, ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("m, backend", _bf16_x_cases(), ids=lambda v: str(v))
def test_bf16_x(benchmark, layers, n_layers, m, backend, bits):
    """CPU: the kernels behind WeightOnlyLinear.compute_dtype = torch.bfloat16 at decode sizes (x
    rounded to bfloat16 against the exact weight; vdpbf16ps from 2 rows where the CPU has
    AVX512_BF16), on the same weights, against the same float32 baseline as the rows above."""
    from pyllmops.ops import weight_only as ops

    out = torch.empty(m, N)
    if bits == 4:
        call = lambda x, l: ops.cpp_w4_decode(x, l["q4"].qweight, l["s4"], l["q4"].zeros, 128, out, True)  # noqa: E731
    else:
        call = lambda x, l: ops.cpp_w8_decode(x, l["q8"], l["s8"], out, True)  # noqa: E731
    _bench_op(benchmark, layers, n_layers, m, backend, f"w{bits}a16 decode, x in bf16" + (" g128" if bits == 4 else ""),
              call, ("q4", "s4") if bits == 4 else ("q8", "s8"))
