"""Cutting full weights into tensor-parallel shards: index arithmetic (with the errors a bad
split deserves, raised before any collective) and a registry of *sharders*, one per local-matmul
module type, so TP layers can hold nn.Linear or a quantized linear alike.

A sharder is `fn(module, dim, index) -> module`: the same kind of module restricted to the output
features (dim=0, column parallel) or input features (dim=1, row parallel) listed in `index`
(a 1-D int64 tensor). Row shards drop the bias: a row-parallel layer adds it once, after the sum."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Sharder = Callable[[nn.Module, int, torch.Tensor], nn.Module]
_SHARDERS: dict[type | str, Sharder] = {}


def register_sharder(cls: type | str) -> Callable[[Sharder], Sharder]:
    """Decorator: `@register_sharder(W8A8Linear) def _(module, dim, index): ...`. `cls` may also be
    the class's qualified name ("package.module.Class"), so a sharder needs no import of it."""
    def deco(fn: Sharder) -> Sharder:
        _SHARDERS[cls] = fn
        return fn
    return deco


def shard_module(module: nn.Module, dim: int, index: torch.Tensor) -> nn.Module:
    """The shard of a linear-like `module` keeping features `index` along `dim` (0: out, 1: in)."""
    for cls in type(module).__mro__:
        for key in (cls, f"{cls.__module__}.{cls.__qualname__}"):
            if key in _SHARDERS:
                return _SHARDERS[key](module, dim, index)
    known = ", ".join(sorted(c if isinstance(c, str) else c.__name__ for c in _SHARDERS))
    raise TypeError(f"no tensor-parallel sharder for {type(module).__name__} (known: {known}); "
                    f"register one with pyllmops.parallel.register_sharder")


def features(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a linear-like module."""
    try:
        return int(module.out_features), int(module.in_features)
    except AttributeError:
        raise TypeError(f"{type(module).__name__} has no in_features/out_features; not a linear layer") from None


def input_alignment(module: nn.Module) -> int:
    """Input-feature shards of `module` must start and end on multiples of this: the quantization
    group size of a group-quantized weight, unless it has an act-order permutation (its shards
    regroup channels anyway, see the weight-only sharder). 1 for everything else."""
    gs = getattr(module, "group_size", None)
    if not isinstance(gs, int) or gs <= 1 or gs >= features(module)[1]:
        return 1
    if getattr(module, "perm", None) is not None or getattr(module, "g_idx", None) is not None:
        return 1
    return gs


def check_aligned(index: torch.Tensor, align: int, what: str) -> None:
    """ValueError unless `index` is one contiguous run whose ends are multiples of `align`."""
    if align <= 1:
        return
    lo, n = int(index[0]), len(index)
    contiguous = bool((index == torch.arange(lo, lo + n)).all())
    if not contiguous or lo % align or n % align:
        raise ValueError(f"{what}: the shard [{lo}, {lo + n}) ({n} features) does not start and end on multiples of "
                         f"the quantization group size {align}: a group would cross a shard boundary")


def shard_size(size: int, world: int, what: str) -> int:
    """size / world, or a ValueError naming `what` when it does not divide."""
    if size % world:
        raise ValueError(f"{what} = {size} is not divisible by the tensor-parallel world size {world}")
    return size // world


def shard_index(size: int, rank: int, world: int, what: str, *, align: int = 1) -> torch.Tensor:
    """Indices [rank*size/world, (rank+1)*size/world) of a dimension of `size`; `align` demands
    that the shard boundaries fall on multiples of it (e.g. a quantization group size)."""
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int >= 1, got {world!r}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
    step = shard_size(size, world, what)
    if step % align:
        raise ValueError(f"{what} = {size} split over {world} ranks gives shards of {step}, which is not a "
                         f"multiple of the quantization group size {align}: a group would cross a shard boundary")
    return torch.arange(rank * step, (rank + 1) * step)


def merged_index(sizes: list[int], rank: int, world: int, what: str) -> torch.Tensor:
    """Rank `rank`'s rows of a weight made of blocks of `sizes` rows stacked (fused gate/up):
    its shard of every block, blocks kept in order."""
    out, offset = [], 0
    for i, size in enumerate(sizes):
        out.append(offset + shard_index(size, rank, world, f"{what}[{i}]"))
        offset += size
    return torch.cat(out)


@register_sharder(nn.Linear)
def _shard_linear(module: nn.Linear, dim: int, index: torch.Tensor) -> nn.Linear:
    w = module.weight.detach()
    weight = w.index_select(dim, index.to(w.device))
    keep_bias = dim == 0 and module.bias is not None
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=keep_bias, device="meta")
    out.weight = nn.Parameter(weight.clone(), requires_grad=module.weight.requires_grad)
    if keep_bias:
        out.bias = nn.Parameter(module.bias.detach().index_select(0, index.to(w.device)).clone(),
                                requires_grad=module.bias.requires_grad)
    return out
