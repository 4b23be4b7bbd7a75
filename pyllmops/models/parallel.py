"""Tensor-parallel Llama: `parallelize_llama(model, tp)` swaps the projections, the embedding and
the LM head of a loaded Llama for their TP versions in place (Megatron layout), so each rank keeps
1/world of the weights and the model's own forward runs unchanged:

    attention   q/k/v_proj: column-parallel by whole heads (GQA groups kept on one rank; KV heads
                replicated when there are fewer than ranks) -> local attention -> o_proj:
                row-parallel over the same heads -> one all-reduce
    MLP         gate/up_proj: column-parallel -> silu(gate) * up locally -> down_proj:
                row-parallel -> one all-reduce
    embedding   vocabulary-parallel -> one all-reduce
    LM head     vocabulary-parallel logits [..., V/world] (tied to the embedding shard); feed them
                to pyllmops.parallel.sample_vocab_parallel, or build with gather_logits=True to get
                the full logits (for perplexity)

Heads that do not divide by the world size (SmolLM2-135M: 9 query / 3 KV heads on 2 ranks) are
split unevenly by whole KV groups."""
from __future__ import annotations

import dataclasses

from pyllmops.models.llama import Llama
from pyllmops.parallel import (
    ColumnParallelLinear, ParallelLMHead, RowParallelLinear, TPGroup, VocabParallelEmbedding, head_rows, qkv_heads,
)


def parallelize_llama(model: Llama, tp: TPGroup, *, gather_logits: bool = False) -> Llama:
    """Shard `model` (full weights, on every rank) for rank tp.rank of tp.world, in place; returns it.
    Afterwards model.config.n_kv_heads is this rank's KV head count (what its KV cache holds) and
    model.tp is `tp`. Raises ValueError (before any collective) when a size does not split."""
    cfg = model.config
    rank, world, group = tp.rank, tp.world, tp.group
    hd = cfg.head_dim

    def heads_of(r: int):
        return qkv_heads(cfg.n_heads, cfg.n_kv_heads, r, world, allow_uneven=True)

    q_heads, kv_heads = heads_of(rank)
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = ColumnParallelLinear.from_linear_rows(attn.q_proj, lambda r: head_rows(heads_of(r)[0], hd),
                                                            rank, world, group)
        attn.k_proj = ColumnParallelLinear.from_linear_rows(attn.k_proj, lambda r: head_rows(heads_of(r)[1], hd),
                                                            rank, world, group)
        attn.v_proj = ColumnParallelLinear.from_linear_rows(attn.v_proj, lambda r: head_rows(heads_of(r)[1], hd),
                                                            rank, world, group)
        attn.o_proj = RowParallelLinear.from_linear(attn.o_proj, rank, world, group, index=head_rows(q_heads, hd))
        attn.n_heads, attn.n_kv_heads = len(q_heads), len(kv_heads)
        mlp.gate_proj = ColumnParallelLinear.from_linear(mlp.gate_proj, rank, world, group)
        mlp.up_proj = ColumnParallelLinear.from_linear(mlp.up_proj, rank, world, group)
        mlp.down_proj = RowParallelLinear.from_linear(mlp.down_proj, rank, world, group)
    tied = model.lm_head.weight is model.embed_tokens.weight
    model.embed_tokens = VocabParallelEmbedding.from_embedding(model.embed_tokens, rank, world, group)
    if tied:
        model.lm_head = ParallelLMHead.from_embedding(model.embed_tokens, gather_output=gather_logits)
    else:
        model.lm_head = ParallelLMHead.from_linear(model.lm_head, rank, world, group, gather_output=gather_logits)
    model.config = dataclasses.replace(cfg, n_kv_heads=len(kv_heads))
    model.tp = tp
    return model
