"""GPTQ's Hessian token weighting (pyllmops.quant.gptq, weighting="sink"): the formula against a
direct float64 computation, and the failure it exists for — a first token with massive
activations rules the paper's uniform H = 2 X X^T, so GPTQ fits that token and loses the others."""
import pytest
import torch

from pyllmops.quant.gptq import Hessian, gptq_int4
from pyllmops.quant.rtn import rtn_int4


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5])
def test_sink_hessian_matches_direct_formula(share, seed):
    x = torch.randn(3, 40, 24) * torch.rand(3, 40, 1) * 10  # tokens of very different norms
    h = Hessian(24, weighting="sink", sink_share=share)
    h.add(x[:2])
    h.add(x[2:])  # chunked accumulation equals one pass
    xn = (x / x.norm(dim=-1, keepdim=True)).double()
    c = torch.ones(3, 40, dtype=torch.float64)
    c[:, 0] = share / (1 - share) * 39 if share else 1.0  # 0: the first token counts like the others
    expected = 2 * torch.einsum("st,sti,stj->ij", c, xn, xn) / c.sum()
    torch.testing.assert_close(h.matrix, expected)
    assert h.tokens == 120


def test_sink_hessian_2d_input_has_no_sequences(seed):
    x = torch.randn(50, 16) * torch.rand(50, 1)
    h = Hessian(16, weighting="sink", sink_share=0.5)
    h.add(x)
    xn = (x / x.norm(dim=-1, keepdim=True)).double()
    torch.testing.assert_close(h.matrix, 2 * xn.t() @ xn / 50)


def test_hessian_rejects_bad_arguments():
    with pytest.raises(ValueError, match="weighting"):
        Hessian(8, weighting="tokens")
    with pytest.raises(ValueError, match="sink_share"):
        Hessian(8, weighting="sink", sink_share=1.0)
    with pytest.raises(ValueError, match="8 features"):
        Hessian(8).add(torch.randn(4, 9))


def _relative_errors(q, w, x):
    """Mean relative output error on the first token and on the others, x [S, T, K]."""
    e = (x @ (w - q.dequantize()).t()).norm(dim=-1) / (x @ w.t()).norm(dim=-1)
    return float(e[:, 0].mean()), float(e[:, 1:].mean())


def test_sink_weighting_is_not_ruled_by_a_massive_first_token(seed):
    k, n, t = 128, 64, 256
    mix = torch.randn(k, k) / k**0.5 + torch.eye(k)

    def sample(sequences):
        x = torch.randn(sequences, t, k) @ mix
        x[:, 0] *= 30  # the first token's inputs are 30x the others' (as in SmolLM2's early down_proj)
        return x

    w, calib, held = torch.randn(n, k), sample(8), sample(32)
    rtn = _relative_errors(rtn_int4(w, 32), w, held)
    errs = {}
    for weighting in ("uniform", "sink"):
        h = Hessian(k, weighting=weighting)
        h.add(calib)
        errs[weighting] = _relative_errors(gptq_int4(w, h.matrix, 32), w, held)
    # uniform: the first token holds ~80% of H; the other tokens get a worse fit than with "sink"
    assert errs["sink"][1] < 0.95 * errs["uniform"][1], errs
    assert errs["sink"][1] < 0.85 * rtn[1] and errs["sink"][0] < rtn[0], (errs, rtn)
