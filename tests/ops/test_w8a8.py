import pytest
import torch
from torch import nn

import pyllmops
from pyllmops.ops import quantize_int8
from pyllmops.ops.w8a8 import reference_w8a8_matmul

from tests.support import compiled

from ..conftest import cpu_backends

# (M, K, N): M = 1, 3, 17, 4097; K and N deliberately not multiples of 16 (every CPU backend
# takes any shape). K stays <= 1000 so every int32 sum (|sum| <= 1000 * 127^2 < 2^24) is exact in
# float32: with unit scales the float32 output IS the int32 product.
SHAPES = [(1, 33, 17), (3, 100, 5), (17, 64, 70), (4097, 24, 40), (33, 1000, 48)]
# What a user can hand in as b: the nn.Linear weight view w.t() (K-major), a row-major [K, N]
# tensor, or the packed form.
LAYOUTS = ["weight_t", "row_major", "packed"]
SCALES = [("tensor", "tensor"), ("tensor", "channel"), ("token", "tensor"), ("token", "channel")]
BACKENDS = cpu_backends("w8a8_matmul")
# Every scale combination with and without bias on small shapes; M = 4097 once (the interpreted
# Triton grid is slow).
DEQUANT_CASES = [(shape, sc, bias) for shape in [(1, 33, 17), (17, 64, 70)] for sc in SCALES for bias in (False, True)] \
    + [((4097, 24, 40), ("token", "channel"), True)]


def _ints(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8)


def _b(w, layout):
    """w [N, K] int8 -> b [K, N] in the requested layout."""
    if layout == "weight_t":
        return w.t()
    if layout == "row_major":
        return w.t().contiguous()
    return pyllmops.pack_w8a8_weight(w.t())


def _scales(m, n, kind_a, kind_b):
    sa = torch.rand(1) + 0.01 if kind_a == "tensor" else torch.rand(m, 1) + 0.01
    sb = torch.rand(1) + 0.01 if kind_b == "tensor" else torch.rand(1, n) + 0.01
    return sa / 100, sb / 100


def _cases(backend):
    return [lay for lay in LAYOUTS if backend in ("cpp", "torch") or lay != "packed"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_int32_product_exact(backend, shape, seed):
    m, k, n = shape
    a, w = _ints(m, k), _ints(n, k)
    exact = (a.long() @ w.long().t()).float()  # exact: |sum| < 2^24
    one = torch.ones(1)
    for layout in _cases(backend):
        with pyllmops.use_backend(backend):
            got = pyllmops.w8a8_matmul(a, _b(w, layout), one, one)
        assert got.dtype == torch.float32 and got.shape == (m, n)
        assert torch.equal(got, exact), (backend, layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, scales, with_bias", DEQUANT_CASES)
def test_dequantized_fp32_within_1e5(backend, shape, scales, with_bias, seed):
    m, k, n = shape
    a, w = _ints(m, k), _ints(n, k)
    sa, sb = _scales(m, n, *scales)
    bias = torch.randn(n) * 10 if with_bias else None
    ref = reference_w8a8_matmul(a, w.t(), sa, sb, bias, torch.float64)
    # 1e-5 relative to the size of the terms: where the bias cancels the product the output itself
    # is small, and no float32 epilogue can be relatively accurate to it.
    bound = 1e-5 * ((a.long() @ w.long().t()).double().abs() * sa.double() * sb.double()
                    + (bias.double().abs() if with_bias else 0))
    for layout in _cases(backend):
        with pyllmops.use_backend(backend):
            got = pyllmops.w8a8_matmul(a, _b(w, layout), sa, sb, bias)
        assert bool(((got.double() - ref).abs() <= bound).all()), (backend, layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_half_outputs_one_rounding(backend, out_dtype, seed):
    m, k, n = 17, 64, 70
    a, w = _ints(m, k), _ints(n, k)
    sa, sb = _scales(m, n, "token", "channel")
    bias = torch.randn(n)
    ref = reference_w8a8_matmul(a, w.t(), sa, sb, bias, torch.float64)
    eps = torch.finfo(out_dtype).eps
    for layout in _cases(backend):
        with pyllmops.use_backend(backend):
            got = pyllmops.w8a8_matmul(a, _b(w, layout), sa, sb, bias, out_dtype=out_dtype)
        assert got.dtype == out_dtype
        # One rounding to out_dtype (half an ulp) plus the float32 epilogue's own error.
        err = (got.double() - ref).abs()
        assert bool((err <= eps * ref.abs() + 1e-4).all()), (backend, layout)


@pytest.mark.parametrize("k", [1024, 2048 + 17, 5000])
def test_int8_mm_cpu_exact_beyond_float32_integers(k, seed):
    # int8_mm_cpu (the CPU GEMM where int8 dot-product instructions are missing) runs the float32
    # sgemm: its output must be float32 of the exact integer product even where the sums pass 2^24
    # (float32's last exact integer). Worst case first: every product is (-128)^2 = 2^14, so a
    # K-chunk sums to 2^24 exactly; then random int8 (the full range, -128 included) and blocks of
    # large same-sign values whose sums pass 2^24 with random low bits.
    from pyllmops.ops.w8a8 import int8_mm_cpu

    worst = torch.full((2, k), -128, dtype=torch.int8)
    assert torch.equal(int8_mm_cpu(worst, worst.t()), torch.full((2, 2), float(k * 2 ** 14)))
    a = torch.randint(-128, 128, (7, k), dtype=torch.int8)
    w = torch.randint(-128, 128, (9, k), dtype=torch.int8)
    # rows and columns of large same-sign values: sums past 2^24 with random low bits, which a
    # float32 accumulation over more than EXACT_F32_K products would round
    a[:3] = torch.randint(100, 128, (3, k), dtype=torch.int8)
    w[:4] = torch.randint(100, 128, (4, k), dtype=torch.int8)
    exact = (a.long() @ w.long().t()).float()  # one rounding of the exact integer
    assert k <= 1024 or exact.abs().max() > 2 ** 24
    for b in (w.t(), w.t().contiguous()):
        assert torch.equal(int8_mm_cpu(a, b), exact)
    for backend in BACKENDS:  # the backends, through whatever GEMM they pick on this CPU
        with pyllmops.use_backend(backend):
            got = pyllmops.w8a8_matmul(a, w.t(), torch.ones(1), torch.ones(1))
        assert torch.equal(got, exact), backend


@pytest.mark.skipif("cpp" not in BACKENDS, reason="pyllmops._C not built")
@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpp_epilogue_bit_identical_to_torch(scales, out_dtype, seed):
    # On a strided b both run the same GEMM (torch._int_mm, or int8_mm_cpu without int8 dot-product
    # instructions); the C++ epilogue must then equal the torch one (same
    # float32 operations, same order, one round-to-nearest-even cast), NaN-free tails included.
    m, k, n = 19, 96, 37
    a, w = _ints(m, k), _ints(n, k)
    sa, sb = _scales(m, n, *scales)
    bias = torch.randn(n)
    got, want = [], []
    for backend, out in (("cpp", got), ("torch", want)):
        with pyllmops.use_backend(backend):
            out.append(pyllmops.w8a8_matmul(a, w.t(), sa, sb, bias, out_dtype=out_dtype))
    assert torch.equal(got[0], want[0])


@pytest.fixture
def packed_mode(monkeypatch):
    """set(flag): force onednn_packed_int8_fast() through PYLLMOPS_W8A8_PACKED (the probe's cache
    cleared before and after)."""
    from pyllmops.ops import w8a8

    def set_mode(flag: str) -> None:
        monkeypatch.setenv("PYLLMOPS_W8A8_PACKED", flag)
        w8a8.onednn_packed_int8_fast.cache_clear()

    yield set_mode
    monkeypatch.delenv("PYLLMOPS_W8A8_PACKED", raising=False)
    w8a8.onednn_packed_int8_fast.cache_clear()


def test_packed_weight_is_onednn_where_its_int8_gemm_is_exact_and_fast(packed_mode, seed):
    """pack_w8a8_weight gives oneDNN's packed tensor where onednn_packed_int8_fast() (exact int8 dot
    products and oneDNN's JIT kernels for them), else the K-major strided weight; W8A8Linear gives
    the reference's values either way."""
    from pyllmops.nn import W8A8Linear
    from pyllmops.ops.w8a8 import is_packed, onednn_int8_exact, onednn_packed_int8_fast

    w = _ints(8, 40)
    packed_mode("")  # the probe itself, which leaves the global random stream alone
    state = torch.get_rng_state()
    assert isinstance(onednn_packed_int8_fast(), bool)
    assert torch.equal(torch.get_rng_state(), state)
    if not onednn_int8_exact():
        assert not onednn_packed_int8_fast()  # the probe never picks an inexact GEMM
    lin = nn.Linear(64, 24)
    x = torch.randn(5, 64)
    outs = {}
    for flag in ("0", "1"):
        packed_mode(flag)
        b = pyllmops.pack_w8a8_weight(w.t())
        assert b.shape == (40, 8) and b.dtype == torch.int8
        layer = W8A8Linear.from_linear(lin)
        outs[flag] = layer(x)
        q = quantize_int8(x, "token")
        want = reference_w8a8_matmul(q.values, layer.weight.t(), q.scale, layer.weight_scale, layer.bias, torch.float64)
        torch.testing.assert_close(outs[flag].double(), want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
        if flag == "0" or not (torch.backends.mkldnn.is_available() and onednn_int8_exact()):
            # the K-major strided weight, which every backend reads
            assert not is_packed(b) and b.stride(0) == 1 and torch.equal(b, w.t())
            continue
        assert is_packed(b)
        # Only the cpp and torch backends read the packed form; forcing another one is an error,
        # not a silent fallback.
        with pyllmops.use_backend("reference"), pytest.raises(RuntimeError, match="cannot run this call"):
            pyllmops.w8a8_matmul(_ints(3, 40), b, torch.ones(1), torch.ones(1))


def test_compiles_fullgraph(seed):
    a, w = _ints(5, 32), _ints(24, 32)
    sa, sb = torch.rand(5, 1), torch.rand(1, 24)

    def f(a, b):
        return pyllmops.w8a8_matmul(a, b, sa, sb, out_dtype=torch.bfloat16)

    got = compiled(f)(a, w.t())
    ref = reference_w8a8_matmul(a, w.t(), sa, sb, None, torch.float64)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), ref, rtol=torch.finfo(torch.bfloat16).eps, atol=1e-6)


def _ok():
    return dict(a=_ints(4, 8), b=_ints(8, 6), scale_a=torch.ones(1), scale_b=torch.ones(1))


def _bad(**over):
    kw = _ok()
    kw.update(over)
    return lambda: pyllmops.w8a8_matmul(**kw)


@pytest.mark.parametrize("call, exc, match", [
    (_bad(b=_ints(7, 6)), ValueError, "b must be \\[K, N\\] with K = a.shape\\[1\\] = 8"),
    (_bad(a=torch.randn(4, 8)), TypeError, "a must have dtype in \\(int8\\)"),
    (_bad(b=_ints(8, 6).to(torch.uint8)), TypeError, "b must have dtype in \\(int8\\)"),
    (_bad(a=_ints(4, 8, 1)), ValueError, "a must have 2 dimensions"),
    (_bad(scale_a=torch.ones(4)), ValueError, "scale_a must have shape \\(1,\\) \\(per-tensor\\) or \\(4, 1\\)"),
    (_bad(scale_a=torch.ones(1, 8)), ValueError, "scale_a must have shape"),
    (_bad(scale_b=torch.ones(6, 1)), ValueError, "scale_b must have shape \\(1,\\) \\(per-tensor\\) or \\(1, 6\\)"),
    (_bad(scale_b=torch.ones(1, dtype=torch.int32)), TypeError, "scale_b must have dtype"),
    (_bad(scale_a=torch.tensor([float("nan")])), ValueError, "scale_a contains NaN or inf"),
    (_bad(scale_b=torch.full((1, 6), float("inf"))), ValueError, "scale_b contains NaN or inf"),
    (_bad(bias=torch.ones(5)), ValueError, "bias must have shape \\(6,\\)"),
    (_bad(out_dtype=torch.int32), TypeError, "out_dtype must be one of"),
    (_bad(a=torch.zeros(0, 8, dtype=torch.int8)), ValueError, "a must not be empty"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("shape", [(1, 64, 40), (16, 128, 72), (17, 4096, 136), (300, 160, 4104)])
@pytest.mark.parametrize("scales", SCALES)
def test_gpu_backends(backend, shape, scales, seed):
    from pyllmops.ops import available_backends

    if backend not in available_backends("w8a8_matmul", "cuda"):
        pytest.skip(f"{backend} not built/available")
    m, k, n = shape
    a, w = _ints(m, k).cuda(), _ints(n, k).cuda()
    sa, sb = (s.cuda() for s in _scales(m, n, *scales))
    bias = torch.randn(n, device="cuda")
    ref = reference_w8a8_matmul(a.cpu(), w.t().cpu(), sa.cpu(), sb.cpu(), bias.cpu(), torch.float64)
    bound = 1e-5 * ((a.cpu().long() @ w.cpu().long().t()).double().abs() * sa.cpu().double() * sb.cpu().double()
                    + bias.cpu().double().abs())
    if backend == "torch" and m <= 16:
        pytest.skip("torch._int_mm on CUDA needs M > 16")
    with pyllmops.use_backend(backend):
        got = pyllmops.w8a8_matmul(a, w.t(), sa, sb, bias)
        got16 = pyllmops.w8a8_matmul(a, w.t(), sa, sb, bias, out_dtype=torch.bfloat16)
    assert bool(((got.cpu().double() - ref).abs() <= bound).all())
    assert bool(((got16.cpu().double() - ref).abs() <= torch.finfo(torch.bfloat16).eps * ref.abs() + 1e-4).all())
    one = torch.ones(1, device="cuda")
    if k <= 1000:  # exact int32 product (|sum| < 2^24 is exact in float32)
        with pyllmops.use_backend(backend):
            assert torch.equal(pyllmops.w8a8_matmul(a, w.t(), one, one).cpu(), (a.cpu().long() @ w.cpu().long().t()).float())
