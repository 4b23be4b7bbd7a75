"""Each format's tensors against an independent reading of its layout (numpy bit arithmetic as
AutoGPTQ / AutoAWQ document it, compressed-tensors' own packing functions when installed), and
export -> import round trips for every format x (sym, asym) x (group, channel, act-order)."""
import warnings

import numpy as np
import pytest
import torch

from pyllmops.formats import FormatError, FormatWarning, QuantizedLinear, awq, compressed_tensors, gptq
from pyllmops.quant.packing import Int4Weight, Int8Weight

CASES = [(sym, kind) for sym in (True, False) for kind in ("group", "channel", "act-order")]


def random_int4(n=32, k=256, group_size=64, symmetric=True, act_order=False, bits=4, zero_min=1):
    top = 2 ** bits - 1
    values = torch.randint(0, top + 1, (n, k), dtype=torch.uint8)
    gs = k if group_size == -1 else group_size
    g = -(-k // gs)
    zeros = torch.full((n, g), 2 ** (bits - 1), dtype=torch.uint8) if symmetric else \
        torch.randint(zero_min, top + 1, (n, g), dtype=torch.uint8)
    g_idx = None
    if act_order:
        g_idx = (torch.arange(k) // gs)[torch.randperm(k)].to(torch.int32)
    return Int4Weight.from_values(values, torch.rand(n, g) + 0.01, zeros, group_size, bits, g_idx)


def weight_for(kind, symmetric, **kw):
    return random_int4(group_size=-1 if kind == "channel" else 64, symmetric=symmetric, act_order=kind == "act-order",
                       **kw)


def assert_same(a: Int4Weight, b: Int4Weight):
    assert torch.equal(a.dequantize(torch.float64), b.dequantize(torch.float64))
    assert torch.equal(a.values(), b.values()) and torch.equal(a.zeros, b.zeros) and torch.equal(a.scales, b.scales)


# ----------------------------------------------------------------------------- independent readers
def gptq_reference_dequant(t, group_size, bits=4):
    """AutoGPTQ's dequantization, written from its documented layout with numpy."""
    qw = t["qweight"].numpy().view(np.uint32)
    qz = t["qzeros"].numpy().view(np.uint32)
    pack = 32 // bits
    shifts = np.arange(pack, dtype=np.uint32) * bits
    w = ((qw[:, None, :] >> shifts[None, :, None]) & (2 ** bits - 1)).reshape(-1, qw.shape[1])  # [K, N]
    z = ((qz[:, :, None] >> shifts[None, None, :]) & (2 ** bits - 1)).reshape(qz.shape[0], -1) + 1  # v1 offset
    g = t["g_idx"].numpy().astype(np.int64)
    s = t["scales"].double().numpy()
    return torch.from_numpy(((w.astype(np.float64) - z[g]) * s[g]).T)


def awq_reference_dequant(t, group_size):
    """AutoAWQ's unpack: nibble i of a word holds column AWQ_REVERSE[i] of its 8 (shifts 0, 16, 4, 20, ...)."""
    order = np.array([0, 4, 1, 5, 2, 6, 3, 7])
    shifts = (order * 4).astype(np.uint32)

    def unpack(x):
        x = x.numpy().view(np.uint32)
        return ((x[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(x.shape[0], -1)

    w, z = unpack(t["qweight"]), unpack(t["qzeros"])  # [K, N], [G, N]
    g = np.arange(w.shape[0]) // group_size
    s = t["scales"].double().numpy()
    return torch.from_numpy(((w.astype(np.float64) - z[g]) * s[g]).T)


def ct_reference_dequant(t, name, args):
    """compressed-tensors' own unpacking and dequantization."""
    pytest.importorskip("compressed_tensors")
    try:  # compressed-tensors >= 0.13
        from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    except ImportError:
        from compressed_tensors.compressors.quantized_compressors.pack_quantized import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    shape = torch.Size(t[f"{name}.weight_shape"].tolist())
    q = unpack_from_int32(t[f"{name}.weight_packed"], args["num_bits"], shape)
    zp = None
    if not args["symmetric"]:
        zp = unpack_from_int32(t[f"{name}.weight_zero_point"], args["num_bits"],
                               torch.Size((shape[0], t[f"{name}.weight_scale"].shape[1])), packed_dim=0)
    scale = t[f"{name}.weight_scale"].double()
    g_idx = t.get(f"{name}.weight_g_idx")
    if g_idx is not None:  # compressed-tensors >= 0.13 has no g_idx: gather each channel's group by hand
        g = g_idx.long()
        return (q.double() - (0 if zp is None else zp.double()[:, g])) * scale[:, g]
    return dequantize(q, scale, zp, args=QuantizationArgs(**args)).double()


# ----------------------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("sym,kind", CASES)
def test_gptq_round_trip_and_reference_layout(sym, kind, seed):
    w = weight_for(kind, sym)
    tensors, qc = gptq.export({"l": QuantizedLinear(w)})
    assert (qc["sym"], qc["desc_act"], qc["group_size"]) == (sym, kind == "act-order", -1 if kind == "channel" else 64)
    layer = {k[2:]: v for k, v in tensors.items()}
    assert layer["qweight"].dtype == torch.int32 and tuple(layer["qweight"].shape) == (256 // 8, 32)
    gs = 256 if kind == "channel" else 64
    assert torch.equal(gptq_reference_dequant(layer, gs), w.dequantize(torch.float64))
    back = gptq.import_(dict(tensors), qc)["l"].weight
    assert_same(back, w)


def test_gptq_refuses_what_v1_cannot_hold(seed):
    w = random_int4(symmetric=False, zero_min=0)
    w.zeros[0, 0] = 0
    with pytest.raises(FormatError, match=r"gptq: l\.qzeros"):
        gptq.export({"l": QuantizedLinear(w)})
    with pytest.raises(FormatError, match="one for the whole checkpoint"):
        gptq.export({"a": QuantizedLinear(random_int4(group_size=64)), "b": QuantizedLinear(random_int4(group_size=32))})
    with pytest.raises(FormatError, match="int8 weight-only"):
        gptq.export({"a": QuantizedLinear(Int8Weight(torch.zeros(8, 8, dtype=torch.int8), torch.ones(8)))})


def test_gptq_import_errors_name_the_problem(seed):
    tensors, qc = gptq.export({"l": QuantizedLinear(random_int4())})
    with pytest.raises(FormatError, match="missing the key 'group_size'"):
        gptq.import_(dict(tensors), {k: v for k, v in qc.items() if k != "group_size"})
    bad = dict(tensors)
    bad["l.scales"] = bad["l.scales"][:, :16]
    with pytest.raises(FormatError, match="gptq: l: scales"):
        gptq.import_(bad, qc)
    bad = dict(tensors)
    del bad["l.qzeros"]
    with pytest.raises(FormatError, match="no tensor 'l.qzeros'"):
        gptq.import_(bad, qc)


# ----------------------------------------------------------------------------- AWQ
@pytest.mark.parametrize("sym", [True, False])
def test_awq_round_trip_and_reference_layout(sym, seed):
    w = random_int4(symmetric=sym, zero_min=0)
    tensors, qc = awq.export({"l": QuantizedLinear(w)})
    layer = {k[2:]: v for k, v in tensors.items()}
    assert tuple(layer["qweight"].shape) == (256, 32 // 8)
    assert torch.equal(awq_reference_dequant(layer, 64), w.dequantize(torch.float64))
    assert_same(awq.import_(dict(tensors), qc)["l"].weight, w)


@pytest.mark.parametrize("kind,match", [("channel", "per-channel"), ("act-order", "act-order"), ("ragged", "not a multiple")])
def test_awq_refuses_what_autoawq_cannot_load(kind, match, seed):
    w = random_int4(k=288, group_size=64) if kind == "ragged" else weight_for(kind, True)
    with pytest.raises(FormatError, match=match):
        awq.export({"model.layers.0.mlp.up_proj": QuantizedLinear(w)})


# ----------------------------------------------------------------------------- compressed-tensors
def _ct_export(layers, *args):
    """compressed_tensors.export, which warns (FormatWarning) exactly when a layer has act-order g_idx."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compressed_tensors.export(layers, *args)
    said = [w for w in caught if issubclass(w.category, FormatWarning)]
    assert len(said) == any(getattr(layer.weight, "g_idx", None) is not None for layer in layers.values())
    return out


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("sym,kind", CASES)
def test_compressed_tensors_round_trip(sym, kind, bits, seed):
    w = weight_for(kind, sym, bits=bits)
    tensors, qc = _ct_export({"m.l": QuantizedLinear(w, torch.randn(32))}, ["lm_head"])
    (group,) = qc["config_groups"].values()
    args = group["weights"]
    assert (args["num_bits"], args["symmetric"], args["strategy"]) == (bits, sym, "channel" if kind == "channel" else "group")
    assert args["actorder"] == ("group" if kind == "act-order" else None) and qc["ignore"] == ["lm_head"]
    assert ("m.l.weight_zero_point" in tensors) == (not sym)
    back = compressed_tensors.import_(dict(tensors), qc)["m.l"]
    assert_same(back.weight, w)
    assert torch.equal(back.bias, tensors["m.l.bias"])


@pytest.mark.parametrize("sym,kind", CASES)
def test_compressed_tensors_matches_its_own_dequantize(sym, kind, seed):
    w = weight_for(kind, sym)
    tensors, qc = _ct_export({"l": QuantizedLinear(w)})
    args = qc["config_groups"]["group_0"]["weights"]
    ref = ct_reference_dequant(tensors, "l", args)
    torch.testing.assert_close(ref, w.dequantize(torch.float64), rtol=0, atol=1e-12)


def test_compressed_tensors_odd_k_is_padded_and_ragged_groups_refused(seed):
    w = random_int4(n=24, k=200, group_size=40)  # K not a multiple of 8: the last word is padded
    tensors, qc = compressed_tensors.export({"l": QuantizedLinear(w)})
    assert tuple(tensors["l.weight_scale"].shape) == (24, 5) and tuple(tensors["l.weight_packed"].shape) == (24, 25)
    assert_same(compressed_tensors.import_(dict(tensors), qc)["l"].weight, w)
    with pytest.raises(FormatError, match="m.up has K=200, not a multiple of group_size=64"):
        compressed_tensors.export({"m.up": QuantizedLinear(random_int4(n=24, k=200, group_size=64))})


@pytest.mark.parametrize("act", [None, "dynamic", "static"])
def test_compressed_tensors_int8(act, seed):
    q = torch.randint(-127, 128, (16, 40), dtype=torch.int8)
    layer = QuantizedLinear(Int8Weight(q, torch.rand(16) + 0.1), None, act,
                            torch.tensor([0.02]) if act == "static" else None)
    tensors, qc = compressed_tensors.export({"l": layer})
    assert qc["format"] == ("pack-quantized" if act is None else "int-quantized")
    back = compressed_tensors.import_(dict(tensors), qc)["l"]
    assert back.act == act and torch.equal(back.weight.qweight, q) and torch.equal(back.weight.scales, layer.weight.scales)
    if act == "static":
        assert torch.equal(back.input_scale, layer.input_scale)


def test_compressed_tensors_mixed_schemes_get_their_own_groups(seed):
    layers = {"a": QuantizedLinear(random_int4(group_size=64)), "b": QuantizedLinear(random_int4(group_size=32)),
              "lm_head": QuantizedLinear(Int8Weight(torch.ones(8, 8, dtype=torch.int8), torch.ones(8)))}
    tensors, qc = compressed_tensors.export(layers)
    assert sorted(sorted(g["targets"]) for g in qc["config_groups"].values()) == [["a"], ["b"], ["lm_head"]]
    back = compressed_tensors.import_(dict(tensors), qc)
    assert back["a"].weight.group_size == 64 and back["b"].weight.group_size == 32
    assert isinstance(back["lm_head"].weight, Int8Weight)


def test_compressed_tensors_bad_input(seed):
    tensors, qc = compressed_tensors.export({"l": QuantizedLinear(random_int4())})
    with pytest.raises(FormatError, match="missing the key 'config_groups'"):
        compressed_tensors.import_(dict(tensors), {k: v for k, v in qc.items() if k != "config_groups"})
    bad = dict(tensors)
    bad["l.weight_scale"] = bad["l.weight_scale"][:, :2]
    with pytest.raises(FormatError, match=r"l\.weight_scale must be \[32, 4\]"):
        compressed_tensors.import_(bad, qc)
    bad = dict(tensors)
    bad["l.weight_shape"] = torch.tensor([32, 512], dtype=torch.int32)
    with pytest.raises(FormatError, match=r"l\.weight_packed has 32 words"):
        compressed_tensors.import_(bad, qc)
    qc5 = {**qc, "config_groups": {"group_0": {**qc["config_groups"]["group_0"],
                                               "weights": {**qc["config_groups"]["group_0"]["weights"], "num_bits": 5}}}}
    with pytest.raises(FormatError, match="num_bits=5"):
        compressed_tensors.import_(dict(tensors), qc5)
    with pytest.raises(FormatError, match="3-bit"):
        compressed_tensors.export({"l": QuantizedLinear(random_int4(bits=3))})
