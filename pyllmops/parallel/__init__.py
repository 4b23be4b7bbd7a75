"""pyllmops.parallel: tensor parallelism on torch.distributed (NCCL on CUDA, gloo on CPU).

    tp = init_tensor_parallel()                      # under torchrun
    fc1 = ColumnParallelLinear.from_linear(full_fc1, tp.rank, tp.world)
    fc2 = RowParallelLinear.from_linear(full_fc2, tp.rank, tp.world)
    y = fc2(act(fc1(x)))                             # == full_fc2(act(full_fc1(x))), one all-reduce
"""
from pyllmops.parallel.group import DEFAULT_TIMEOUT, TPGroup, check_group, init_tensor_parallel
from pyllmops.parallel.layers import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
    head_rows,
    qkv_heads,
)
from pyllmops.parallel.mappings import TPCommError, copy_to_tp, gather_from_tp, reduce_from_tp, scatter_to_tp
from pyllmops.parallel import quantized as _quantized  # noqa: F401  (registers the quantized sharders)
from pyllmops.parallel.sampling import VocabParallelSampler, sample_vocab_parallel, vocab_parallel_cross_entropy
from pyllmops.parallel.sharding import register_sharder, shard_index, shard_module

__all__ = [
    "DEFAULT_TIMEOUT", "ColumnParallelLinear", "MergedColumnParallelLinear", "ParallelLMHead", "QKVParallelLinear",
    "RowParallelLinear", "TPCommError", "TPGroup", "VocabParallelEmbedding", "check_group", "copy_to_tp",
    "gather_from_tp", "head_rows", "init_tensor_parallel", "qkv_heads", "reduce_from_tp", "register_sharder", "scatter_to_tp",
    "VocabParallelSampler", "sample_vocab_parallel", "shard_index", "shard_module", "vocab_parallel_cross_entropy",
]
