"""How much each calibration token counts in a quantizer's loss (GPTQ's Hessian, AWQ's searches).

    c = token_weights(x [..., T, K] or [N, K], sink_share=0.1) -> [tokens] float64

c_t = 1 / ||x_t||^2 makes the loss sum_t c_t ||dW x_t||^2 a sum of relative errors, so tokens with
massive activations do not rule it (the next RMSNorm divides the residual stream by its norm, so
relative error is what propagates). With a sequence dimension (x [..., T, K], T > 1), the first
position of each sequence, the attention sink whose key and value every later token reads, gets
`sink_share` of its sequence's weight (0: it counts like the others). A 2-D x has no sequences.
Measured effect on SmolLM2: docs/quality.md (GPTQ: which tokens the Hessian weighs).
"""
from __future__ import annotations

import torch


def check_sink_share(sink_share: float) -> None:
    if not 0.0 <= sink_share < 1.0:
        raise ValueError(f"sink_share must be in [0, 1), got {sink_share}")


def token_weights(x: torch.Tensor, sink_share: float = 0.1) -> torch.Tensor:
    """Per-token weights (flattened over every dimension but the last) for x; see the module docstring."""
    check_sink_share(sink_share)
    seqs = x.detach().reshape(-1, x.shape[-2] if x.dim() >= 3 else 1, x.shape[-1])  # [S, T, K]
    c = 1.0 / seqs.double().pow(2).sum(-1).clamp_min(1e-60)  # [S, T]: every token a unit-norm one
    t = seqs.shape[1]
    if t > 1 and sink_share > 0:  # the first token then weighs as much as this many unit tokens
        c[:, 0] *= sink_share / (1.0 - sink_share) * (t - 1)
    return c.reshape(-1)
