"""TP layers holding quantized weights (W8A8, W4A16 incl. act-order g_idx, W8A16): column and row
shards against the full quantized layer, on 2 and 4 gloo ranks; group/shard misalignment errors."""
import pytest
import torch

pytest.importorskip("pyllmops.nn.w8a8", reason="needs W8A8Linear")
pytest.importorskip("pyllmops.nn.weight_only", reason="needs WeightOnlyLinear")

from pyllmops.nn.weight_only import WeightOnlyLinear  # noqa: E402
from pyllmops.parallel import ColumnParallelLinear, RowParallelLinear  # noqa: E402
from pyllmops.parallel.launch import spawn  # noqa: E402
from tests.parallel._workers import check_quantized  # noqa: E402

# Exact shards (same integers and scales, only the float sums split differently) ...
EXACT = 1e-5
# ... except W8A8 row shards: dynamic per-token activation scales come from each K-slice.
W8A8_ROW = 2e-2


@pytest.mark.parametrize("world", [2, 4])
def test_quantized_shards_match_full_layer(seed, world):
    for o in spawn(check_quantized, world, (seed,), timeout=30, deadline=120, threads=1):
        res = o.value
        assert all(res[k] == 1.0 for k in res if k.endswith("local_type")), res
        bad = {k: v for k, v in res.items() if not k.endswith("local_type")
               and not v <= (W8A8_ROW if k == "w8a8.row" else EXACT)}
        assert not bad, f"seed={seed} rank {o.rank}: {bad}"


def test_group_crossing_shard_boundary_names_sizes():
    # K = 576 in groups of 128 (the last one ragged): halves of 288 cut a group.
    layer = WeightOnlyLinear.from_linear(torch.nn.Linear(576, 64), bits=4, group_size=128)
    with pytest.raises(ValueError, match=r"in_features = 576 split over 2 ranks gives shards of 288, which is not a "
                                         r"multiple of the quantization group size 128"):
        RowParallelLinear.from_linear(layer, 0, 2)
    with pytest.raises(ValueError, match=r"shard \[0, 192\) \(192 features\) does not start and end on multiples of "
                                         r"the quantization group size 128"):
        RowParallelLinear.from_linear(layer, 0, 2, index=torch.arange(192))
    assert ColumnParallelLinear.from_linear(layer, 1, 2).local.out_features == 32  # output rows split freely


def test_shards_keep_compute_dtype():
    layer = WeightOnlyLinear.from_linear(torch.nn.Linear(256, 64), bits=4, group_size=128)
    layer.compute_dtype = torch.bfloat16
    assert ColumnParallelLinear.from_linear(layer, 1, 2).local.compute_dtype == torch.bfloat16
    assert RowParallelLinear.from_linear(layer, 0, 2).local.compute_dtype == torch.bfloat16
