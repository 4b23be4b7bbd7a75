"""A failing rank never hangs the others; bad shapes and mismatched world sizes fail with a clear
message before any collective."""
import time

import pytest
import torch
from torch import nn

from pyllmops.parallel import (
    ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear, VocabParallelEmbedding,
)
from pyllmops.parallel.launch import spawn
from tests.parallel._workers import fault_mid_forward, wrong_world

GROUP_TIMEOUT = 4.0


@pytest.mark.parametrize("world,mode", [(2, "raise"), (4, "raise"), pytest.param(2, "stall", marks=pytest.mark.slow)])
def test_failing_rank_stops_every_rank_within_timeout(world, mode):
    start = time.monotonic()
    outcomes = spawn(fault_mid_forward, world, (mode, 2 * GROUP_TIMEOUT), timeout=GROUP_TIMEOUT, deadline=60, threads=1,
                     raise_errors=False)
    elapsed = time.monotonic() - start
    assert "boom: rank 1 failed mid-forward" in outcomes[1].error
    for o in outcomes:
        if o.rank != 1:
            assert not o.ok and o.error.startswith("TPCommError"), o
            assert f"rank {o.rank}" in o.error and "peer exited or the process-group timeout passed" in o.error
    # Bounded: each survivor reported within the group timeout of the failure (plus start-up).
    assert elapsed < 60, f"run took {elapsed:.1f} s"
    survivors = [o.seconds for o in outcomes if o.rank != 1]
    if mode == "raise":  # a dead peer is noticed at once, well before the timeout
        assert max(survivors) - outcomes[1].seconds < GROUP_TIMEOUT
    else:  # a silent peer: the survivors give up after the timeout, before the staller wakes
        assert max(survivors) < outcomes[1].seconds


def test_layer_cut_for_another_world_size_fails_before_collective():
    outcomes = spawn(wrong_world, 2, timeout=GROUP_TIMEOUT, deadline=60, threads=1, raise_errors=False)
    for o in outcomes:
        assert not o.ok and o.error.startswith("ValueError")
        assert "cut for world size 4 but this run's process group has 2 ranks" in o.error


def test_dimension_not_divisible():
    with pytest.raises(ValueError, match=r"out_features = 10 is not divisible by the tensor-parallel world size 4"):
        ColumnParallelLinear.from_linear(nn.Linear(8, 10), 0, 4)
    with pytest.raises(ValueError, match=r"in_features = 9 is not divisible .* world size 2"):
        RowParallelLinear.from_linear(nn.Linear(9, 8), 1, 2)
    with pytest.raises(ValueError, match=r"num_embeddings \(vocabulary size\) = 11 is not divisible"):
        VocabParallelEmbedding.from_embedding(nn.Embedding(11, 4), 0, 2)
    with pytest.raises(ValueError, match=r"output_sizes\[1\] = 3 is not divisible"):
        MergedColumnParallelLinear.from_linears([nn.Linear(4, 4), nn.Linear(4, 3)], 0, 2)
    with pytest.raises(ValueError, match=r"num_heads = 6 is not divisible by the tensor-parallel world size 4"):
        QKVParallelLinear.from_linears(nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 8), 6, 2, 0, 4)
    with pytest.raises(ValueError, match=r"num_kv_heads = 3 < world size 4 but does not divide it"):
        QKVParallelLinear.from_linears(nn.Linear(8, 48), nn.Linear(8, 12), nn.Linear(8, 12), 12, 3, 0, 4)


class _Grouped(nn.Linear):
    """A linear carrying a quantization group size, like a W4A16 layer."""
    group_size = 32


def test_quantization_group_crossing_shard_boundary():
    layer = _Grouped(96, 8)
    with pytest.raises(ValueError, match=r"in_features = 96 split over 2 ranks gives shards of 48, which is not a "
                                         r"multiple of the quantization group size 32"):
        RowParallelLinear.from_linear(layer, 0, 2)
    assert RowParallelLinear.from_linear(layer, 2, 3).local.in_features == 32  # 3 x 32 is fine


def test_checkpoint_shard_for_another_world_size():
    full = nn.Linear(16, 8)
    saved = ColumnParallelLinear.from_linear(full, 0, 2).state_dict()
    with pytest.raises(ValueError, match=r"saved for rank 0 of world size 2, but this layer is rank 0 of world size 4"):
        ColumnParallelLinear.from_linear(full, 0, 4).load_state_dict(saved)
    ColumnParallelLinear.from_linear(full, 0, 2).load_state_dict(saved)  # the matching world loads


def test_bad_rank_and_ids():
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), got 2"):
        ColumnParallelLinear.from_linear(nn.Linear(4, 4), 2, 2)(torch.randn(1, 4))
    emb = VocabParallelEmbedding.from_embedding(nn.Embedding(8, 4), 0, 1)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 8\)"):
        emb(torch.tensor([0, 8]))
