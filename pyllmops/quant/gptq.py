"""GPTQ (Frantar et al., 2022): quantize a linear layer's weight column by column, pushing each
column's rounding error onto the columns not yet quantized, weighted by the inverse Hessian of
the layer's reconstruction loss ||W X - Q X||^2.

    h = Hessian(K); h.add(x [..., K]) for each calibration batch     (H = 2 X X^T / tokens)
    gptq_int4(w [N, K], h.matrix, group_size=128, bits=4, symmetric=False, act_order=False,
              block_size=128, damp=0.01) -> Int4Weight

Steps: dead inputs (H_kk = 0) are zeroed; with act_order the columns are visited by decreasing
H_kk and the resulting group of each input channel is recorded in g_idx (GPTQ's desc_act); H is
damped by `damp` x mean(diag H); U = upper Cholesky factor of H^-1; columns are processed in
blocks of `block_size` with the error propagated inside the block immediately and to the rest of
the matrix once per block (the "lazy batch" update). A group's scale/zero are fixed from the
current (error-updated) weights when its first column is reached. The last group may be ragged.

Which tokens the Hessian weighs (`Hessian(..., weighting=)`): "uniform" is the paper's
H = 2 X X^T / tokens; "sink" (the default of w4a16-gptq, see token_weights.py) weighs every token's
input at unit norm and gives the first position of each sequence, the attention sink, a fixed
share. Uniform weighting lets a few tokens with massive inputs rule the loss, and GPTQ then fits
them at the expense of every other token; the measurements are in docs/quality.md.
"""
from __future__ import annotations

import torch

from pyllmops.quant.packing import Int4Weight
from pyllmops.quant.rtn import group_params, group_params_mse, quantize_with
from pyllmops.quant.token_weights import check_sink_share, token_weights


WEIGHTINGS = ("uniform", "sink")


class Hessian:
    """Running H = 2 sum_t c_t x_t x_t^T / sum_t c_t over calibration inputs x [..., K] (float64).

    weighting "uniform": c_t = 1 (GPTQ's 2 X X^T / tokens). "sink": each x_t is scaled to unit
    norm, and for inputs with a sequence dimension (x [..., T, K], T > 1) the first position of
    each sequence gets `sink_share` of the weight of its sequence; see the module docstring."""

    def __init__(self, in_features: int, device=None, weighting: str = "uniform", sink_share: float = 0.1):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        check_sink_share(sink_share)
        self.matrix = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.weighting, self.sink_share = weighting, sink_share
        self.tokens = 0
        self.total_weight = 0.0

    def add(self, x: torch.Tensor) -> None:
        k = self.matrix.shape[0]
        if x.shape[-1] != k:
            raise ValueError(f"x must have {k} features in its last dimension, got shape {tuple(x.shape)}")
        rows = x.detach().to(self.matrix.device, torch.float64).reshape(-1, k)
        if self.weighting == "uniform":
            added = float(rows.shape[0])
        else:
            c = token_weights(x, self.sink_share).to(rows.device)
            rows, added = rows * c.sqrt()[:, None], float(c.mul(rows.pow(2).sum(-1)).sum())
        total = self.total_weight + added
        self.matrix.mul_(self.total_weight / total).addmm_(rows.t(), rows, alpha=2.0 / total)
        self.total_weight = total
        self.tokens += x.numel() // k


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1."""
    h = h.clone()
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    lower = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def gptq_int4(w: torch.Tensor, hessian: torch.Tensor, group_size: int = 128, bits: int = 4, symmetric: bool = False,
              act_order: bool = False, block_size: int = 128, damp: float = 0.01, mse: bool = False,
              static_groups: bool = False) -> Int4Weight:
    """GPTQ-quantize w [N, K] (float) given H [K, K]; see the module docstring.

    static_groups (with act_order): the groups stay the contiguous input-channel ranges of the
    unpermuted weight, their scales and zeros fixed up front from the original weights (AutoGPTQ's
    static_groups, compressed-tensors' actorder "weight"); only the visiting order follows H. The
    result has no g_idx, so every int4 format and loader takes it (compressed-tensors dropped
    actorder "group"), at some accuracy against the default dynamic groups."""
    n, k = w.shape
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"hessian must have shape [K, K] = [{k}, {k}], got {tuple(hessian.shape)}")
    if group_size != -1 and group_size <= 0:
        raise ValueError(f"group_size must be -1 or positive, got {group_size}")
    gs = k if group_size == -1 else min(group_size, k)  # a group wider than K is one group
    W = w.detach().double().clone()
    H = hessian.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    U = _inverse_cholesky(H, damp)

    groups = -(-k // gs)
    Q = torch.zeros_like(W)
    scales = torch.zeros(n, groups, dtype=torch.float32)
    zeros = torch.zeros(n, groups, dtype=torch.float32)
    static = static_groups and act_order
    if static:  # the original groups' parameters, before any error feedback; column j is in group perm[j] // gs
        original = W[:, torch.argsort(perm)]
        for g in range(groups):
            scales[:, g], zeros[:, g] = (group_params_mse if mse else group_params)(
                original[:, g * gs:(g + 1) * gs].float(), bits, symmetric)
        col_group = (perm // gs).tolist()
    else:
        col_group = [col // gs for col in range(k)]
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        Wb, Ub = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        Err = torch.zeros_like(Wb)
        for i in range(b1 - b0):
            col = b0 + i
            if not static and col % gs == 0:
                # the group's current weights: in-block columns carry this block's updates already
                g_end = min(col + gs, k)
                cur = torch.cat((Wb[:, i:], W[:, b1:g_end]), dim=1)[:, :g_end - col]
                s, z = (group_params_mse if mse else group_params)(cur.float(), bits, symmetric)
                scales[:, col // gs], zeros[:, col // gs] = s, z
            s, z = scales[:, col_group[col]].double(), zeros[:, col_group[col]].double()
            q = quantize_with(Wb[:, i], s, z, bits).double()
            Q[:, col] = q
            err = (Wb[:, i] - (q - z) * s) / Ub[i, i]
            Wb[:, i:] -= err[:, None] * Ub[i, i:][None, :]
            Err[:, i] = err
        W[:, b1:] -= Err @ U[b0:b1, b1:]

    inverse = torch.argsort(perm)
    values = Q[:, inverse].to(torch.uint8)
    g_idx = (inverse // gs).to(torch.int32) if act_order and not static else None
    return Int4Weight.from_values(values, scales, zeros.to(torch.uint8), gs, bits, g_idx)
