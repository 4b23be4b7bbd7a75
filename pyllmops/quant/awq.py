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
                     row_weight: torch.Tensor | None = None,
                     output_error: Callable[[list[torch.Tensor], int | None], float] | None = None,
                     folds: torch.Tensor | None = None) -> torch.Tensor:
    """Per-input-channel scale s [K] (fp32) for the linears `weights` that all read x [T, K];
    row_weight [T] (pyllmops.quant.token_weights) weighs each token's output error.

    folds [T] (small ints, e.g. the calibration window of each row modulo 2) selects alpha by
    cross-validation: each fold's error is measured with the scales computed from the other
    folds' rows, so alpha = 0 (s = 1, no scaling) wins whenever the fitted scales do not carry
    over to rows they were not fitted on. The returned s uses every row at the chosen alpha.
    Without folds, alpha minimises the error on the rows the scales come from.

    output_error(candidates, fold) -> float scores one candidate on the calibration rows of one
    fold (fold None: all of them): candidates are the effective weights Q(W_i diag(s)) / s
    [N_i, K] (what the unscaled input meets after folding). Default: the squared output error of
    the linears themselves on x (weighted by row_weight); a caller can pass the error of a larger
    module's output instead (the attention or MLP these linears feed), restricted to the
    calibration sequences of the given fold."""
    x = x.reshape(-1, x.shape[-1]).float()
    values = _fold_values(folds, x.shape[0])
    weights = [w.detach().float().clone() for w in weights]  # output_error may write into the layers these came from
    if output_error is None:
        xw = _weighted(x, row_weight)
        ref = [xw @ w.t() for w in weights]

        def output_error(candidates, fold):
            rows = slice(None) if fold is None else folds == fold
            return sum(float((xw[rows] @ wq.t() - r[rows]).pow(2).sum()) for wq, r in zip(candidates, ref))

    def scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
        s = x_mean.pow(alpha).clamp(min=1e-4)  # alpha = 0: exactly 1
        return s / (s.max() * s.min()).sqrt()

    def candidates(s: torch.Tensor) -> list[torch.Tensor]:
        return [_fake_quant(w * s, group_size, bits, symmetric) / s for w in weights]

    # per split: (the channel means the scales come from, the fold the error is measured on)
    splits = ([(x.abs().mean(0), None)] if len(values) < 2 else
              [(x[folds != f].abs().mean(0), f) for f in values])
    best_err, best_alpha = float("inf"), 0.0
    for alpha in torch.linspace(0, 1, n_grid).tolist():
        err = sum(output_error(candidates(scales(x_mean, alpha)), fold) for x_mean, fold in splits)
        if err < best_err:
            best_err, best_alpha = err, alpha
    return scales(x.abs().mean(0), best_alpha)


def _fold_values(folds: torch.Tensor | None, n_rows: int) -> list[int]:
    """The distinct fold numbers in folds [T] (none without folds)."""
    if folds is None:
        return []
    if folds.shape != (n_rows,):
        raise ValueError(f"folds must have shape [{n_rows}], got {tuple(folds.shape)}")
    return folds.unique().tolist()


def _padded_groups(t: torch.Tensor, gs: int) -> torch.Tensor:
    """[R, K] -> [R, G, gs], the ragged last group padded with zeros. Zeros change neither a
    group's asymmetric range [min(w, 0), max(w, 0)] nor its absmax, nor any dot product."""
    r, k = t.shape
    g = -(-k // gs)
    return torch.nn.functional.pad(t, (0, g * gs - k)).reshape(r, g, gs)


def awq_clip(w: torch.Tensor, x: torch.Tensor, group_size: int = 128, bits: int = 4, symmetric: bool = False,
             n_grid: int = CLIP_GRID, max_tokens: int = 512, row_weight: torch.Tensor | None = None,
             folds: torch.Tensor | None = None) -> torch.Tensor:
    """w [N, K] with each (row, group) clamped to the range ratio that minimises its output error
    (over up to max_tokens rows of x, each weighted by row_weight [T] when given).

    folds [T] (as in awq_search_scale) cross-validates the clip search per (row, group): the
    ratio fitted on the other folds' rows is scored on each fold's rows, and the group keeps its
    full range (ratio 1) unless that held-out error is below the full range's."""
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    x = _weighted(x.reshape(-1, k).float(), row_weight)
    values = _fold_values(folds, x.shape[0])
    keep = torch.linspace(0, x.shape[0] - 1, min(max_tokens, x.shape[0])).long()
    x = x[keep]
    masks = [folds[keep] == f for f in values] if len(values) > 1 else [torch.ones(x.shape[0], dtype=torch.bool)]
    wg = _padded_groups(w.float(), gs)                     # [N, G, gs]
    xg = _padded_groups(x, gs)                             # [T, G, gs]
    ref = torch.einsum("tgj,ngj->tng", xg, wg)            # each group's share of each output
    if symmetric:
        hi = wg.abs().amax(-1, keepdim=True)
        lo = -hi
    else:
        lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    ratios = torch.linspace(1.0, CLIP_MIN, n_grid).tolist()
    errs = []                                             # per ratio: [F, N, G] error of each fold's rows
    for r in ratios:
        wc = torch.maximum(torch.minimum(wg, hi * r), lo * r)
        deq = rtn_int4(wc.reshape(-1, gs), -1, bits, symmetric).dequantize(torch.float32).reshape(wg.shape)
        sq = (torch.einsum("tgj,ngj->tng", xg, deq) - ref).pow(2)
        errs.append(torch.stack([sq[m].sum(0) for m in masks]))
    errs = torch.stack(errs)                              # [R, F, N, G]
    pick = errs.sum(1).argmin(0)                          # [N, G]: the ratio fitted on every row
    if len(masks) > 1:
        fitted = (errs.sum(1, keepdim=True) - errs).argmin(0)               # [F, N, G]: fitted without fold f
        held_out = errs.gather(0, fitted[None]).squeeze(0).sum(0)           # [N, G]: scored on fold f
        pick = torch.where(held_out < errs[0].sum(0), pick, torch.zeros_like(pick))
    r = torch.tensor(ratios)[pick][..., None]             # [N, G, 1]
    best = torch.maximum(torch.minimum(wg, hi * r), lo * r)
    return best.reshape(n, -1)[:, :k]
