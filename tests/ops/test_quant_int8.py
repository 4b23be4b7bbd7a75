import pytest
import torch

import pyllmops
from pyllmops.ops.quant_int8 import Int8Quantized, reference_quantize_int8

from tests import reference
from tests.support import compiled

from ..conftest import cpu_backends

SHAPES = [(1, 1), (3, 7), (4097, 33), (16, 4096)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _input(shape, dtype, noncontig):
    m, n = shape
    if noncontig:  # a column slice: row stride > n, still unit column stride
        return (torch.randn(m, n + 5) * 3)[:, 2:2 + n].to(dtype)
    return (torch.randn(m, n) * 3).to(dtype)


def _check_against_reference(got, ref, x):
    # Scales: same float32 formula, float64 vs float32 arithmetic.
    torch.testing.assert_close(got.scale, ref.scale, rtol=1e-6, atol=0)
    def centred(r):  # an asymmetric zero point can itself sit on a tie: compare value - zero
        return r.values.int() - (r.zero_point.int() if r.zero_point is not None else 0)

    diff = (centred(got) - centred(ref)).abs()
    # x / scale in float32 may land on the other side of a .5 tie than float64 does (common with
    # bf16 inputs, e.g. x = absmax / 2): at most one step, and only next to a tie.
    assert int(diff.max()) <= 1
    t = x.double() / ref.scale.double()
    near_tie = ((t - t.floor()) - 0.5).abs() < 1e-4
    assert bool(near_tie[diff > 0].all())
    # The defining property: dequantization error is at most half a step (plus float noise).
    deq = pyllmops.dequantize_int8(got.values, got.scale, got.zero_point, out_dtype=torch.float64) if got.zero_point is not None \
        else got.values.double() * got.scale.double()
    err = (deq - x.double()).abs()
    step = got.scale.double().expand_as(err)
    # Half a step where not clamped; an asymmetric rounded zero point can cost half a step more at
    # the clamped range ends.
    inside = (got.values > -127) & (got.values < 127)
    assert bool((err[inside] <= step[inside] * (0.5 + 1e-4)).all())
    assert bool((err <= step * (1 + 1e-4)).all())


@pytest.mark.parametrize("backend", cpu_backends("quantize_int8"))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noncontig", [False, True])
def test_dynamic_per_token_symmetric(backend, shape, dtype, noncontig, seed):
    x = _input(shape, dtype, noncontig)
    with pyllmops.use_backend(backend):
        got = pyllmops.quantize_int8(x, "token")
    assert got.values.dtype == torch.int8 and got.values.shape == shape
    assert got.scale.dtype == torch.float32 and got.scale.shape == (shape[0], 1)
    assert int(got.values.min()) >= -127
    # the scale against tests/reference.py (the package's reference shares the torch fallback's reduction)
    torch.testing.assert_close(got.scale.double(), reference.int8_scale(x, "token"), rtol=1e-6, atol=0)
    _check_against_reference(got, reference_quantize_int8(x, "token"), x)


@pytest.mark.parametrize("granularity", ["tensor", "token", "channel"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_all_granularities(granularity, symmetric, shape, seed):
    x = _input(shape, torch.float32, False) + (1.0 if not symmetric else 0.0)  # skewed range
    with pyllmops.use_backend("torch"):
        got = pyllmops.quantize_int8(x, granularity, symmetric=symmetric)
    ref = reference_quantize_int8(x, granularity, symmetric=symmetric)
    if not symmetric:
        assert torch.equal(got.zero_point, ref.zero_point) or int((got.zero_point - ref.zero_point).abs().max()) <= 1
    else:
        torch.testing.assert_close(got.scale.double(), reference.int8_scale(x, granularity), rtol=1e-6, atol=0)
    _check_against_reference(got, ref, x)


@pytest.mark.parametrize("backend", cpu_backends("quantize_int8"))
@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_static_scale(backend, granularity, seed):
    x = torch.randn(37, 50)
    scale = x.abs().amax().reshape(1) / 127 if granularity == "tensor" else x.abs().amax(1, keepdim=True) / 127
    scale = scale * 0.5  # half the range: values must saturate at +-127, not wrap
    with pyllmops.use_backend(backend):
        got = pyllmops.quantize_int8(x, granularity, scale=scale)
    ref = reference_quantize_int8(x, granularity, scale=scale)
    assert int((got.values.int() - ref.values.int()).abs().max()) <= 1
    assert int(got.values.abs().max()) == 127
    torch.testing.assert_close(got.scale, scale.float())


def test_round_half_to_even_and_zero_row():
    # scale = 2 / 127 exactly representable ratio: x = k * scale + scale/2 lands on ties.
    x = torch.tensor([[0.0, 0.0, 0.0], [0.5, 1.5, -2.5]]) * (2 / 127)
    x[1, 0] = 2.0  # row absmax 2.0 -> scale 2/127
    for backend in cpu_backends("quantize_int8"):
        with pyllmops.use_backend(backend):
            q = pyllmops.quantize_int8(x, "token")
        assert q.values[0].tolist() == [0, 0, 0], backend  # all-zero row: finite scale, zeros
        assert bool(torch.isfinite(q.scale).all())
        assert q.values[1, 1:].tolist() == [2, -2], backend  # 1.5 -> 2, -2.5 -> -2


def test_custom_op_registered_and_compiles(seed):
    assert hasattr(torch.ops.pyllmops, "quantize_int8")
    assert hasattr(torch.ops.pyllmops, "quantize_int4_grouped")

    def f(x):
        q = pyllmops.quantize_int8(x * 2, "token")
        return q.values, q.scale, pyllmops.dequantize_int8(q.values, q.scale)

    x = torch.randn(9, 33)
    values, scale, deq = compiled(f)(x)
    _check_against_reference(Int8Quantized(values, scale, None), reference_quantize_int8(x * 2, "token"), x * 2)
    torch.testing.assert_close(deq, values.float() * scale, rtol=0, atol=0)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda: pyllmops.quantize_int8(torch.randn(4, 4).int()), TypeError, "x must have dtype"),
    (lambda: pyllmops.quantize_int8(torch.randn(4)), ValueError, "x must have 2 dimensions"),
    (lambda: pyllmops.quantize_int8(torch.randn(0, 4)), ValueError, "x must not be empty"),
    (lambda: pyllmops.quantize_int8(torch.tensor([[1.0, float("nan")]])), ValueError, "x contains NaN"),
    (lambda: pyllmops.quantize_int8(torch.tensor([[1.0, float("inf")]]), "tensor"), ValueError, "x contains NaN"),
    (lambda: pyllmops.quantize_int8(torch.randn(4, 4), "row"), ValueError, "granularity must be one of"),
    (lambda: pyllmops.quantize_int8(torch.randn(4, 4), scale=torch.ones(3, 1)), ValueError, "scale must have shape"),
    (lambda: pyllmops.quantize_int8(torch.randn(4, 4), scale=-torch.ones(4, 1)), ValueError, "scale must be > 0"),
    (lambda: pyllmops.quantize_int8(torch.randn(4, 4), symmetric=False, scale=torch.ones(4, 1)), ValueError, "zero_point is required"),
    (lambda: pyllmops.quantize_int8("x"), TypeError, "x must be a torch.Tensor"),
    (lambda: pyllmops.quantize_int8(torch.randn(4, 4), scale=torch.ones(4, 1, device="meta")), ValueError, "scale is on meta"),
])
def test_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


@pytest.mark.parametrize("backend", [b for b in cpu_backends("quantize_int8") if b != "torch"])
def test_nan_detected_by_every_backend(backend):
    x = torch.randn(3, 40)
    x[1, 17] = float("nan")
    with pyllmops.use_backend(backend), pytest.raises(ValueError, match="x contains NaN"):
        pyllmops.quantize_int8(x, "token")


def test_forced_backend_that_cannot_serve_raises():
    with pyllmops.use_backend("cuda"), pytest.raises(RuntimeError, match="forced backend"):
        pyllmops.quantize_int8(torch.randn(2, 2))
    with pytest.raises(ValueError, match="unknown backend"):
        with pyllmops.use_backend("tpu"):
            pass


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_per_token(backend, shape, dtype, seed):
    x = _input(shape, dtype, True).cuda()
    with pyllmops.use_backend(backend):
        got = pyllmops.quantize_int8(x, "token")
    ref = reference_quantize_int8(x.cpu(), "token")
    got = pyllmops.ops.Int8Quantized(got.values.cpu(), got.scale.cpu(), None)
    _check_against_reference(got, ref, x.cpu())
