import pytest
import torch

import pyllmops
from pyllmops.ops.quant_int4 import reference_quantize_int4_grouped
from tests.support import compiled


@pytest.mark.parametrize("shape, group_size", [((1, 32), 32), ((3, 64), 32), ((33, 256), 128), ((7, 96), -1), ((4097, 64), 64)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_against_reference(shape, group_size, symmetric, bits, dtype, seed):
    w = (torch.randn(shape) * 0.05 + (0 if symmetric else 0.01)).to(dtype)
    got = pyllmops.quantize_int4_grouped(w, group_size, symmetric, bits)
    ref = reference_quantize_int4_grouped(w, group_size, symmetric, bits)
    groups = shape[1] // (shape[1] if group_size == -1 else group_size)
    assert got.values.shape == shape and got.scales.shape == (shape[0], groups) and got.zeros.shape == (shape[0], groups)
    torch.testing.assert_close(got.scales, ref.scales, rtol=1e-6, atol=0)
    assert int(got.values.max()) <= 2**bits - 1
    # float32 vs float64 can fall on different sides of a .5 tie, for a value and for its group's
    # zero point: compare the zero-centred values, which may differ by one step.
    gsz = shape[1] // groups
    centred = lambda r: r.values.int() - r.zeros.int().repeat_interleave(gsz, dim=1)  # noqa: E731
    assert int((centred(got) - centred(ref)).abs().max()) <= 1
    assert int((got.zeros.int() - ref.zeros.int()).abs().max()) <= 1
    deq = pyllmops.dequantize_int4_grouped(got.values, got.scales, got.zeros, torch.float64)
    step = got.scales.double().repeat_interleave(shape[1] // groups, dim=1)
    err = (deq - w.double()).abs()
    inside = (got.values > 0) & (got.values < 2**bits - 1)
    # Half a step wherever the value was not clamped (plus float32 noise in w / scale, up to
    # ~2**bits ulps of a step); the rounded zero point can push a range
    # end by up to half a step more, so at most one step at the clamped ends.
    assert bool((err[inside] <= step[inside] * (0.5 + 1e-4)).all())
    assert bool((err <= step * (1 + 1e-4)).all())


def test_noncontiguous_input(seed):
    w = torch.randn(64, 16).t()  # [16, 64], non-contiguous
    got = pyllmops.quantize_int4_grouped(w, 32)
    ref = reference_quantize_int4_grouped(w.contiguous(), 32)
    torch.testing.assert_close(got.scales, ref.scales, rtol=1e-6, atol=0)


def test_compiles(seed):
    f = compiled(lambda w: pyllmops.quantize_int4_grouped(w, 32).scales * 2)
    w = torch.randn(4, 64)
    torch.testing.assert_close(f(w), reference_quantize_int4_grouped(w, 32).scales * 2, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda: pyllmops.quantize_int4_grouped(torch.randn(4, 100), 32), ValueError, "group_size must be -1 or a positive divisor"),
    (lambda: pyllmops.quantize_int4_grouped(torch.randn(4, 64), 0), ValueError, "group_size"),
    (lambda: pyllmops.quantize_int4_grouped(torch.randn(4, 64), 32.0), TypeError, "group_size must be an int"),
    (lambda: pyllmops.quantize_int4_grouped(torch.randn(4, 64), 32, bits=9), ValueError, "bits must be in"),
    (lambda: pyllmops.quantize_int4_grouped(torch.randn(4, 64).half().int(), 32), TypeError, "w must have dtype"),
    (lambda: pyllmops.quantize_int4_grouped(torch.full((2, 32), float("nan")), 32), ValueError, "w contains NaN"),
    (lambda: pyllmops.dequantize_int4_grouped(torch.zeros(4, 64, dtype=torch.uint8), torch.ones(4, 3), torch.zeros(4, 3)), ValueError, "scales shape"),
])
def test_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()
