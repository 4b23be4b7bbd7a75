"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before W8A8.

A few input channels of a linear layer carry huge activations (SmolLM2's down_proj sees |x| ~ 3000
in one channel), so one int8 scale per token or per tensor wastes most of its range on them.
Dividing input channel j by s_j and multiplying weight column j by s_j leaves x @ W.T unchanged
but flattens the activations:

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(max|W_j| over every linear that reads channel j; alpha = 0.5 splits the difficulty evenly, higher
alpha pushes more of it into the weights). `auto_alpha` picks alpha per group instead: the value
of a grid (0.3 .. 0.9) whose smoothed, fake-quantized product is closest to the float one on
calibration rows. The division is folded into whatever produces the
input, so it costs nothing at run time:

  * a norm (RMSNorm / LayerNorm: `.weight`, optional `.bias`): its weight (and bias) / s. Several
    linears reading the same norm (q/k/v; gate/up) share one s.
  * a previous nn.Linear whose output is the input (v_proj -> o_proj through attention, which is
    linear in v per channel; up_proj -> down_proj through silu(gate) * up): its output rows / s.
    With grouped-query attention v_proj has fewer output channels than o_proj has inputs (each
    value head serves n_heads / n_kv_heads query heads): s is then shared by the repeated
    channels (`kv_head_dim`).

Which producer feeds which linears is architecture knowledge, declared as SmoothGroups;
`llama_smooth_groups` finds them in Llama-style models (Hugging Face module names). Another
architecture passes its own list, e.g. for a GPT-2-like block with LayerNorms ln_1 / ln_2:

    groups = [SmoothGroup(f"h.{i}.ln_1", (f"h.{i}.attn.qkv",)) for i in range(n_layers)]
           + [SmoothGroup(f"h.{i}.ln_2", (f"h.{i}.mlp.fc1",)) for i in range(n_layers)]
    pyllmops.quantize(model, "w8a8-sq", calib=batches, smooth_groups=groups)
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from pyllmops.ops import dequantize_int8, quantize_int8

# Statistics below this are treated as "no information" for that channel: s_j = 1 there.
_EPS = 1e-5
# Smoothing factors are clamped to [1 / _S_MAX, _S_MAX]: keeps every folded weight finite even
# for channels whose activation range and weight range differ by many orders of magnitude.
_S_MAX = 1e5


@dataclass(frozen=True)
class SmoothGroup:
    """`linears` (module names) all read the output of `prev` (a norm with `.weight` or an
    nn.Linear). kv_head_dim: set when prev is the value projection of grouped-query attention
    (prev has n_kv_heads * kv_head_dim outputs, the linears n_heads * kv_head_dim inputs; query
    head h reads value head h // (n_heads / n_kv_heads)). rows: (start, stop) when only those
    output rows of prev (an nn.Linear) are the linears' input, e.g. the value rows of a fused
    qkv_proj feeding o_proj; only they are divided."""
    prev: str
    linears: tuple[str, ...]
    kv_head_dim: int | None = None
    rows: tuple[int, int] | None = None


def llama_smooth_groups(model: nn.Module) -> list[SmoothGroup]:
    """The smoothing groups of a Llama-style model: every module with input_layernorm,
    self_attn.{q,k,v,o}_proj, post_attention_layernorm and mlp.{gate,up,down}_proj (the names of
    pyllmops.models.Llama and Hugging Face Llama/Mistral/Qwen2/SmolLM). Only nn.Linear consumers
    and producers are used, so an already quantized layer is skipped."""
    groups: list[SmoothGroup] = []
    for name, block in model.named_modules():
        attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
        if attn is None or mlp is None or not hasattr(block, "input_layernorm") or not hasattr(block, "post_attention_layernorm"):
            continue
        pre = f"{name}." if name else ""

        def linear(owner, attr, path):
            mod = getattr(owner, attr, None)
            return f"{pre}{path}.{attr}" if type(mod) is nn.Linear else None

        qkv = tuple(n for n in (linear(attn, a, "self_attn") for a in ("q_proj", "k_proj", "v_proj")) if n)
        gate_up = tuple(n for n in (linear(mlp, a, "mlp") for a in ("gate_proj", "up_proj")) if n)
        if qkv:
            groups.append(SmoothGroup(f"{pre}input_layernorm", qkv))
        if gate_up:
            groups.append(SmoothGroup(f"{pre}post_attention_layernorm", gate_up))
        v, o = linear(attn, "v_proj", "self_attn"), linear(attn, "o_proj", "self_attn")
        if v and o:
            head_dim = getattr(attn, "head_dim", None)
            if attn.v_proj.out_features == attn.o_proj.in_features:
                groups.append(SmoothGroup(v, (o,)))
            elif head_dim:
                groups.append(SmoothGroup(v, (o,), kv_head_dim=int(head_dim)))
        up, down = linear(mlp, "up_proj", "mlp"), linear(mlp, "down_proj", "mlp")
        if up and down:
            groups.append(SmoothGroup(up, (down,)))
    return groups


def smoothing_factors(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s [K] float32 = x_absmax^alpha / w_absmax^(1 - alpha), finite and > 0 everywhere.

    x_absmax: [K] max |activation| per input channel; w_absmax: [K] max |weight| per input
    channel over the linears reading it. A channel with no activation or no weight (statistic
    below 1e-5) gets s = 1; s is clamped to [1e-5, 1e5]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    x = x_absmax.float()
    w = w_absmax.float()
    s = x.clamp(min=_EPS).pow(alpha) / w.clamp(min=_EPS).pow(1.0 - alpha)
    s = torch.where((x < _EPS) | (w < _EPS), torch.ones_like(s), s)
    return s.clamp(1.0 / _S_MAX, _S_MAX)


def _alpha_for(group: SmoothGroup, alpha: float, layer_alpha: Mapping[str, float] | None) -> float:
    for pattern, value in (layer_alpha or {}).items():
        if any(fnmatch.fnmatchcase(n, pattern) for n in (group.prev, *group.linears)):
            return float(value)
    return float(alpha)


def _repeat_view(t: torch.Tensor, group: SmoothGroup, n_prev: int) -> torch.Tensor:
    """A consumer-channel statistic [K] viewed as [n_kv, rep, head_dim] (rep = K / n_prev)."""
    return t.reshape(n_prev // group.kv_head_dim, -1, group.kv_head_dim)


@dataclass
class _GroupStats:
    prev: nn.Module
    consumers: list[nn.Linear]
    x_amax: torch.Tensor  # [K] over the consumers' inputs
    w_amax: torch.Tensor  # [K] over the consumers' weight columns
    n_prev: int           # the producer's output channels (K, or fewer for grouped-query v_proj)


def _group_stats(group: SmoothGroup, modules: Mapping[str, nn.Module], absmax: Mapping[str, torch.Tensor]) -> _GroupStats:
    for name in (group.prev, *group.linears):
        if name not in modules:
            raise ValueError(f"smooth group {group}: no module named {name!r} in the model")
    consumers = [modules[n] for n in group.linears]
    if any(not isinstance(c, nn.Linear) for c in consumers):
        raise TypeError(f"smooth group {group}: every consumer must be an nn.Linear")
    missing = [n for n in group.linears if n not in absmax]
    if missing:
        raise ValueError(f"smooth group {group}: no calibration statistics for {missing} (did they run?)")
    k = consumers[0].in_features
    if any(c.in_features != k for c in consumers):
        raise ValueError(f"smooth group {group}: the linears disagree on in_features")
    x_amax = torch.stack([absmax[n].float().to(consumers[0].weight.device) for n in group.linears]).amax(0)
    w_amax = torch.stack([c.weight.detach().abs().amax(0).float() for c in consumers]).amax(0)
    prev = modules[group.prev]
    n_prev = prev.out_features if isinstance(prev, nn.Linear) else prev.weight.shape[0]
    if group.rows is not None:
        start, stop = group.rows
        if not isinstance(prev, nn.Linear) or not 0 <= start < stop <= n_prev:
            raise ValueError(f"smooth group {group}: rows must be a range of the output rows of an nn.Linear producer "
                             f"({group.prev} has {n_prev})")
        n_prev = stop - start
    if n_prev != k and group.kv_head_dim is None:
        raise ValueError(f"smooth group {group}: {group.prev} has {n_prev} outputs but the linears take {k} "
                         f"inputs; set kv_head_dim for grouped-query attention")
    if n_prev != k and (k % n_prev or n_prev % group.kv_head_dim):
        raise ValueError(f"smooth group {group}: {k} inputs are not whole repeats of {n_prev} outputs "
                         f"in heads of {group.kv_head_dim}")
    return _GroupStats(prev, consumers, x_amax, w_amax, n_prev)


def _group_factors(group: SmoothGroup, st: _GroupStats, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_prev [n_prev], s [K]): the factors dividing the producer's outputs and multiplying the
    consumers' weight columns (equal unless grouped-query attention repeats value channels)."""
    k = st.x_amax.numel()
    if st.n_prev == k:
        s = smoothing_factors(st.x_amax, st.w_amax, alpha)
        return s, s
    # One factor per value channel, from the max over the query heads that share it.
    s_prev = smoothing_factors(_repeat_view(st.x_amax, group, st.n_prev).amax(1).reshape(-1),
                               _repeat_view(st.w_amax, group, st.n_prev).amax(1).reshape(-1), alpha)
    return s_prev, s_prev.reshape(-1, 1, group.kv_head_dim).expand(-1, k // st.n_prev, -1).reshape(-1)


@torch.no_grad()
def smooth_(model: nn.Module, groups: Sequence[SmoothGroup], absmax: Mapping[str, torch.Tensor],
            alpha: float = 0.5, layer_alpha: Mapping[str, float] | None = None,
            group_alpha: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Fold SmoothQuant factors into `model` in place; the float model computes the same function
    (up to rounding). absmax: {linear name: [K] input absmax} from calibration.input_absmax on the
    unsmoothed model. layer_alpha: {fnmatch pattern: alpha} overriding `alpha` for the groups
    whose producer or any consumer name matches (first matching pattern wins), e.g.
    {"*.down_proj": 0.8}. group_alpha: {producer name: alpha}, e.g. from auto_alpha; used where
    no layer_alpha pattern matches. Returns {producer name: s [K] float32}."""
    modules = dict(model.named_modules())
    factors: dict[str, torch.Tensor] = {}
    for group in groups:
        st = _group_stats(group, modules, absmax)
        a = _alpha_for(group, (group_alpha or {}).get(group.prev, alpha), layer_alpha)
        s_prev, s = _group_factors(group, st, a)
        _divide_output(st.prev, s_prev, group.rows)
        for c in st.consumers:
            c.weight.mul_(s.to(c.weight.dtype)[None, :])
        factors[group.prev] = s
    return factors


AUTO_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.3, 0.35, ..., 0.9


def _fake_quant(x: torch.Tensor, granularity: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """x [M, K] float32 through symmetric int8 quantization and back (what a W8A8 layer computes with)."""
    q = quantize_int8(x, granularity, scale=scale)
    return dequantize_int8(q.values, q.scale)


@torch.no_grad()
def auto_alpha(model: nn.Module, groups: Sequence[SmoothGroup], absmax: Mapping[str, torch.Tensor],
               samples: Mapping[str, torch.Tensor], granularity: str = "token",
               grid: Sequence[float] = AUTO_GRID) -> dict[str, float]:
    """{producer name: alpha}: per group, the alpha of `grid` whose smoothing gives the smallest
    mean squared error of the W8A8 outputs against the float outputs of its linears, measured on
    calibration rows (the auto-tuning idea of Intel Neural Compressor's SmoothQuant, per group).

    samples: {linear name: [T, K] input rows} (calibration.input_samples on the unsmoothed model;
    the first linear of each group is read: they share their input). granularity: how the
    activations will be quantized, "token" (dynamic) or "tensor" (static: one scale per layer,
    absmax / 127 of the smoothed calibration inputs). The weights are quantized per output
    channel, as W8A8Linear does."""
    if granularity not in ("token", "tensor"):
        raise ValueError(f"granularity must be 'token' or 'tensor', got {granularity!r}")
    if not grid or any(not 0.0 <= a <= 1.0 for a in grid):
        raise ValueError(f"grid must hold alphas in [0, 1], got {list(grid)}")
    modules = dict(model.named_modules())
    chosen: dict[str, float] = {}
    for group in groups:
        st = _group_stats(group, modules, absmax)
        if group.linears[0] not in samples:
            raise ValueError(f"smooth group {group}: no calibration samples for {group.linears[0]}")
        x = samples[group.linears[0]].float().to(st.x_amax.device)
        w = torch.cat([c.weight.detach().float() for c in st.consumers])  # [N_total, K]
        y = x @ w.t()
        errors = []
        for a in grid:
            _, s = _group_factors(group, st, a)
            xs = x / s
            scale = (st.x_amax / s).amax().clamp(min=torch.finfo(torch.float32).tiny * 127).reshape(1) / 127 \
                if granularity == "tensor" else None
            yq = _fake_quant(xs, granularity, scale) @ _fake_quant(w * s, "token").t()
            errors.append(float((yq - y).pow(2).mean()))
        chosen[group.prev] = float(grid[min(range(len(grid)), key=errors.__getitem__)])
    return chosen


def _divide_output(prev: nn.Module, s: torch.Tensor, rows: tuple[int, int] | None = None) -> None:
    """Scale the producer so that its output channel j (of the slice `rows`, when given) is divided by s_j."""
    if rows is not None:
        prev.weight[rows[0]:rows[1]].div_(s.to(prev.weight.dtype)[:, None])
        if prev.bias is not None:
            prev.bias[rows[0]:rows[1]].div_(s.to(prev.bias.dtype))
        return
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.to(prev.weight.dtype)[:, None])
    elif not isinstance(getattr(prev, "weight", None), torch.Tensor):
        raise TypeError(f"cannot fold smoothing into {type(prev).__name__}: it is neither an nn.Linear nor a "
                        f"norm with a .weight")
    else:
        prev.weight.div_(s.to(prev.weight.dtype))
    bias = getattr(prev, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s.to(bias.dtype))
