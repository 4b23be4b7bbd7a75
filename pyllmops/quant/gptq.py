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

Calibration size matters, but it is not the whole story (measured 2026-11-28, SmolLM2-135M, W4
g128, GPL-3 perplexity, 512-token disjoint windows, fp 22.35). GPTQ fits each layer to its
calibration inputs and with few tokens per input channel it overfits them: on layers.0.mlp.down_proj
(K = 1536, inputs from the fp model), 8 x 512 calibration tokens gave a relative output error of
0.036 on those tokens (RTN 0.070) but 0.077 on held-out GPL-3 text (RTN 0.071); with 16k / 29k
tokens the held-out error fell to 0.062 / 0.059. Yet end to end, 55 windows (29k tokens) gave
perplexity 33.46 against 32.20 with 8 windows (RTN 28.87), and damp=0.1 gave 32.85. Checked and
ruled out: the dequantized weight WeightOnlyLinear applies equals the one computed here (exactly),
and the block-sequential driver feeds each layer the inputs it has in the quantized model
(tests/quant/test_methods.py); quantizing every linear independently from the float model's
inputs (8 windows, no block-sequential driver) gave 33.74, so the driver is not the cause either.
Per layer, on held-out GPL-3 inputs of the float model, GPTQ's output error is 0.25-0.96 x RTN's
for q/k/v/o/gate/up and 0.94-1.17 x for down_proj in layers 0-4, which does not explain a worse
perplexity either. Still not understood.
"""
from __future__ import annotations

import torch

from pyllmops.quant.packing import Int4Weight
from pyllmops.quant.rtn import group_params, quantize_with


class Hessian:
    """Running H = 2 X X^T / tokens over calibration inputs x [..., K] (float64 accumulation)."""

    def __init__(self, in_features: int, device=None):
        self.matrix = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        t = x.shape[0]
        self.matrix.mul_(self.tokens / (self.tokens + t)).addmm_(x.t(), x, alpha=2.0 / (self.tokens + t))
        self.tokens += t


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1."""
    h = h.clone()
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    lower = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def gptq_int4(w: torch.Tensor, hessian: torch.Tensor, group_size: int = 128, bits: int = 4, symmetric: bool = False,
              act_order: bool = False, block_size: int = 128, damp: float = 0.01) -> Int4Weight:
    """GPTQ-quantize w [N, K] (float) given H [K, K]; see the module docstring."""
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
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        Wb, Ub = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        Err = torch.zeros_like(Wb)
        for i in range(b1 - b0):
            col = b0 + i
            if col % gs == 0:
                # the group's current weights: in-block columns carry this block's updates already
                g_end = min(col + gs, k)
                cur = torch.cat((Wb[:, i:], W[:, b1:g_end]), dim=1)[:, :g_end - col]
                s, z = group_params(cur.float(), bits, symmetric)
                scales[:, col // gs], zeros[:, col // gs] = s, z
            s, z = scales[:, col // gs].double(), zeros[:, col // gs].double()
            q = quantize_with(Wb[:, i], s, z, bits).double()
            Q[:, col] = q
            err = (Wb[:, i] - (q - z) * s) / Ub[i, i]
            Wb[:, i:] -= err[:, None] * Ub[i, i:][None, :]
            Err[:, i] = err
        W[:, b1:] -= Err @ U[b0:b1, b1:]

    inverse = torch.argsort(perm)
    values = Q[:, inverse].to(torch.uint8)
    g_idx = (inverse // gs).to(torch.int32) if act_order else None
    return Int4Weight.from_values(values, scales, zeros.to(torch.uint8), gs, bits, g_idx)
