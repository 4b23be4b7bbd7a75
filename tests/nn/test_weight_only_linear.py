"""WeightOnlyLinear: forward equals x @ dequantized W^T (+ bias), its input gradient equals the
dequantized-weight reference (so LoRA can train on top), act-order becomes a permutation."""
import pickle

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
    # against float64: float32 sums (and the digit kernel's x to 2^-24 of its block's largest value)
    # stay within 2^-21 of sum |x w| per output (a fixed atol of 1e-5 failed at
    # PYLLMOPS_TEST_SEED=3310830843: 1.05e-5 on outputs up to ~20)
    w64 = q.dequantize(torch.float64)
    err = (layer(xs).double() - xs.double() @ w64.t()).abs() - 2 ** -21 * (xs.double().abs() @ w64.abs().t())
    assert float(err.max()) <= 0
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


@pytest.mark.parametrize("bits, group_size", [(4, 128), (4, 64), (4, -1), (8, -1)])
def test_compute_dtype_bfloat16(bits, group_size, seed):
    """compute_dtype=bfloat16: a prefill-sized call (more rows than the decode kernels take) gets x
    and W rounded to bfloat16, float32 sums and a bfloat16-rounded output (on a CPU without bf16
    GEMMs: the exact weight); decode-sized calls (1-32 rows: batched decode) x rounded to bfloat16
    against the exact weight, float32 sums, whichever kernel runs them (vdpbf16ps from 2 rows with
    AVX512_BF16 and 128-channel groups, the exact kernel on the rounded x otherwise), the same values
    under autograd, and a row alone as in a batch."""
    from pyllmops.ops import weight_only as ops

    lin = nn.Linear(576, 96, bias=False)
    q = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=group_size)
    x = torch.randn(2, 20, 576)  # 40 rows: past both decode limits (32, 16)
    x[0, 1, :5] = torch.tensor([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, -3.0e30, 1e-39, 2.0 ** -133])  # ties, large, denormals
    w_exact = q.dequantized_weight(torch.float64)
    q.compute_dtype = torch.bfloat16
    assert "compute_dtype=torch.bfloat16" in repr(q)
    with torch.no_grad():
        y, batch, alone = q(x), q(x[0, :8]), q(x[0, 1:2])
    assert y.dtype == torch.float32 and y.shape == (2, 20, 96)
    assert torch.equal(y.bfloat16().float(), y)  # rounded to bfloat16
    w = w_exact.bfloat16().double() if ops.cpu_bf16_native() else w_exact
    ref = x.bfloat16().double() @ w.t()
    assert float(((y.double() - ref).abs() - 2 ** -8 * ref.abs()).max()) <= 1e-5 * float(ref.abs().max())
    # decode-sized: the exact weight; float32 sums of exact products (the exact kernel at one row:
    # x to within 2^-24 of its block's largest value), |error| <= 2^-21 max|x| sum|w|
    xr = x[0, :8].bfloat16().double()
    ref8 = xr @ w_exact.t()
    size8 = xr.abs().amax(1, keepdim=True) * w_exact.abs().sum(1) * 2
    assert float(((batch.double() - ref8).abs() - 2 ** -22 * size8).max()) <= 0
    assert not torch.equal(batch, x[0, :8] @ w_exact.float().t())  # x was rounded
    assert float(((alone.double() - ref8[1:2]).abs() - 2 ** -22 * size8[1:2]).max()) <= 0
    xg = x[0, :8].clone().requires_grad_()
    graded = q(xg)
    graded.sum().backward()
    assert float(((graded.detach().double() - ref8).abs() - 2 ** -22 * size8).max()) <= 0
    # straight through the rounding (the gradient itself passes the cast: bfloat16 like it), on top
    # of float32 sums over the 96 outputs (a column summing near 0 is within 2^-18 sum|w| of it)
    wf = q.dequantized_weight(torch.float64)
    err = (xg.grad.double() - wf.sum(0)).abs() - 2 ** -8 * wf.sum(0).abs() - 2 ** -18 * wf.abs().sum(0)
    assert float(err.max()) <= 0
    q.compute_dtype = None
    with torch.no_grad():
        torch.testing.assert_close(q(x).double(), x.double() @ w_exact.t(), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 13, 16])
def test_bf16_decode_kernels(bits, rows, seed):
    """The C++ bf16 kernels behind compute_dtype against float64 on bf16-rounded x and the exact
    weight: every row count of a decode tile (1-8) and past it, K with a short last block (576 =
    4 x 128 + 64, 544, 96) and without (1024), per-group and per-channel scales, zero points at both
    ends of 4 bits and past them (16, 255: the uint8 range), a NaN / inf in a row (that row's outputs not finite, the others unchanged)."""
    from pyllmops.ops import weight_only as ops

    for k, gs in [(576, 128), (544, 128), (1024, 256), (96, -1), (576, 64)]:
        if bits == 8 and gs != 128:
            continue
        lin = nn.Linear(k, 40, bias=False)
        q = WeightOnlyLinear.from_linear(lin, bits=bits, group_size=gs)
        if bits == 4:
            q.zeros[0] = 0
            q.zeros[1] = 15
            q.zeros[2] = 16  # GPTQ's legacy format (stored zero + 1) reaches 16
            q.zeros[3] = 255
        x = torch.randn(rows, k) * torch.logspace(-3, 3, rows)[:, None]
        out = torch.empty(rows, 40)
        if bits == 4:
            ops.cpp_w4_decode(x, q.qweight, q.scales, q.zeros, k if gs == -1 else gs, out, True)
        else:
            ops.cpp_w8_decode(x, q.qweight, q.scales, out, True)
        w = q.dequantized_weight(torch.float64)
        xr = x.bfloat16().double()
        err = (out.double() - xr @ w.t()).abs() - 2 ** -21 * xr.abs().amax(1, keepdim=True) * w.abs().sum(1)
        assert float(err.max()) <= 0, (k, gs)
        out_before = out.clone()
        x[rows // 2, 3] = float("nan") if rows % 2 else float("inf")
        if bits == 4:
            ops.cpp_w4_decode(x, q.qweight, q.scales, q.zeros, k if gs == -1 else gs, out, True)
        else:
            ops.cpp_w8_decode(x, q.qweight, q.scales, out, True)
        bad = rows // 2  # its outputs not finite (inf x 0 is NaN: the row is NaN or inf), the others as before
        assert not out[bad].isfinite().any(), (k, gs)
        rest = torch.arange(rows) != bad
        assert torch.equal(out[rest], out_before[rest]), (k, gs)


def test_set_compute_dtype():
    from pyllmops.nn import set_compute_dtype

    model = nn.Sequential(WeightOnlyLinear.from_linear(nn.Linear(64, 32)), nn.ReLU(),
                          WeightOnlyLinear.from_linear(nn.Linear(32, 16), bits=8))
    assert set_compute_dtype(model, torch.bfloat16) == 2
    assert model[0].compute_dtype == model[2].compute_dtype == torch.bfloat16
    assert set_compute_dtype(model, None) == 2 and model[0].compute_dtype is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        set_compute_dtype(model, torch.float16)
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        model[0].compute_dtype = "bfloat16"
    with pytest.raises(ValueError, match="no WeightOnlyLinear layer"):
        set_compute_dtype(nn.Sequential(nn.Linear(4, 4)), torch.bfloat16)
    # a layer pickled when the attribute was prefill_dtype keeps its setting
    set_compute_dtype(model, torch.bfloat16)
    state = dict(model[0].__dict__)
    state["_prefill_dtype"] = state.pop("_compute_dtype")
    old = WeightOnlyLinear.__new__(WeightOnlyLinear)
    old.__setstate__(state)
    assert old.compute_dtype == torch.bfloat16 and "_prefill_dtype" not in old.__dict__
    assert pickle.loads(pickle.dumps(model))[2].compute_dtype == torch.bfloat16


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
        q.compute_dtype = dtype
        tol = 1e-5 if dtype is None else 2e-2
        with torch.inference_mode():
            a = q(x)
        with torch.no_grad():
            b = q(x)
        c = q(x.requires_grad_(dtype is None))
        for y in (a, b, c):
            torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))
