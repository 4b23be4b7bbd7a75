"""The four communication primitives of tensor parallelism, as autograd functions.

Each is the adjoint of another, which is what makes training through TP layers exact:

| primitive           | forward                         | backward                         |
| ------------------- | ------------------------------- | -------------------------------- |
| copy_to_tp          | identity (input is replicated)  | all-reduce (sum) the gradient    |
| reduce_from_tp      | all-reduce (sum) partial sums   | identity                         |
| scatter_to_tp       | keep this rank's last-dim chunk | all-gather the gradient chunks   |
| gather_from_tp      | all-gather last-dim chunks      | keep this rank's gradient chunk  |

All take `group` (None: the default group) and `world`; with world == 1 they are the identity and
touch no process group. A failing collective (a peer died, or the timeout passed) is re-raised as
TPCommError naming the collective and the rank, so every surviving rank exits with a clear error."""
from __future__ import annotations

import torch
import torch.distributed as dist


class TPCommError(RuntimeError):
    """A tensor-parallel collective failed: a peer exited or the group timeout passed."""


def _run(name: str, group, fn):
    try:
        return fn()
    except Exception as err:  # gloo/nccl raise RuntimeError subclasses with transport details
        rank = dist.get_rank(group) if dist.is_initialized() else "?"
        raise TPCommError(f"tensor-parallel {name} failed on rank {rank} (a peer exited or the "
                          f"process-group timeout passed): {type(err).__name__}: {err}") from err


def all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """x reduced over the group (sum by default; a new tensor, x is left as it was)."""
    out = x.contiguous().clone()
    _run("all_reduce", group, lambda: dist.all_reduce(out, op=op, group=group))
    return out


def all_gather_last(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """[..., n] on each rank -> [..., world * n], rank r's chunk at [r*n, (r+1)*n)."""
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world)]
    _run("all_gather", group, lambda: dist.all_gather(parts, x.contiguous(), group=group))
    return torch.cat(parts, dim=-1)


def all_gather_first(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """[n, ...] on each rank -> [world * n, ...] (rank order)."""
    out = x.new_empty((world * x.shape[0], *x.shape[1:]))
    _run("all_gather", group, lambda: dist.all_gather_into_tensor(out, x.contiguous(), group=group))
    return out


def split_last(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    n = x.shape[-1]
    if n % world:
        raise ValueError(f"last dimension {n} is not divisible by the tensor-parallel world size {world}")
    step = n // world
    return x[..., rank * step:(rank + 1) * step].contiguous()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, world):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, ctx.group), None, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, world):
        return all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class _ScatterToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, world):
        ctx.group, ctx.world = group, world
        return split_last(x, dist.get_rank(group), world)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_last(grad, ctx.group, ctx.world), None, None


class _GatherFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, world):
        ctx.group, ctx.world = group, world
        return all_gather_last(x, group, world)

    @staticmethod
    def backward(ctx, grad):
        return split_last(grad, dist.get_rank(ctx.group), ctx.world), None, None


def copy_to_tp(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """Enter the TP region with a replicated x: identity forward, all-reduce of the gradient."""
    return x if world == 1 else _CopyToTP.apply(x, group, world)


def reduce_from_tp(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """Leave the TP region by summing per-rank partial results (identity gradient)."""
    return x if world == 1 else _ReduceFromTP.apply(x, group, world)


def scatter_to_tp(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """x: [..., n] replicated -> [..., n / world], this rank's chunk (gradient all-gathered)."""
    return x if world == 1 else _ScatterToTP.apply(x, group, world)


def gather_from_tp(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """x: [..., n] per rank -> [..., world * n] replicated (gradient split back)."""
    return x if world == 1 else _GatherFromTP.apply(x, group, world)
