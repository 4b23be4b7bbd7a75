"""Vocab-parallel sampling: each rank holds its shard of the logits [B, V/world] (from a
ParallelLMHead without gather_output); every rank returns the same token ids [B], equal bit for
bit to what `pyllmops.sample` returns on the full [B, V] logits with the same parameters, seed and
offset (whichever backend it dispatches to), without moving the vocabulary:

  greedy rows (t = 0)   each rank sends (max, first index of the max): 2 numbers. The token is the
                        smallest index holding the global max, which is the sampler's definition.
  top-k rows (0<k<V)    each rank sends its k largest logits and their ids (k' = the batch's
                        largest k). Their union holds every global survivor (x >= the k-th largest):
                        no rank can contribute more than k values above the k-th. The survivors,
                        in vocabulary order, form a compact row; `pyllmops.sample` runs on it with
                        the same k, top-p, min-p, temperature, seed and offset. That is the very
                        computation the sampler does on the full row: its max, its top-k set, the
                        weights exp((x - m) / t), Z = their sum, the top-p and min-p cuts and the
                        inverse CDF in vocabulary order all see the same values in the same order.
                        (Ties at the k-th value past k' on one rank: a second round with the
                        largest such count.)
  rows without top-k    Z then runs over the whole vocabulary, and no backend's summation order
                        can be rebuilt from per-rank partial sums, so these rows are gathered whole
                        (4 V bytes per row) and sampled as they are: exact, but not small. Pass a
                        top-k (e.g. 1024, which rarely changes the distribution) to stay on the
                        candidate path.

All ranks must call it with the same parameters (they are cheap to keep replicated)."""
from __future__ import annotations

import numbers

import torch
import torch.distributed as dist

from pyllmops.parallel.mappings import _run, all_gather_last, all_reduce

MAX = dist.ReduceOp.MAX

Param = float | int | torch.Tensor | None


def _rows(name: str, value: Param, b: int, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dim() == 1 and value.shape[0] != b:
            raise ValueError(f"{name} must be a scalar or have shape ({b},), got {tuple(value.shape)}")
        return value.to(device=device, dtype=dtype).expand(b).contiguous()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.full((b,), value, dtype=dtype, device=device)


def _sampler():
    try:
        from pyllmops.ops.sampling import sample
    except ImportError as err:  # the fused sampler ships with pyllmops.ops; a partial install lacks it
        raise RuntimeError("vocab-parallel sampling needs pyllmops.sample (pyllmops/ops/sampling.py)") from err
    return sample


def sample_vocab_parallel(logits: torch.Tensor, group=None, world: int | None = None, *, temperature: Param = 1.0,
                          top_k: Param = 0, top_p: Param = 1.0, min_p: Param = None, seed: Param = None,
                          offset: Param = None) -> torch.Tensor:
    """logits: [B, V/world] this rank's contiguous vocabulary shard (rank r holds ids
    [r*V/world, (r+1)*V/world)). Parameters as `pyllmops.sample` (scalars or [B] tensors; a scalar
    seed s means s + row; seed=None draws seeds on rank 0 and shares them).
    Returns ids [B] int64, the same on every rank."""
    if world is None:
        world = dist.get_world_size(group) if dist.is_initialized() else 1
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty [B, V/world] tensor, got {getattr(logits, 'shape', type(logits))}")
    b, v_local = logits.shape
    dev = logits.device
    sample = _sampler()
    if world == 1:
        return sample(logits, temperature, top_k, top_p, min_p, seed, offset)
    rank, v = dist.get_rank(group), v_local * world
    x = logits.float()
    t = _rows("temperature", temperature, b, torch.float32, dev)
    k = _rows("top_k", top_k, b, torch.int64, dev)
    p = _rows("top_p", top_p, b, torch.float32, dev)
    q = _rows("min_p", 0.0 if min_p is None else min_p, b, torch.float32, dev)
    if seed is None:
        s = torch.randint(-2**63, 2**63 - 1, (b,), dtype=torch.int64, device=dev)
        _run("broadcast", group, lambda: dist.broadcast(s, dist.get_global_rank(group, 0) if group else 0, group=group))
    elif isinstance(seed, torch.Tensor):
        s = _rows("seed", seed, b, torch.int64, dev)
    else:
        s = _rows("seed", seed, b, torch.int64, dev) + torch.arange(b, device=dev)
    off = _rows("offset", 0 if offset is None else offset, b, torch.int64, dev)
    # The sampler's own range checks, done here for every row: greedy rows never reach it.
    if not bool(((t >= 0) & torch.isfinite(t)).all()):
        raise ValueError("temperature must be finite and >= 0 (0 = greedy)")
    if not bool(((p > 0) & (p <= 1)).all()):
        raise ValueError("top_p must be in (0, 1] (1 disables it)")
    if not bool(((q >= 0) & (q <= 1)).all()):
        raise ValueError("min_p must be in [0, 1] (0 disables it)")

    # Bad rows (NaN/+inf anywhere, or all -inf) must fail on every rank alike, not just the rank
    # holding the bad value (the others would wait in the next collective).
    bad = (torch.isnan(x) | (x == float("inf"))).any(-1)
    finite_any = (x != float("-inf")).any(-1)
    flags = all_reduce(torch.stack([bad, finite_any]).to(torch.int32), group, MAX)
    if bool((flags[0] > 0).any()):
        raise ValueError(f"logits row {int((flags[0] > 0).nonzero()[0, 0])} contains NaN or +inf")
    if bool((flags[1] == 0).any()):
        raise ValueError(f"logits row {int((flags[1] == 0).nonzero()[0, 0])} is all -inf (nothing to sample)")
    out = torch.empty(b, dtype=torch.int64, device=dev)
    greedy = t == 0
    topk = ~greedy & (k > 0) & (k < v)
    full = ~greedy & ~topk

    if bool(greedy.any()):
        rows = greedy.nonzero()[:, 0]
        xs = x[rows]
        arg = xs.argmax(-1)  # the first index of the max (documented for argmax)
        mx = xs.gather(1, arg[:, None])[:, 0]
        m_all = all_gather_last(mx[:, None], group, world)                           # [G, world]
        i_all = all_gather_last((arg + rank * v_local)[:, None], group, world)
        winner = torch.where(m_all == m_all.max(-1, keepdim=True).values, i_all, torch.full_like(i_all, v))
        out[rows] = winner.min(-1).values

    if bool(topk.any()):
        rows = topk.nonzero()[:, 0]
        out[rows] = _sample_top_k(sample, x[rows], k[rows], t[rows], p[rows], q[rows], s[rows], off[rows],
                                  group, world, rank)

    if bool(full.any()):
        rows = full.nonzero()[:, 0]
        whole = all_gather_last(x[rows].contiguous(), group, world)                  # [F, V]
        out[rows] = sample(whole, t[rows], k[rows], p[rows], q[rows], s[rows], off[rows])
    return out


def _sample_top_k(sample, x, k, t, p, q, s, off, group, world: int, rank: int) -> torch.Tensor:
    """The top-k rows: candidate exchange, then the sampler on the compact survivor rows."""
    n, v_local = x.shape
    want = int(k.max())
    while True:
        kk = min(want, v_local)
        vals, ids = torch.topk(x, kk, dim=-1)
        ids = ids + rank * v_local
        all_vals = all_gather_last(vals.contiguous(), group, world)                  # [n, world*kk]
        all_ids = all_gather_last(ids.contiguous(), group, world)
        kth = all_vals.sort(-1, descending=True).values.gather(1, (k - 1)[:, None])  # [n, 1]
        # Every survivor x >= kth must be among the candidates; ties at kth past kk on a rank are not.
        local_need = (x >= kth).sum(-1)
        short = all_reduce((local_need - (vals >= kth).sum(-1)).max().reshape(1), group, MAX)
        if int(short) == 0:
            break
        want = int(all_reduce(local_need.max().reshape(1), group, MAX))
    keep = all_vals >= kth
    width = int(keep.sum(-1).max()) + 1  # + one -inf column: k stays < the compact row's length
    order = torch.where(keep, all_ids, torch.full_like(all_ids, 2**62)).sort(-1).indices[:, :width - 1]
    cvals = torch.where(keep.gather(1, order), all_vals.gather(1, order), float("-inf"))
    cids = all_ids.gather(1, order)
    compact = torch.cat([cvals, cvals.new_full((n, 1), float("-inf"))], 1)
    pos = sample(compact, t, k, p, q, s, off)
    return cids.gather(1, pos[:, None])[:, 0]


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group=None,
                                 world: int | None = None) -> torch.Tensor:
    """Per-position -log softmax(logits)[target] from the vocabulary shards, exchanging only a
    max, a sum of exponentials and the target logit per position (no gradient).

    logits: [N, V/world] this rank's shard (float); target: [N] int64 global ids. Returns [N] float32."""
    if world is None:
        world = dist.get_world_size(group) if dist.is_initialized() else 1
    x = logits.float()
    if world == 1:
        return torch.nn.functional.cross_entropy(x, target, reduction="none")
    rank, v_local = dist.get_rank(group), x.shape[-1]
    m = all_reduce(x.max(-1, keepdim=True).values, group, MAX)
    local = target - rank * v_local
    inside = (local >= 0) & (local < v_local)
    picked = torch.where(inside, x.gather(1, local.clamp(0, v_local - 1)[:, None])[:, 0], 0.0)
    sums = torch.stack([(x - m).exp().sum(-1, dtype=torch.float64), picked.double()], 0)
    sums = all_reduce(sums, group)
    return (sums[0].log() + m[:, 0].double() - sums[1]).float()


class VocabParallelSampler:
    """The `sampler(logits, step) -> ids` callable of pyllmops.models.generate for a model whose
    LM head keeps vocabulary shards: logits [B, V/world] -> ids [B] (the same on every rank).

    Token `step` of row r is drawn with seed + r and offset = step, exactly as
    pyllmops.sample(full_logits, ..., seed=seed, offset=step) would: the tokens do not depend on
    the world size (world 1 is plain pyllmops.sample)."""

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float | None = None,
                 seed: int = 0, group=None, world: int = 1) -> None:
        self.params = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        self.group, self.world = group, world

    def __call__(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        return sample_vocab_parallel(logits, self.group, self.world, offset=step, **self.params)


__all__ = ["VocabParallelSampler", "sample_vocab_parallel", "vocab_parallel_cross_entropy"]
