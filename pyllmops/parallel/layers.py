"""Tensor-parallel layers (Megatron-style), each built from a full layer so a checkpoint loads:
`ColumnParallelLinear.from_linear(linear, rank, world)` keeps this rank's shard of the weight.

The matmul itself is a *local module* cut from the full one by a registered sharder (see
sharding.py): nn.Linear, or a quantized linear whose type has a sharder. The layers only add the
communication around it:

    column:  x (replicated) -> copy_to -> local: [.., out/world] -> (gather_from -> [.., out])
    row:     x [.., in/world] (or scatter_to) -> local -> reduce_from -> + bias -> [.., out]
    vocab embedding: rows of the table split; ids outside the shard give 0, then reduce_from

Every layer checks, before its first collective, that the process group it runs on has the
rank and world size its shards were cut for; its state_dict records them too, so loading a shard
saved for another world size fails with a message naming both sizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyllmops.parallel.group import check_group
from pyllmops.parallel.mappings import all_reduce, copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp
from pyllmops.parallel.sharding import (
    check_aligned, features, input_alignment, merged_index, shard_index, shard_module, shard_size,
)


class _TPModule(nn.Module):
    """rank / world / group bookkeeping shared by the TP layers."""

    def __init__(self, rank: int, world: int, group) -> None:
        super().__init__()
        self.rank, self.world, self.group = rank, world, group
        self._group_checked = world == 1

    def _check_group(self) -> None:
        if not self._group_checked:
            check_group(self.rank, self.world, self.group, type(self).__name__)
            self._group_checked = True

    def get_extra_state(self) -> dict:
        return {"tp_rank": self.rank, "tp_world": self.world}

    def set_extra_state(self, state: dict) -> None:
        if state.get("tp_world") != self.world or state.get("tp_rank") != self.rank:
            raise ValueError(f"{type(self).__name__}: checkpoint shard was saved for rank {state.get('tp_rank')} of "
                             f"world size {state.get('tp_world')}, but this layer is rank {self.rank} of world size "
                             f"{self.world}; re-shard the full checkpoint with from_linear/from_embedding")

    def extra_repr(self) -> str:
        return f"rank={self.rank}, world={self.world}"


def _gather_order(index_of_rank, world: int, full: int) -> torch.Tensor | None:
    """Positions in the rank-ordered all-gather of local outputs that give the full output order
    (None when that is already the order). Replicated rows: the first rank holding them wins."""
    indices = [index_of_rank(r) for r in range(world)]
    if len({len(i) for i in indices}) > 1:
        raise ValueError(f"gather_output needs equal shards on every rank, got sizes {[len(i) for i in indices]}")
    pos = torch.full((full,), -1, dtype=torch.long)
    offsets = torch.tensor([0] + [len(i) for i in indices]).cumsum(0)
    for r in reversed(range(world)):
        pos[indices[r]] = offsets[r] + torch.arange(len(indices[r]))
    if bool((pos == torch.arange(full)).all()):
        return None
    return pos


class ColumnParallelLinear(_TPModule):
    """y = x W^T + b with W's output rows split across ranks.

    x: [..., in] replicated. Returns [..., out_local] (this rank's output features, in the order of
    `index`), or the full [..., out] when gather_output=True."""

    def __init__(self, local: nn.Module, index: torch.Tensor, out_features: int, rank: int, world: int,
                 group=None, *, gather_output: bool = False) -> None:
        super().__init__(rank, world, group)
        self.local = local
        self.in_features, self.out_features = features(local)[1], out_features
        self.gather_output = gather_output
        self.register_buffer("index", index, persistent=False)
        self._order: torch.Tensor | None = None
        self._index_of_rank = None  # set by the constructors, used once to build the gather order

    @classmethod
    def from_linear(cls, linear: nn.Module, rank: int, world: int, group=None, *, gather_output: bool = False):
        """Keep output rows [rank*out/world, (rank+1)*out/world) of `linear` (and of its bias)."""
        out = features(linear)[0]
        index_of = lambda r: shard_index(out, r, world, f"{type(linear).__name__}.out_features")  # noqa: E731
        return cls._build(linear, index_of, out, rank, world, group, gather_output)

    @classmethod
    def from_linear_rows(cls, linear: nn.Module, index_of, rank: int, world: int, group=None, *,
                         gather_output: bool = False):
        """Keep the output rows `index_of(rank)` (index_of: rank -> 1-D int64 tensor; every rank's
        rows together cover all rows, replicas allowed), e.g. whole attention heads."""
        return cls._build(linear, index_of, features(linear)[0], rank, world, group, gather_output)

    @classmethod
    def _build(cls, linear, index_of, out, rank, world, group, gather_output, **kw):
        index = index_of(rank)
        layer = cls(shard_module(linear, 0, index), index, out, rank, world, group, gather_output=gather_output, **kw)
        layer._index_of_rank = index_of
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_group()
        y = self.local(copy_to_tp(x, self.group, self.world))
        if not self.gather_output:
            return y
        if self._index_of_rank is not None:  # first gather: its order (and a shape check) first
            self._order = _gather_order(self._index_of_rank, self.world, self.out_features)
            self._index_of_rank = None
        y = gather_from_tp(y, self.group, self.world)
        return y if self._order is None else y.index_select(-1, self._order.to(y.device))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, out_features={self.out_features}, gather_output={self.gather_output}"


def _fuse(linears: list[nn.Linear]) -> nn.Linear:
    """One nn.Linear whose output rows are the given layers' rows stacked in order."""
    for lin in linears:
        if type(lin) is not nn.Linear:
            raise TypeError(f"fusing needs nn.Linear layers, got {type(lin).__name__}: quantize after fusing "
                            "(per-output-channel quantization commutes with stacking rows)")
    if len({lin.in_features for lin in linears}) != 1:
        raise ValueError(f"fused layers must share in_features, got {[lin.in_features for lin in linears]}")
    has_bias = [lin.bias is not None for lin in linears]
    if any(has_bias) and not all(has_bias):
        raise ValueError("fused layers must all have a bias or none")
    w = linears[0].weight
    fused = nn.Linear(w.shape[1], sum(lin.out_features for lin in linears), bias=all(has_bias), device="meta")
    fused.weight = nn.Parameter(torch.cat([lin.weight.detach() for lin in linears]))
    if all(has_bias):
        fused.bias = nn.Parameter(torch.cat([lin.bias.detach() for lin in linears]))
    return fused


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel layers sharing an input in one matmul (fused gate/up).

    Each rank holds its shard of every block; `split(y)` returns the blocks' local outputs."""

    def __init__(self, *args, output_sizes: list[int], **kw) -> None:
        super().__init__(*args, **kw)
        self.output_sizes = list(output_sizes)
        self.local_sizes = [s // self.world for s in self.output_sizes]

    @classmethod
    def from_linears(cls, linears: list[nn.Linear], rank: int, world: int, group=None, *, gather_output: bool = False):
        return cls.from_fused(_fuse(linears), [lin.out_features for lin in linears], rank, world, group,
                              gather_output=gather_output)

    @classmethod
    def from_fused(cls, fused: nn.Module, output_sizes: list[int], rank: int, world: int, group=None, *,
                   gather_output: bool = False):
        """`fused`: a linear-like layer whose output rows are blocks of `output_sizes` stacked."""
        out = features(fused)[0]
        if sum(output_sizes) != out:
            raise ValueError(f"output_sizes {output_sizes} sum to {sum(output_sizes)}, not out_features = {out}")
        index_of = lambda r: merged_index(output_sizes, r, world, "output_sizes")  # noqa: E731
        return cls._build(fused, index_of, out, rank, world, group, gather_output, output_sizes=output_sizes)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """y: [..., out_local] -> one [..., size/world] tensor per block."""
        return tuple(y.split(self.local_sizes, dim=-1))


def qkv_heads(num_heads: int, num_kv_heads: int, rank: int, world: int, *,
              allow_uneven: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(query heads, kv heads) that rank `rank` computes. Query heads are split evenly; KV heads
    are split when there are at least `world` of them, otherwise each is replicated on the
    world/num_kv_heads consecutive ranks whose query heads attend to it (GQA).

    allow_uneven: when the heads do not divide evenly, give each rank a contiguous run of whole
    KV groups (a KV head and its query heads), as even as possible -- e.g. 9 query / 3 KV heads on
    2 ranks: 3 + 6 query heads. Correct, but the larger shard sets the pace."""
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads = {num_heads} is not a multiple of num_kv_heads = {num_kv_heads}")
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
    g = num_heads // num_kv_heads
    if allow_uneven and num_kv_heads >= world and num_kv_heads % world:
        lo, hi = rank * num_kv_heads // world, (rank + 1) * num_kv_heads // world
        return torch.arange(lo * g, hi * g), torch.arange(lo, hi)
    q_local = shard_size(num_heads, world, "num_heads")
    q = torch.arange(rank * q_local, (rank + 1) * q_local)
    if num_kv_heads >= world:
        kv_local = shard_size(num_kv_heads, world, "num_kv_heads")
        return q, torch.arange(rank * kv_local, (rank + 1) * kv_local)
    if world % num_kv_heads:
        raise ValueError(f"num_kv_heads = {num_kv_heads} < world size {world} but does not divide it: "
                         "KV heads cannot be replicated evenly")
    return q, torch.tensor([rank // (world // num_kv_heads)])


def head_rows(heads: torch.Tensor, head_dim: int, base: int = 0) -> torch.Tensor:
    """Weight rows (or input columns) of `heads`, each head_dim wide, starting at `base`."""
    return (base + heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


class QKVParallelLinear(MergedColumnParallelLinear):
    """Fused Q/K/V projection, split by attention heads (GQA-aware, see qkv_heads).

    Local output [..., (q_heads + 2 * kv_heads) * head_dim]; `split(y)` gives (q, k, v) for this
    rank's `num_heads_local` query and `num_kv_heads_local` KV heads. Replicated KV weights get a
    gradient from each replica's query heads only: call `reduce_replicated_kv_grads()` after
    backward to sum them (every replica then holds the full-model gradient)."""

    def __init__(self, *args, num_heads: int, num_kv_heads: int, head_dim: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        q, kv = qkv_heads(num_heads, num_kv_heads, self.rank, self.world)
        self.num_heads_local, self.num_kv_heads_local = len(q), len(kv)
        self.local_sizes = [len(q) * head_dim, len(kv) * head_dim, len(kv) * head_dim]

    @classmethod
    def from_linears(cls, q: nn.Linear, k: nn.Linear, v: nn.Linear, num_heads: int, num_kv_heads: int,
                     rank: int, world: int, group=None):
        return cls.from_fused(_fuse([q, k, v]), num_heads, num_kv_heads, rank, world, group)

    @classmethod
    def from_fused(cls, fused: nn.Module, num_heads: int, num_kv_heads: int, rank: int, world: int, group=None):
        out = features(fused)[0]
        if out % (num_heads + 2 * num_kv_heads):
            raise ValueError(f"out_features = {out} is not (num_heads + 2 * num_kv_heads) = "
                             f"{num_heads + 2 * num_kv_heads} heads of equal size")
        hd = out // (num_heads + 2 * num_kv_heads)
        qkv_heads(num_heads, num_kv_heads, rank, world)  # validate before building anything

        def index_of(r: int) -> torch.Tensor:
            q, kv = qkv_heads(num_heads, num_kv_heads, r, world)
            return torch.cat([head_rows(q, hd), head_rows(kv, hd, num_heads * hd),
                              head_rows(kv, hd, (num_heads + num_kv_heads) * hd)])

        sizes = [num_heads * hd, num_kv_heads * hd, num_kv_heads * hd]
        return cls._build(fused, index_of, out, rank, world, group, False, output_sizes=sizes,
                          num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=hd)

    def reduce_replicated_kv_grads(self) -> None:
        """Sum the K/V weight (and bias) gradients over the ranks sharing each KV head."""
        if self.num_kv_heads >= self.world or self.world == 1:
            return
        self._check_group()
        hd, kv = self.head_dim, self.num_kv_heads_local * self.head_dim
        q_rows, head = self.num_heads_local * hd, self.rank // (self.world // self.num_kv_heads)
        for p in (self.local.weight, getattr(self.local, "bias", None)):
            if p is None or p.grad is None:
                continue
            kv_grad = p.grad[q_rows:]  # [2 * kv, ...]: this rank's K rows then V rows
            full = kv_grad.new_zeros((2, self.num_kv_heads, kv, *kv_grad.shape[1:]))
            full[:, head] = kv_grad.reshape(2, kv, *kv_grad.shape[1:])
            p.grad[q_rows:] = all_reduce(full, self.group)[:, head].reshape(kv_grad.shape)

    def split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(y.split(self.local_sizes, dim=-1))


class RowParallelLinear(_TPModule):
    """y = x W^T + b with W's input columns split across ranks; the partial products are summed.

    x: [..., in/world] when input_is_parallel (this rank's chunk), else [..., in] replicated (it
    is scattered first). Returns [..., out]: the full sum when reduce_results, else this rank's
    partial sum (bias added on rank 0 only, so summing the partials stays right). With
    skip_bias_add the bias is not added but returned: (y, bias), for fusing it downstream."""

    def __init__(self, local: nn.Module, bias: torch.Tensor | None, rank: int, world: int, group=None, *,
                 input_is_parallel: bool = True, reduce_results: bool = True, skip_bias_add: bool = False,
                 in_features: int | None = None) -> None:
        super().__init__(rank, world, group)
        self.local = local
        self.out_features = features(local)[0]
        self.in_features = features(local)[1] * world if in_features is None else in_features
        if not input_is_parallel and self.in_features != features(local)[1] * world:
            raise ValueError("input_is_parallel=False needs equal input shards (the input is split evenly)")
        self.bias = None if bias is None else nn.Parameter(bias)
        self.input_is_parallel, self.reduce_results, self.skip_bias_add = input_is_parallel, reduce_results, skip_bias_add

    @classmethod
    def from_linear(cls, linear: nn.Module, rank: int, world: int, group=None, *, input_is_parallel: bool = True,
                    reduce_results: bool = True, skip_bias_add: bool = False, index: torch.Tensor | None = None):
        """Keep input columns [rank*in/world, (rank+1)*in/world) of `linear` (or the columns
        `index`, e.g. this rank's attention heads; the input must then hold exactly those); the
        bias stays whole."""
        k, what = features(linear)[1], f"{type(linear).__name__}.in_features"
        if index is None:
            index = shard_index(k, rank, world, what, align=input_alignment(linear))
        check_aligned(index, input_alignment(linear), what)
        bias = getattr(linear, "bias", None)
        return cls(shard_module(linear, 1, index), None if bias is None else bias.detach().clone(), rank, world,
                   group, input_is_parallel=input_is_parallel, reduce_results=reduce_results,
                   skip_bias_add=skip_bias_add, in_features=k)

    def forward(self, x: torch.Tensor):
        self._check_group()
        if not self.input_is_parallel:
            x = scatter_to_tp(x, self.group, self.world)
        y = self.local(x)
        if self.reduce_results:
            y = reduce_from_tp(y, self.group, self.world)
        if self.skip_bias_add:
            return y, self.bias
        if self.bias is not None and (self.reduce_results or self.rank == 0):
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, in_features={self.in_features}, input_is_parallel={self.input_is_parallel}, "
                f"reduce_results={self.reduce_results}, skip_bias_add={self.skip_bias_add}")


class VocabParallelEmbedding(_TPModule):
    """nn.Embedding with the table's rows (the vocabulary) split across ranks.

    ids: [...] int64 in [0, num_embeddings) -> [..., dim] replicated. Each rank looks up the ids in
    its range [vocab_start, vocab_end), writes zeros for the others, and the sum over ranks fills
    in every row."""

    def __init__(self, weight: torch.Tensor, num_embeddings: int, rank: int, world: int, group=None) -> None:
        super().__init__(rank, world, group)
        self.num_embeddings, self.embedding_dim = num_embeddings, weight.shape[1]
        self.vocab_start = rank * weight.shape[0]
        self.vocab_end = self.vocab_start + weight.shape[0]
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, rank: int, world: int, group=None):
        index = shard_index(emb.num_embeddings, rank, world, "num_embeddings (vocabulary size)")
        return cls(emb.weight.detach()[index].clone(), emb.num_embeddings, rank, world, group)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be an int64 or int32 tensor, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(f"ids must lie in [0, {self.num_embeddings}), got values in [{int(ids.min())}, {int(ids.max())}]")
        self._check_group()
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.vocab_end - self.vocab_start)
        out = F.embedding(local.masked_fill(outside, 0), self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.group, self.world)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, vocab=[{self.vocab_start}, {self.vocab_end}) of {self.num_embeddings}, dim={self.embedding_dim}"


class ParallelLMHead(ColumnParallelLinear):
    """The LM head, column-parallel over the vocabulary: logits [..., vocab/world] for this
    rank's vocab range (feed them to vocab-parallel sampling / cross-entropy), or the full
    [..., vocab] with gather_output=True."""

    @classmethod
    def from_embedding(cls, emb: VocabParallelEmbedding, *, gather_output: bool = False) -> "ParallelLMHead":
        """Tied head: shares the embedding shard's Parameter (same vocab split)."""
        local = nn.Linear(emb.embedding_dim, emb.weight.shape[0], bias=False, device="meta")
        local.weight = emb.weight
        return cls(local, torch.arange(emb.vocab_start, emb.vocab_end), emb.num_embeddings, emb.rank, emb.world,
                   emb.group, gather_output=gather_output)

    @property
    def vocab_start(self) -> int:
        return self.rank * (self.out_features // self.world)
