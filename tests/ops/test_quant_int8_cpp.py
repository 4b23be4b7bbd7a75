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
