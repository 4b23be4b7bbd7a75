"""Sharders for the quantized linear layers, so every TP layer can hold them as its local matmul
(`ColumnParallelLinear.from_linear(W8A8Linear, rank, world)` etc.). Registered by qualified class
name: nothing here imports pyllmops.nn, and a build without those modules simply lacks them.

W8A8Linear (int8 weight [N, K], per-output-channel weight_scale [1, N]):
    column shard: weight rows, their scales and bias travel together -- the same numbers as the
                  full layer's rows, so the outputs are the full layer's columns;
    row shard:    weight columns; the per-channel scales stay whole (a scale belongs to an output
                  row, which every K-shard still has). Dynamic activation quantization then takes
                  each token's absmax over this rank's K-slice only: as accurate as the full
                  layer or more, but not bit-equal to it.
WeightOnlyLinear (W4A16: packed int4 [N, K/2], scales/zeros [N, G]; W8A16: int8 [N, K], scales [N]):
    column shard: rows of everything;
    row shard without act-order: whole groups only -- the shard must start and end on multiples of
                  group_size (checked by the layer, naming the sizes);
    row shard with act-order (g_idx / perm): the rank's contiguous input channels, each with its
                  own group; the groups they use are kept (renumbered) with their scales and zeros,
                  and the shard is rebuilt as a g_idx weight (WeightOnlyLinear re-derives its
                  permutation when the groups are whole)."""
from __future__ import annotations

import torch
from torch import nn

from pyllmops.parallel.sharding import register_sharder


@register_sharder("pyllmops.nn.w8a8.W8A8Linear")
def _shard_w8a8(m: nn.Module, dim: int, index: torch.Tensor) -> nn.Module:
    index = index.to(m.weight.device)
    keep_bias = dim == 0 and m.bias is not None
    n, k = (len(index), m.in_features) if dim == 0 else (m.out_features, len(index))
    out = type(m)(k, n, bias=keep_bias, act=m.act, device=m.weight.device)
    out.weight = m.weight.index_select(dim, index).contiguous()
    out.weight_scale = (m.weight_scale[:, index] if dim == 0 else m.weight_scale).clone()
    if keep_bias:
        out.bias = m.bias[index].clone()
    if m.input_scale is not None:
        out.input_scale = m.input_scale.clone()
    return out


def _int4_input_order(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [N, K] uint8, group [K] int64) of a W4A16 layer in input-channel order."""
    from pyllmops.quant.packing import unpack_int4

    values = unpack_int4(m.qweight)
    k = values.shape[1]
    group = m.g_idx.long() if m.g_idx is not None else torch.arange(k, device=values.device) // m.group_size
    if m.perm is not None:  # stored column j holds input channel perm[j]
        inv = torch.argsort(m.perm)
        values, group = values[:, inv], group[inv]
    return values, group


@register_sharder("pyllmops.nn.weight_only.WeightOnlyLinear")
def _shard_weight_only(m: nn.Module, dim: int, index: torch.Tensor) -> nn.Module:
    shard = _shard_weight(m, dim, index)
    shard.compute_dtype = m.compute_dtype
    return shard


def _shard_weight(m: nn.Module, dim: int, index: torch.Tensor) -> nn.Module:
    from pyllmops.quant.packing import Int4Weight, Int8Weight

    index = index.to(m.qweight.device)
    bias = m.bias[index] if dim == 0 and m.bias is not None else None
    input_scale = None if m.input_scale is None else (m.input_scale if dim == 0 else m.input_scale[index])
    if not m.int4:
        w = (Int8Weight(m.qweight[index], m.scales[index]) if dim == 0
             else Int8Weight(m.qweight[:, index].contiguous(), m.scales.clone()))
        return type(m)(w, bias, input_scale)
    act_order = m.perm is not None or m.g_idx is not None
    values, group = _int4_input_order(m)
    if dim == 0:
        w = Int4Weight.from_values(values[index], m.scales[index], m.zeros[index], m.group_size, m.bits,
                                   group if act_order else None)
        return type(m)(w, bias, input_scale)
    values, group = values[:, index], group[index]
    if not act_order:  # whole groups (alignment checked by the layer): slice the group columns
        g0, ng = int(group[0]), -(-len(index) // m.group_size)
        w = Int4Weight.from_values(values, m.scales[:, g0:g0 + ng], m.zeros[:, g0:g0 + ng], m.group_size, m.bits)
        return type(m)(w, None, input_scale)
    used, local = torch.unique(group, return_inverse=True)
    ks = len(index)
    # The format ties the number of scale columns to ceil(K / group_size); with g_idx given,
    # group_size only sets that count, so pick one that leaves a column for every used group.
    gs = m.group_size if -(-ks // m.group_size) >= len(used) else ks // len(used)
    n_cols = -(-ks // gs)
    pad = used.new_zeros(n_cols - len(used))  # unused columns: any valid scale
    cols = torch.cat([used, pad])
    w = Int4Weight.from_values(values, m.scales[:, cols], m.zeros[:, cols], gs, m.bits, local)
    return type(m)(w, None, input_scale)
