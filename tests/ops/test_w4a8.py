"""w4a8_matmul: every CPU backend against the float64 oracle written from the definition
(tests/reference.py: Q8_0 activations, the packed int4 weight unpacked byte by byte), the Q8_0
quantization itself, and the size of the error against the exact w4a16 product."""
import pytest
import torch

import pyllmops
from pyllmops.ops import _dispatch
from pyllmops.ops.w4a8 import quantize_activations_q8
from tests import reference
from tests.conftest import cpu_backends
from tests.support import compiled, forced


def _int4(n, k, group_size):
    g = 1 if group_size == -1 else -(-k // group_size)
    qweight = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    scales = torch.rand(n, g) * 0.02 + 1e-3
    zeros = torch.randint(0, 16, (n, g), dtype=torch.uint8)
    return qweight, scales, zeros


# (M, N, K): odd M; K = 576 and 544 (a short last block of 64 / 32 channels, ragged group 128);
# M = 17 (above decode: torch); K = 1152 (9 blocks) and 2304 (18 groups) for the cpp kernel's tails
SHAPES = [(1, 97, 256), (3, 40, 576), (1, 24, 544), (5, 64, 1152), (2, 24, 2304), (17, 16, 256)]


@pytest.mark.parametrize("backend", cpu_backends("w4a8_matmul"))
@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("group_size", [32, 64, 128, 256, -1])
@pytest.mark.parametrize("x_kind", ["randn", "outliers", "zero_block", "tiny", "huge"])
def test_against_reference(backend, m, n, k, group_size, x_kind, seed):
    qweight, scales, zeros = _int4(n, k, group_size)
    x = torch.randn(m, k)
    if x_kind == "outliers":
        x[:, torch.randperm(k)[:3]] *= 300.0
    elif x_kind == "zero_block":
        x[:, 32:64] = 0.0
    elif x_kind in ("tiny", "huge"):
        x *= 1e-35 if x_kind == "tiny" else 1e30
    got = forced(backend, "w4a8_matmul", x, qweight, scales, zeros, group_size)
    if got is None:  # declined, as the dispatch declares (asserted by `forced`)
        return
    ref = reference.w4a8_matmul(x, qweight, scales, zeros, group_size)
    assert got.shape == (m, n) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_cpp_serves_decode_shapes():
    if "cpp" not in cpu_backends("w4a8_matmul"):
        pytest.skip("no C++ backend here")
    from pyllmops import _ext

    qweight, scales, zeros = _int4(64, 1152, 128)
    x = torch.randn(3, 1152)
    expected = "cpp" if _ext.cpp().weight_only_vnni() else "torch"
    assert _dispatch.select("w4a8_matmul", x.device, x, qweight, scales, zeros, 128)[0] == expected
    # a group size that is not a multiple of 128, or M above decode, go to the torch fallback
    q64, s64, z64 = _int4(64, 1152, 64)
    assert _dispatch.select("w4a8_matmul", x.device, x, q64, s64, z64, 64)[0] == "torch"
    assert _dispatch.select("w4a8_matmul", x.device, torch.randn(17, 1152), qweight, scales, zeros, 128)[0] == "torch"


def test_quantization_is_q8_0(seed):
    """d = max|x| / 127 per 32 channels, q = round half to even (x / d), q = 0 in a zero block;
    on random rows, q * d is the oracle's Q8_0 value exactly."""
    x = torch.zeros(1, 64)
    x[0, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -2.5, -126.4, 3.49, -0.51])
    q, d = quantize_activations_q8(x)
    assert d.tolist() == [[1.0, 0.0]]
    assert q[0, :8].tolist() == [127, 0, 2, 2, -2, -126, 3, -1]
    assert q[0, 32:].abs().sum() == 0
    x = torch.randn(3, 96) * torch.tensor([1e-3, 1.0, 1e3]).repeat_interleave(32)
    q, d = quantize_activations_q8(x)
    value = q.double().view(3, 3, 32) * d.double()[..., None]
    torch.testing.assert_close(value.view(3, 96), reference.q8_0(x), rtol=0, atol=0)


@pytest.mark.parametrize("backend", cpu_backends("w4a8_matmul"))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input(backend, bad, seed):
    qweight, scales, zeros = _int4(16, 256, 128)
    x = torch.randn(2, 256)
    x[0, 5] = bad
    got = forced(backend, "w4a8_matmul", x, qweight, scales, zeros, 128)
    if got is None:  # declined, as declared
        return
    assert torch.isnan(got[0]).all() and torch.isfinite(got[1]).all()


@pytest.mark.parametrize("backend", cpu_backends("w4a8_matmul"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(backend, dtype, seed):
    qweight, scales, zeros = _int4(32, 256, 128)
    x = torch.randn(3, 256).to(dtype)
    got = forced(backend, "w4a8_matmul", x, qweight, scales.to(dtype), zeros, 128)
    if got is None:  # declined, as declared
        return
    ref = reference.w4a8_matmul(x, qweight, scales.to(dtype), zeros, 128)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), ref.double(), rtol=1e-2, atol=1e-2 * float(ref.abs().max()))


@pytest.mark.parametrize("x_kind, bound", [("randn", 0.01), ("outliers", 0.05)])
def test_error_against_w4a16(x_kind, bound, seed):
    """The approximation itself: relative RMS error of w4a8 against the exact w4a16 product. Per
    activation the rounding error is uniform in +-d/2, d = max|x of its block| / 127: ~0.4% of the
    RMS for Gaussian x; an outlier channel (x300) makes its block's step large, so the other 31
    channels of that block carry most of the error."""
    k, n = 4096, 256
    qweight, scales, zeros = _int4(n, k, 128)
    x = torch.randn(4, k)
    if x_kind == "outliers":
        x[:, torch.randperm(k)[:8]] *= 300.0
    got = pyllmops.w4a8_matmul(x, qweight, scales, zeros, 128).double()
    exact = reference.w4_matmul(x, qweight, scales, zeros, 128)
    rel = float((got - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt())
    assert rel < bound


def test_compiles(seed):
    qweight, scales, zeros = _int4(32, 256, 128)
    f = compiled(lambda x: pyllmops.w4a8_matmul(x, qweight, scales, zeros, 128) * 2)
    x = torch.randn(2, 256)
    ref = reference.w4a8_matmul(x, qweight, scales, zeros, 128) * 2
    torch.testing.assert_close(f(x).double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("bad, exc, match", [
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(2, 240), q, s, z, 128), ValueError, "x must have K"),
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(2, 128), q, s, z, 128), ValueError, r"qweight must have shape \[N, K/2\]"),
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(2, 256), q, s, z, 0), ValueError, "group_size must be -1"),
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(2, 256), q, s, z, 128.0), TypeError, "group_size must be an int"),
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(2, 256), q, s, z, 64), ValueError, r"scales must have shape \[N, G\]"),
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(2, 256), q, s, z.float(), 128), TypeError, "zeros must have dtype"),
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(2, 256).int(), q, s, z, 128), TypeError, "x must have dtype"),
    (lambda q, s, z: pyllmops.w4a8_matmul(torch.randn(256), q, s, z, 128), ValueError, "x must have 2 dimensions"),
])
def test_bad_input(bad, exc, match):
    q, s, z = _int4(8, 256, 128)
    with pytest.raises(exc, match=match):
        bad(q, s, z)
