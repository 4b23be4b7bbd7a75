"""RTN, GPTQ and AWQ on synthetic layers whose inputs have outlier channels (as LLM activations
do): the calibrated methods must cut the layer's output error well below RTN's."""
import pytest
import torch

from pyllmops.quant.awq import awq_clip, awq_search_scale
from pyllmops.quant.gptq import Hessian, gptq_int4
from pyllmops.quant.rtn import rtn_int4, rtn_int8


def _layer(n=96, k=256, tokens=1024, outliers=None):
    """Weight and inputs like a transformer layer's: strongly correlated features (low rank plus
    noise) and a few large input channels (`outliers`, default 4 random ones)."""
    w = torch.randn(n, k) * 0.05
    x = torch.randn(tokens, 32) @ torch.randn(32, k) / 32**0.5 + 0.3 * torch.randn(tokens, k)
    x[:, torch.randperm(k)[:4] if outliers is None else outliers] *= 25
    return w, x


def _out_err(w_hat, w, x):
    return float((x @ w_hat.t() - x @ w.t()).pow(2).mean())


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [4, 3])
def test_rtn_error_bound(symmetric, bits, seed):
    w, _ = _layer()
    q = rtn_int4(w, 64, bits, symmetric)
    step = q.scales.repeat_interleave(64, dim=1)
    assert int(q.values().max()) <= 2**bits - 1
    assert bool(((q.dequantize() - w).abs() <= step * (1 + 1e-5)).all())
    if symmetric:
        assert bool((q.zeros == 2 ** (bits - 1)).all())


def test_rtn_int8(seed):
    w, _ = _layer()
    q = rtn_int8(w)
    assert q.qweight.dtype == torch.int8 and q.scales.shape == (96,)
    assert bool(((q.dequantize() - w).abs() <= q.scales[:, None] * 0.5 + 1e-7).all())


def test_hessian_accumulates_2xxt_over_tokens(seed):
    x = torch.randn(3, 50, 16)
    h = Hessian(16)
    for chunk in x:
        h.add(chunk)
    flat = x.reshape(-1, 16).double()
    torch.testing.assert_close(h.matrix, 2 * flat.t() @ flat / 150)


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_beats_rtn(group_size, bits, seed):
    """GPTQ compensates each column's rounding error on the columns after it, so an outlier input
    channel among the last few columns has almost nothing to absorb its error, and without
    act-order GPTQ is then little better than RTN on the channels that dominate the output error
    (the 1-in-2000 failure of the former 0.75 bound: outliers at columns 249 and 252 of 256).
    The bound without act-order is for outliers with >= 32 later columns; act-order quantizes the
    large channels first and is held to its bound with outliers anywhere, the last columns
    included. Both bounds sit about 2x above the worst ratio seen over 60-150 seeds."""
    k = 256
    w, x = _layer(outliers=torch.randperm(k - 32)[:4])
    rtn, gptq = _rtn_and_gptq(w, x, group_size, bits)
    assert gptq.g_idx is None
    err = _out_err(gptq.dequantize(), w, x)
    assert err < 0.5 * rtn, (err, rtn)
    for outliers in (None, k - 1 - torch.randperm(8)[:4]):  # anywhere; among the last 8 columns
        w, x = _layer(outliers=outliers)
        rtn, _ = _rtn_and_gptq(w, x, group_size, bits, gptq=False)
        ordered = gptq_int4(w, _hessian(x), group_size, bits, act_order=True)
        assert ordered.g_idx is not None and int(ordered.g_idx.max()) == -(-k // group_size) - 1
        assert _out_err(ordered.dequantize(), w, x) < 0.25 * rtn


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_static_groups(group_size, bits, seed):
    """act_order with static_groups: the visiting order of act-order, the contiguous groups of the
    unpermuted weight (no g_idx) with RTN's parameters on the original weights; held to the
    act-order bound (worst ratio over 40 seeds: 0.12), outliers anywhere or among the last columns."""
    k = 256
    for outliers in (None, k - 1 - torch.randperm(8)[:4]):
        w, x = _layer(outliers=outliers)
        rtn = rtn_int4(w, group_size, bits)
        q = gptq_int4(w, _hessian(x), group_size, bits, act_order=True, static_groups=True)
        assert q.g_idx is None
        assert torch.equal(q.scales, rtn.scales) and torch.equal(q.zeros, rtn.zeros)
        assert _out_err(q.dequantize(), w, x) < 0.25 * _out_err(rtn.dequantize(), w, x)
    # without act_order there is nothing to keep static: the plain GPTQ result
    plain = gptq_int4(w, _hessian(x), group_size, bits)
    assert torch.equal(gptq_int4(w, _hessian(x), group_size, bits, static_groups=True).values(), plain.values())


def _hessian(x):
    h = Hessian(x.shape[1])
    h.add(x)
    return h.matrix


def _rtn_and_gptq(w, x, group_size, bits, gptq=True):
    rtn = _out_err(rtn_int4(w, group_size, bits).dequantize(), w, x)
    return rtn, gptq_int4(w, _hessian(x), group_size, bits) if gptq else None


def test_gptq_ragged_and_dead_inputs(seed):
    w, x = _layer(n=16, k=160)
    x[:, 5] = 0  # an input channel that never fires
    h = Hessian(160)
    h.add(x)
    q = gptq_int4(w, h.matrix, 64)  # groups 64, 64, 32
    assert q.scales.shape == (16, 3)
    assert _out_err(q.dequantize(), w, x) < _out_err(rtn_int4(w, 64).dequantize(), w, x)
    with pytest.raises(ValueError, match="hessian must have shape"):
        gptq_int4(w, h.matrix[:10, :10])


@pytest.mark.parametrize("bits", [4, 3])
def test_awq_scale_beats_rtn(bits, seed):
    w, x = _layer()
    # AWQ's regime: salient input channels carry large activations and ordinary weights
    rtn = _out_err(rtn_int4(w, 128, bits).dequantize(), w, x)
    s = awq_search_scale(x, [w], 128, bits)
    assert s.shape == (256,) and bool((s > 0).all())
    awq = rtn_int4(w * s, 128, bits).dequantize() / s
    err = _out_err(awq, w, x)
    assert err < 0.6 * rtn, (err, rtn)
    clipped = awq_clip(w * s, x / s, 128, bits)
    err_clip = _out_err(rtn_int4(clipped, 128, bits).dequantize() / s, w, x)
    assert err_clip <= err * 1.05


@pytest.mark.parametrize("bits", [4, 3])
def test_group_params_mse_never_worse_than_full_range(bits, seed):
    from pyllmops.quant.rtn import group_params, group_params_mse, quantize_with

    w = torch.randn(64, 128) * torch.rand(64, 1)  # Gaussian groups: the extreme values are rare

    def err(s, z):
        return ((quantize_with(w, s, z, bits) - z[:, None]) * s[:, None] - w).abs().pow(2.4).sum(1)

    full, mse = err(*group_params(w, bits)), err(*group_params_mse(w, bits))
    assert bool((mse <= full * (1 + 1e-6)).all())  # the full range is one of the candidates
    assert float(mse.sum()) < 0.95 * float(full.sum())
