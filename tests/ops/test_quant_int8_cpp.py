"""The C++ quantize_int8 backend is bit-identical to the torch fallback (test_quant_int8.py checks
both against the float64 reference)."""
import pytest
import torch

import pyllmops
from pyllmops.ops import available_backends

pytestmark = pytest.mark.skipif("cpp" not in available_backends("quantize_int8", "cpu"), reason="pyllmops._C not built")


def _both(x, *args, **kw):
    with pyllmops.use_backend("cpp"):
        a = pyllmops.quantize_int8(x, *args, **kw)
    with pyllmops.use_backend("torch"):
        b = pyllmops.quantize_int8(x, *args, **kw)
    return a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (65, 4100)])
def test_bit_identical_to_torch(dtype, shape, seed):
    m, n = shape
    x = (torch.randn(m, n + 3) * 5)[:, 1:1 + n].to(dtype)  # strided rows, odd widths (masked tails)
    a, b = _both(x, "token")
    assert torch.equal(a.values, b.values) and torch.equal(a.scale, b.scale)
    for scale in (torch.tensor([0.02]), torch.rand(m, 1) * 0.05 + 1e-3):
        gran = "tensor" if scale.dim() == 1 else "token"
        a, b = _both(x, gran, scale=scale)
        assert torch.equal(a.values, b.values) and torch.equal(a.scale, b.scale)


def test_nan_row_is_reported():
    x = torch.randn(4, 40)
    x[2, 33] = float("nan")
    with pyllmops.use_backend("cpp"), pytest.raises(ValueError, match="x contains NaN"):
        pyllmops.quantize_int8(x, "token")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_scale_nonfinite_x_is_reported_by_the_kernel(bad, dtype):
    # The static path has no dynamic scale to reveal bad input: the kernel's flag must.
    x = torch.randn(5, 37).to(dtype)
    x[3, 36] = bad  # in the masked tail of the last 16-wide chunk
    with pyllmops.use_backend("cpp"), pytest.raises(ValueError, match="x contains NaN or inf"):
        pyllmops.quantize_int8(x, "tensor", scale=torch.tensor([0.02]))
    with pyllmops.use_backend("cpp"), pytest.raises(ValueError, match="x contains NaN or inf"):
        pyllmops.quantize_int8(x, "token")


def test_static_scale_output_does_not_alias_the_input():
    scale = torch.tensor([0.05])
    with pyllmops.use_backend("cpp"):
        q = pyllmops.quantize_int8(torch.randn(3, 8), "tensor", scale=scale)
    assert torch.equal(q.scale, scale) and q.scale.data_ptr() != scale.data_ptr()


@pytest.mark.parametrize("granularity", ["tensor", "token"])
def test_bit_identical_next_to_rounding_ties(granularity, seed):
    # Values at and a few ulps around (k + 0.5) * scale must round exactly as torch's x / scale
    # (any reciprocal-multiply shortcut in the kernel fails here).
    scale = torch.rand(1) * 0.1 + 1e-3
    k = torch.arange(-130, 130, dtype=torch.float32) + 0.5
    base = k * scale
    x = torch.cat([base])
    for steps in (1, 2, 3):
        up, down = base.clone(), base.clone()
        for _ in range(steps):
            up, down = torch.nextafter(up, torch.tensor(float("inf"))), torch.nextafter(down, torch.tensor(-float("inf")))
        x = torch.cat([x, up, down])
    x = torch.cat([x, torch.randn(4000) * 127 * scale])
    x = x[torch.randperm(x.numel())][: x.numel() // 64 * 64].reshape(64, -1)
    if granularity == "token":  # dynamic: each row's own absmax scale, ties relative to it
        a, b = _both(x, "token")
    else:
        a, b = _both(x, "tensor", scale=scale)
    assert torch.equal(a.values, b.values) and torch.equal(a.scale, b.scale)
    # a subnormal static scale (its reciprocal overflows)
    tiny = torch.tensor([1e-39])
    a, b = _both(x * 1e-37, "tensor", scale=tiny)
    assert torch.equal(a.values, b.values)
