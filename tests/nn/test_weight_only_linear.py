"""WeightOnlyLinear: forward equals x @ dequantized W^T (+ bias), its input gradient equals the
dequantized-weight reference (so LoRA can train on top), act-order becomes a permutation."""
import pytest
import torch
from torch import nn

from pyllmops.nn import WeightOnlyLinear
from pyllmops.quant.gptq import Hessian, gptq_int4
from pyllmops.quant.packing import Int4Weight
from tests import reference
from tests.support import compiled


def _oracle_weight(layer: WeightOnlyLinear) -> torch.Tensor:
    """The layer's W [N, K] float64 from its stored buffers by the format's definition
    (tests/reference.py), not by the package's dequantization."""
    assert layer.perm is None
    if layer.bits == 8:
        return layer.qweight.double() * layer.scales.double()[:, None]
    assert layer.g_idx is None
    return reference.dequantize_int4(layer.qweight, layer.scales, layer.zeros, layer.group_size)


@pytest.mark.parametrize("bits, group_size", [(4, 128), (3, 32), (4, -1), (8, -1)])
@pytest.mark.parametrize("bias", [False, True])
def test_forward_and_input_gradient(bits, group_size, bias, seed):
    lin = nn.Linear(576, 40, bias=bias)  # K = 576: ragged last group at 128
    q = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=group_size)
    w = _oracle_weight(q)
    x = torch.randn(2, 3, 576, dtype=torch.float64, requires_grad=True)
    y = q(x.float())
    assert y.shape == (2, 3, 40) and not any(p.requires_grad for p in q.parameters())
    ref = x.detach() @ w.t() + (lin.bias.double() if bias else 0)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    torch.testing.assert_close(x.grad, grad.double() @ w, rtol=1e-5, atol=1e-5)
    # the quantized layer stays close to the float one
    err = (w.float() - lin.weight.detach()).abs().max()
    assert float(err) < float(lin.weight.detach().abs().max()) / (2 ** (bits - 2))


def test_lora_trains_on_top(seed):
    base = WeightOnlyLinear.from_linear(nn.Linear(64, 32))
    a, b = nn.Parameter(torch.randn(8, 64) * 0.01), nn.Parameter(torch.zeros(32, 8))
    x, target = torch.randn(16, 64), torch.randn(16, 32)
    opt = torch.optim.SGD([a, b], lr=0.1)
    losses = []
    for _ in range(20):
        loss = (base(x) + x @ a.t() @ b.t() - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_act_order_becomes_permutation(seed):
    w, x = torch.randn(32, 256), torch.randn(512, 256) * torch.rand(256) * 3
    h = Hessian(256)
    h.add(x)
    q = gptq_int4(w, h.matrix, 64, act_order=True)
    layer = WeightOnlyLinear(q)
    assert layer.perm is not None and layer.g_idx is None  # kernels see contiguous groups
    xs = torch.randn(3, 256)
    torch.testing.assert_close(layer(xs), xs @ q.dequantize().t(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.dequantized_weight(), q.dequantize())


def test_half_precision_module(seed):
    layer = WeightOnlyLinear.from_linear(nn.Linear(128, 64)).to(torch.bfloat16)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = x.double() @ layer.dequantized_weight(torch.float64).t() + layer.bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=2e-2)


def test_compiles(seed):
    layer = WeightOnlyLinear.from_linear(nn.Linear(128, 64))
    x = torch.randn(3, 128)
    ref = x.double() @ _oracle_weight(layer).t() + layer.bias.double()
    torch.testing.assert_close(compiled(layer)(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_bad_weight():
    with pytest.raises(TypeError, match="Int4Weight or Int8Weight"):
        WeightOnlyLinear(torch.zeros(4, 4))
    bad = Int4Weight(torch.zeros(4, 32, dtype=torch.uint8), torch.ones(4, 3), torch.zeros(4, 3, dtype=torch.uint8), 32)
    with pytest.raises(ValueError, match=r"scales must have shape \[N, G\] = \[4, 2\]"):
        WeightOnlyLinear(bad)


@pytest.mark.parametrize("bits, group_size", [(4, 128), (4, 64), (8, -1)])
@pytest.mark.parametrize("m", [1, 5, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_forward_matches_reference(bits, group_size, m, dtype, seed):
    """Without autograd on CPU, forward calls the C++ kernel directly for decode M (<= 16) and the
    op front door beyond: both equal x @ dequantized W^T + bias."""
    lin = nn.Linear(256, 48)
    q = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=group_size)
    x = torch.randn(m, 256, dtype=dtype)
    with torch.no_grad():
        y = q(x)
    ref = x.double() @ q.dequantized_weight(torch.float64).t() + lin.bias.detach().double()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


@pytest.mark.parametrize("bits", [4, 8])
def test_decode_path_follows_its_buffers(bits, seed):
    """forward's decode path settles its checks on the buffers once per set of buffer objects:
    a replaced buffer (another dtype, new values) is seen, and the output stays the reference's."""
    lin = nn.Linear(256, 48, bias=False)
    q = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=128)
    x = torch.randn(1, 1, 256)

    def check():
        with torch.no_grad():
            y = q(x)
        ref = x.double() @ q.dequantized_weight(torch.float64).t()
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))

    check()
    q.scales = q.scales * 2  # a new float32 tensor: new values through the same fast path
    check()
    q.scales = q.scales.half()  # the kernel needs float32 scales: another path, same result
    check()
    q.scales.mul_(0.5)  # in place: the same object, read at call time
    check()


@pytest.mark.parametrize("bits, group_size", [(4, 128), (4, 64), (8, -1)])
def test_prefill_dtype_bfloat16(bits, group_size, seed):
    """prefill_dtype=bfloat16: a prefill-sized call (more rows than the decode kernels take) gets x
    and W rounded to bfloat16, float32 sums and a bfloat16-rounded output (on a CPU without bf16
    GEMMs: the exact weight); decode-sized calls stay bit for bit the exact path."""
    from pyllmops.ops import weight_only as ops

    lin = nn.Linear(576, 96, bias=False)
    q = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=group_size)
    x = torch.randn(2, 20, 576)  # 40 rows: past both decode limits (32, 16)
    with torch.no_grad():
        exact_decode = q(x[0, :3])
        q.prefill_dtype = torch.bfloat16
        assert "prefill_dtype=torch.bfloat16" in repr(q)
        y, decode = q(x), q(x[0, :3])
    assert y.dtype == torch.float32 and y.shape == (2, 20, 96)
    assert torch.equal(decode, exact_decode)
    assert torch.equal(y.bfloat16().float(), y)  # rounded to bfloat16
    w = q.dequantized_weight(torch.float64)
    if ops._cpu_bf16_gemm():
        w = w.bfloat16().double()
    ref = x.bfloat16().double() @ w.t()
    assert float(((y.double() - ref).abs() - 2 ** -8 * ref.abs()).max()) <= 1e-5 * float(ref.abs().max())
    q.prefill_dtype = None
    with torch.no_grad():
        torch.testing.assert_close(q(x).double(), x.double() @ q.dequantized_weight(torch.float64).t(),
                                   rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_set_prefill_dtype():
    from pyllmops.nn import set_prefill_dtype

    model = nn.Sequential(WeightOnlyLinear.from_linear(nn.Linear(64, 32)), nn.ReLU(),
                          WeightOnlyLinear.from_linear(nn.Linear(32, 16), bits=8))
    assert set_prefill_dtype(model, torch.bfloat16) == 2
    assert model[0].prefill_dtype == model[2].prefill_dtype == torch.bfloat16
    assert set_prefill_dtype(model, None) == 2 and model[0].prefill_dtype is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        set_prefill_dtype(model, torch.float16)
    with pytest.raises(ValueError, match="prefill_dtype must be one of"):
        model[0].prefill_dtype = "bfloat16"
    with pytest.raises(ValueError, match="no WeightOnlyLinear layer"):
        set_prefill_dtype(nn.Sequential(nn.Linear(4, 4)), torch.bfloat16)


@pytest.mark.parametrize("bits", [4, 8])
def test_prefill_inside_and_outside_inference_mode(bits, seed):
    """The prefill path reuses its weight buffers across calls: a first call inside
    torch.inference_mode and the next under no_grad (or with autograd) both give the reference."""
    from pyllmops.ops import weight_only as ops

    ops._buffers.__dict__.clear()  # the first buffer is made inside inference mode below
    lin = nn.Linear(256, 48, bias=False)
    q = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=128)
    x = torch.randn(40, 256)
    ref = x.double() @ q.dequantized_weight(torch.float64).t()
    for dtype in (None, torch.bfloat16):
        q.prefill_dtype = dtype
        tol = 1e-5 if dtype is None else 2e-2
        with torch.inference_mode():
            a = q(x)
        with torch.no_grad():
            b = q(x)
        c = q(x.requires_grad_(dtype is None))
        for y in (a, b, c):
            torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))
