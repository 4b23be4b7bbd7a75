"""AWQ (Lin et al., 2023): activation-aware scaling before group-wise RTN.

Salient input channels (large mean |x|) are protected by scaling them up in the weight and down in
the activation: W' = W diag(s), x' = x / s, so W' x' = W x exactly before rounding, but the
rounding error on the salient channels shrinks by s. The division by s is folded into the op that
produces x (an RMSNorm's weight, or the previous linear's output rows), so it costs nothing.

    s = awq_search_scale(x [T, K] calibration inputs, [w_1 [N_1, K], ...], group_size, bits)
        s = mean|x|^alpha, normalised to geometric mean 1, alpha on a 20-point grid in [0, 1],
        picking the alpha with the smallest sum_i ||x W_i^T - x' Q(W_i diag(s))^T||^2, i.e. the
        output error of all linears sharing the input x, or (output_error=) the output error of
        the module they feed, e.g. the whole attention for q/k/v (llm-awq's "module2inspect").
    awq_clip(w [N, K], x [T, K], group_size, bits) -> clipped w: per (row, group) shrink the
        quantization range to r x [min, max], r on a grid in [0.5, 1], keeping the r with the
        smallest output error of that group's partial dot products.
Then rtn_int4 on the scaled (and clipped) weight.
"""
from __future__ import annotations

from typing import Callable

import torch

from pyllmops.quant.rtn import rtn_int4

ALPHA_GRID = 20
CLIP_GRID = 20
CLIP_MIN = 0.5


def _fake_quant(w: torch.Tensor, group_size: int, bits: int, symmetric: bool) -> torch.Tensor:
    return rtn_int4(w, group_size, bits, symmetric).dequantize(torch.float32)


def _weighted(x: torch.Tensor, row_weight) -> torch.Tensor:
    """Rows of x [T, K] scaled by sqrt(row_weight [T]): squared errors of x @ W^T then count c_t times."""
    if row_weight is None:
        return x
    if row_weight.shape != x.shape[:1]:
        raise ValueError(f"row_weight must have shape [{x.shape[0]}], got {tuple(row_weight.shape)}")
    return x * row_weight.to(x.dtype).sqrt()[:, None]


def awq_search_scale(x: torch.Tensor, weights: list[torch.Tensor], group_size: int = 128, bits: int = 4,
                     symmetric: bool = False, n_grid: int = ALPHA_GRID,
                     row_weight: torch.Tensor | None = None, duo: bool = False,
                     output_error: Callable[[list[torch.Tensor]], float] | None = None) -> torch.Tensor:
    """Per-input-channel scale s [K] (fp32) for the linears `weights` that all read x [T, K];
    row_weight [T] (pyllmops.quant.token_weights) weighs each token's output error; duo divides
    the candidate scales by the weights' own salience^(1 - alpha) (_weight_salience).

    output_error(candidates) -> float scores one candidate: the list of effective weights
    Q(W_i diag(s)) / s [N_i, K] (what the unscaled input meets after folding). Default: the
    squared output error of the linears themselves on x (weighted by row_weight); a caller can
    pass the error of a larger module's output instead (the attention or MLP these linears feed)."""
    x = x.reshape(-1, x.shape[-1]).float()
    x_mean = x.abs().mean(0)
    weights = [w.detach().float().clone() for w in weights]  # output_error may write into the layers these came from
    w_mean = _weight_salience(weights, group_size) if duo else None
    if output_error is None:
        xw = _weighted(x, row_weight)
        ref = [xw @ w.t() for w in weights]

        def output_error(candidates):
            return sum(float((xw @ wq.t() - r).pow(2).sum()) for wq, r in zip(candidates, ref))
    best_err, best = float("inf"), torch.ones_like(x_mean)
    for alpha in torch.linspace(0, 1, n_grid).tolist():
        s = x_mean.pow(alpha) if w_mean is None else x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        err = output_error([_fake_quant(w * s, group_size, bits, symmetric) / s for w in weights])
        if err < best_err:
            best_err, best = err, s
    return best


def _weight_salience(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """[K]: mean over output rows of |w| relative to its (row, group) absmax. Channels whose
    weights already sit near their group's maximum lose precision if scaled up further."""
    w = torch.cat([w.float() for w in weights]).abs()
    k = w.shape[1]
    g = _padded_groups(w, k if group_size == -1 else group_size)  # [N, G, gs]
    rel = g / (g.amax(-1, keepdim=True) + 1e-6)
    return rel.reshape(w.shape[0], -1)[:, :k].mean(0)


def _padded_groups(t: torch.Tensor, gs: int) -> torch.Tensor:
    """[R, K] -> [R, G, gs], the ragged last group padded with zeros. Zeros change neither a
    group's asymmetric range [min(w, 0), max(w, 0)] nor its absmax, nor any dot product."""
    r, k = t.shape
    g = -(-k // gs)
    return torch.nn.functional.pad(t, (0, g * gs - k)).reshape(r, g, gs)


def awq_clip(w: torch.Tensor, x: torch.Tensor, group_size: int = 128, bits: int = 4, symmetric: bool = False,
             n_grid: int = CLIP_GRID, max_tokens: int = 512, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """w [N, K] with each (row, group) clamped to the range ratio that minimises its output error
    (over up to max_tokens rows of x, each weighted by row_weight [T] when given)."""
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    x = _weighted(x.reshape(-1, k).float(), row_weight)
    x = x[torch.linspace(0, x.shape[0] - 1, min(max_tokens, x.shape[0])).long()]
    wg = _padded_groups(w.float(), gs)                     # [N, G, gs]
    xg = _padded_groups(x, gs)                             # [T, G, gs]
    ref = torch.einsum("tgj,ngj->tng", xg, wg)            # each group's share of each output
    if symmetric:
        hi = wg.abs().amax(-1, keepdim=True)
        lo = -hi
    else:
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    best_err = torch.full(wg.shape[:2], float("inf"))
    best = wg.clone()
    for r in torch.linspace(1.0, CLIP_MIN, n_grid).tolist():
        wc = torch.maximum(torch.minimum(wg, hi * r), lo * r)
        deq = rtn_int4(wc.reshape(-1, gs), -1, bits, symmetric).dequantize(torch.float32).reshape(wg.shape)
        err = (torch.einsum("tgj,ngj->tng", xg, deq) - ref).pow(2).sum(0)  # [N, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better[..., None], wc, best)
    return best.reshape(n, -1)[:, :k]
