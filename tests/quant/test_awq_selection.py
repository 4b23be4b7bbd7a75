"""AWQ's cross-validated selection (folds=): on synthetic layers where the right answer is known,
the scale search keeps s = 1 and the clip search keeps the full range when those are best on
rows the search did not fit, and still scales / clips where that carries over."""
import pytest
import torch

from pyllmops.quant.awq import awq_clip, awq_search_scale
from pyllmops.quant.rtn import rtn_int4

GS = 64


def _err(w_hat, w, x):
    return float((x @ w_hat.t() - x @ w.t()).pow(2).sum())


def _on_grid(n=48, k=160, bits=4):
    """A weight that RTN represents exactly (each (row, group) holds integers times a step, 0 and
    both ends of its range included; the last group of K = 160 at g64 is ragged)."""
    levels = 2**bits - 1
    q = torch.randint(0, levels + 1, (n, k)).float()
    q[:, ::GS] = 0
    q[:, 1::GS] = levels
    zero = torch.randint(1, levels, (n, 1)).float()
    return (q - zero) * (torch.rand(n, 1) * 0.01 + 0.001)


def _windows(n_windows, tokens, k):
    """Rows of n_windows calibration windows [n_windows * tokens, K] and each row's fold (window % 2)."""
    x = torch.randn(n_windows * tokens, k)
    folds = (torch.arange(n_windows * tokens) // tokens) % 2
    return x, folds


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("cv", [False, True])
def test_exact_weight_keeps_scale_one_and_full_range(bits, cv, seed):
    w = _on_grid(bits=bits)
    assert torch.allclose(rtn_int4(w, GS, bits).dequantize(torch.float32), w, rtol=0, atol=1e-7)
    x, folds = _windows(6, 64, w.shape[1])
    x[:, :8] *= 20  # salient channels: the search would scale them if that helped
    folds = folds if cv else None
    s = awq_search_scale(x, [w], GS, bits, folds=folds)
    assert torch.equal(s, torch.ones_like(s))  # alpha = 0 is exactly "no scaling"
    assert torch.equal(awq_clip(w, x, GS, bits, folds=folds), w)


def test_scales_that_do_not_carry_over_are_rejected(seed):
    """Each calibration window has its own few huge channels (like a window-specific outlier):
    fitted on all rows, the search scales them up; cross-validated, the scales fitted on one fold
    make the other fold worse, so it keeps s = 1, and on a fresh window that is the better choice."""
    n, k, tokens = 64, 256, 128
    w = torch.randn(n, k) * 0.05
    x, folds = _windows(6, tokens, k)
    for i, chans in enumerate(torch.randperm(k)[:48].reshape(6, 8)):
        x[i * tokens:(i + 1) * tokens, chans] *= 30
    fresh = torch.randn(tokens, k)
    fresh[:, torch.randperm(k)[:8]] *= 30

    def fresh_err(s):
        return _err(rtn_int4(w * s, GS, 4).dequantize(torch.float32) / s, w, fresh)

    fitted = awq_search_scale(x, [w], GS, 4)
    assert not torch.equal(fitted, torch.ones(k))  # plain search overfits the calibration windows
    cv = awq_search_scale(x, [w], GS, 4, folds=folds)
    assert torch.equal(cv, torch.ones(k))
    assert fresh_err(cv) < fresh_err(fitted)


@pytest.mark.parametrize("bits", [4, 3])
def test_scales_that_carry_over_are_kept(bits, seed):
    """The same few channels are salient in every window: cross-validation keeps AWQ's gain."""
    n, k = 96, 256
    w = torch.randn(n, k) * 0.05
    x, folds = _windows(8, 128, k)
    x = x @ torch.randn(k, k) / k**0.5 + 0.3 * x
    x[:, torch.randperm(k)[:4]] *= 25
    rtn = _err(rtn_int4(w, GS, bits).dequantize(torch.float32), w, x)
    s = awq_search_scale(x, [w], GS, bits, folds=folds)
    assert _err(rtn_int4(w * s, GS, bits).dequantize(torch.float32) / s, w, x) < 0.6 * rtn


def test_clipping_that_does_not_carry_over_is_rejected(seed):
    """One heavy weight per row in channel 0, whose input is non-zero only in the windows of fold
    0. Fitted on fold 1's rows, clipping that weight away costs nothing and every group clips it;
    scored on fold 0's rows that clip is a large error, so every group keeps its full range,
    which is right: on rows where channel 0 is active the unclipped weight is far better."""
    n, k, tokens, windows = 32, 64, 32, 6
    w = torch.randn(n, k) * 0.05
    w[:, 0] = 2.0
    x, folds = _windows(windows, tokens, k)
    x[folds == 1, 0] = 0.0
    x[folds == 0, 0] *= 3
    fit_on_fold_1 = awq_clip(w, x[folds == 1], GS, 4, max_tokens=10**6)
    assert bool((fit_on_fold_1[:, 0] < 1.8).all())  # the heavy weight is clipped where it is never used
    cv = awq_clip(w, x, GS, 4, max_tokens=10**6, folds=folds)
    assert torch.equal(cv, w)
    active = x[folds == 0]
    assert _err(rtn_int4(fit_on_fold_1, GS, 4).dequantize(torch.float32), w, active) > \
        10 * _err(rtn_int4(cv, GS, 4).dequantize(torch.float32), w, active)


def test_cross_validation_only_restores_full_ranges(seed):
    """Every (row, group) of the cross-validated clip is either the plain search's clip or the
    unclipped weight."""
    n, k = 48, 160
    w = torch.randn(n, k) * 0.05
    w[:, torch.randperm(k)[:6]] *= 6
    x, folds = _windows(8, 32, k)
    x = x * (torch.rand(8, k) < 0.5).repeat_interleave(32, 0)  # each window reads half the channels
    plain = awq_clip(w, x, GS, 4, max_tokens=10**6)
    cv = awq_clip(w, x, GS, 4, max_tokens=10**6, folds=folds)
    pad = (0, -k % GS)
    groups = [torch.nn.functional.pad(t, pad).reshape(n, -1, GS) for t in (plain, cv, w)]
    same_as_plain = (groups[1] == groups[0]).all(-1)
    full_range = (groups[1] == groups[2]).all(-1)
    assert bool((same_as_plain | full_range).all())
    assert int((full_range & ~(groups[0] == groups[2]).all(-1)).sum()) > 0  # some clips were rejected


def test_bad_folds(seed):
    w, x = torch.randn(8, 64), torch.randn(32, 64)
    with pytest.raises(ValueError, match="folds must have shape"):
        awq_search_scale(x, [w], GS, 4, folds=torch.zeros(31, dtype=torch.long))
    with pytest.raises(ValueError, match="folds must have shape"):
        awq_clip(w, x, GS, 4, folds=torch.zeros(5, dtype=torch.long))
