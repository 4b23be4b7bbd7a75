"""Internal int4 layout and the GPTQ / AWQ checkpoint layouts: exact round trips, and the
dequantized weight of a checkpoint written the way AutoGPTQ / AutoAWQ write it."""
import pytest
import torch

from pyllmops.quant import packing
from pyllmops.quant.packing import AWQ_ORDER, Int4Weight, Int8Weight, from_awq, from_gptq, to_awq, to_gptq
from pyllmops.quant.rtn import rtn_int4


def _random_int4(n, k, group_size, act_order=False, zero_min=0, scale_dtype=torch.float16):
    g = packing.num_groups(k, group_size)
    values = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    scales = (torch.rand(n, g) * 0.02 + 1e-3).to(scale_dtype)
    zeros = torch.randint(zero_min, 16, (n, g), dtype=torch.uint8)
    g_idx = None
    if act_order:
        gs = k if group_size == -1 else group_size
        g_idx = (torch.argsort(torch.randperm(k)) // gs).to(torch.int32)
    return values, Int4Weight.from_values(values, scales, zeros, group_size, 4, g_idx)


def _naive_dequant(values, scales, zeros, g_idx):
    g = g_idx.long()
    return (values.double() - zeros.double()[:, g]) * scales.double()[:, g]


def test_pack_unpack(seed):
    v = torch.randint(0, 16, (5, 38), dtype=torch.uint8)
    p = packing.pack_int4(v)
    assert p.shape == (5, 19) and int(p[0, 0]) == int(v[0, 0]) | (int(v[0, 1]) << 4)
    assert torch.equal(packing.unpack_int4(p), v)
    with pytest.raises(ValueError, match="even number"):
        packing.pack_int4(torch.zeros(2, 3, dtype=torch.uint8))


@pytest.mark.parametrize("n, k, group_size", [(16, 128, 32), (24, 576, 128), (8, 256, -1)])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("version", [1, 2])
def test_gptq_round_trip(n, k, group_size, act_order, version, seed):
    values, w = _random_int4(n, k, group_size, act_order, zero_min=1 if version == 1 else 0)
    t = to_gptq(w, version)
    g = packing.num_groups(k, group_size)
    assert t["qweight"].shape == (k // 8, n) and t["qweight"].dtype == torch.int32
    assert t["qzeros"].shape == (g, n // 8) and t["scales"].shape == (g, n) and t["g_idx"].shape == (k,)
    back = from_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], group_size=group_size, version=version)
    assert torch.equal(back.qweight, w.qweight) and torch.equal(back.zeros, w.zeros) and torch.equal(back.scales, w.scales)
    reordered = act_order and group_size != -1  # one group: any order is the trivial g_idx
    assert (back.g_idx is None) == (not reordered)
    if reordered:
        assert torch.equal(back.g_idx, w.g_idx)
    again = to_gptq(back, version)
    assert all(torch.equal(again[key], t[key]) for key in t)


def test_gptq_matches_autogptq_packing(seed):
    """qweight packed along K, 8 per int32 with channel 8r + i in bits [4i, 4i + 4); qzeros store zero - 1."""
    n, k, gs = 16, 64, 32
    values, w = _random_int4(n, k, gs, zero_min=1)
    t = to_gptq(w)
    qw = t["qweight"].to(torch.int64) & 0xFFFFFFFF
    for r in range(k // 8):
        for i in range(8):
            assert torch.equal(((qw[r] >> (4 * i)) & 0xF).to(torch.uint8), values[:, 8 * r + i])
    qz = t["qzeros"].to(torch.int64) & 0xFFFFFFFF
    for c in range(n // 8):
        for i in range(8):
            assert torch.equal(((qz[:, c] >> (4 * i)) & 0xF) + 1, w.zeros[8 * c + i].long())
    torch.testing.assert_close(w.dequantize(torch.float64), _naive_dequant(values, w.scales, w.zeros, packing.default_g_idx(k, gs)))


def test_gptq_version1_zero_of_zero_is_an_error():
    _, w = _random_int4(8, 64, 32)
    w.zeros[0, 0] = 0
    with pytest.raises(ValueError, match="version=2"):
        to_gptq(w, version=1)


@pytest.mark.parametrize("n, k, group_size", [(16, 128, 32), (24, 576, 128), (8, 256, -1)])
def test_awq_round_trip(n, k, group_size, seed):
    values, w = _random_int4(n, k, group_size)
    t = to_awq(w)
    assert t["qweight"].shape == (k, n // 8) and t["qzeros"].shape == (packing.num_groups(k, group_size), n // 8)
    back = from_awq(t["qweight"], t["qzeros"], t["scales"], group_size=group_size)
    assert torch.equal(back.qweight, w.qweight) and torch.equal(back.zeros, w.zeros) and torch.equal(back.scales, w.scales)
    assert all(torch.equal(to_awq(back)[key], t[key]) for key in t)


def test_awq_interleaved_order(seed):
    """AutoAWQ packs column 8c + AWQ_ORDER[i] into nibble i of word c (order 0 2 4 6 1 3 5 7)."""
    n, k = 16, 32
    values, w = _random_int4(n, k, 32)
    qw = to_awq(w)["qweight"].to(torch.int64) & 0xFFFFFFFF
    intweight = values.t()  # [K, N]
    for c in range(n // 8):
        for i, col in enumerate(AWQ_ORDER):
            assert torch.equal(((qw[:, c] >> (4 * i)) & 0xF).to(torch.uint8), intweight[:, 8 * c + col])
    with pytest.raises(ValueError, match="act-order"):
        to_awq(_random_int4(8, 64, 32, act_order=True)[1])


@pytest.mark.parametrize("bad, match", [
    (lambda: from_gptq(torch.zeros(8, 16, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int32), torch.ones(2, 8), group_size=32), r"scales must have shape \[G, N=16\]"),
    (lambda: from_gptq(torch.zeros(8, 16, dtype=torch.int32), torch.zeros(3, 2, dtype=torch.int32), torch.ones(2, 16), group_size=32), r"qzeros must have shape"),
    (lambda: from_gptq(torch.zeros(8, 16, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int32), torch.ones(2, 16), group_size=32), "qweight must be a 2-D int32"),
    (lambda: from_gptq(torch.zeros(8, 16, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int32), torch.ones(2, 16), group_size=16), r"scales must have shape \[N, G\] = \[16, 4\]"),
    (lambda: from_gptq(torch.zeros(8, 16, dtype=torch.int32), torch.zeros(2, 2, dtype=torch.int32), torch.ones(2, 16), torch.zeros(64, dtype=torch.int32), group_size=32, bits=3), "only 4-bit"),
    (lambda: from_awq(torch.zeros(64, 2, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.int32), torch.ones(2, 16), group_size=32), r"qzeros must have shape"),
])
def test_bad_checkpoint_tensors(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_safetensors_round_trip(tmp_path, seed):
    _, a = _random_int4(16, 576, 128, scale_dtype=torch.float32)
    _, b = _random_int4(8, 64, 32, act_order=True)
    c = Int8Weight(torch.randint(-127, 128, (4, 32), dtype=torch.int8), torch.rand(4))
    path = str(tmp_path / "w.safetensors")
    packing.save_safetensors(path, {"layers.0.q": a, "layers.0.k": b, "head": c})
    back = packing.load_safetensors(path)
    for name, w in {"layers.0.q": a, "layers.0.k": b}.items():
        r = back[name]
        assert r.group_size == w.group_size and r.bits == w.bits
        assert torch.equal(r.qweight, w.qweight) and torch.equal(r.scales, w.scales) and torch.equal(r.zeros, w.zeros)
        assert (r.g_idx is None and w.g_idx is None) or torch.equal(r.g_idx, w.g_idx)
    assert torch.equal(back["head"].qweight, c.qweight) and torch.equal(back["head"].scales, c.scales)


def test_ragged_rtn_matches_per_group_rule(seed):
    """K = 576, group 128: 5 groups, the last of 64 channels quantized over its own range."""
    w = torch.randn(8, 576)
    q = rtn_int4(w, 128)
    assert q.scales.shape == (8, 5) and q.shape == (8, 576)
    tail = rtn_int4(w[:, 512:], -1)
    assert torch.equal(q.values()[:, 512:], tail.values()) and torch.equal(q.scales[:, 4:], tail.scales)
    step = q.scales.repeat_interleave(128, dim=1)[:, :576]
    assert bool(((q.dequantize() - w).abs() <= step * 0.5 + 1e-6).all())
