"""pyllmops.quantize(model, "w4a16-*" | "w8a16") on small models: the Llama layout (block-sequential,
scales folded) and an arbitrary nn.Module (generic fallback)."""
import copy

import pytest
import torch
from torch import nn

import pyllmops
from pyllmops.nn import WeightOnlyLinear
from pyllmops.quantization._blocks import BlockSpec, ScaleGroup, llama_spec
from tests.quant.toy import toy_model


@pytest.fixture
def setup(seed):
    model = toy_model(dim=128, kv_dim=64, ffn=256)
    calib = [torch.randint(0, 64, (2, 32)) for _ in range(4)]
    test = torch.randint(0, 64, (4, 32))
    with torch.no_grad():
        ref = model(test)
    return model, calib, test, ref


def _err(model, test, ref):
    with torch.no_grad():
        return float((model(test) - ref).pow(2).mean())


def test_llama_layout_is_recognised():
    spec = llama_spec(toy_model())
    assert spec.blocks == "layers" and spec.groups[0].prev == "input_layernorm"


@pytest.mark.parametrize("bits", [4, 3])
def test_calibrated_methods_beat_rtn(setup, bits):
    model, calib, test, ref = setup
    errs = {}
    for method, opts in [("w4a16-rtn", {}), ("w4a16-gptq", {}), ("w4a16-gptq", {"act_order": True}), ("w4a16-awq", {})]:
        q = pyllmops.quantize(copy.deepcopy(model), method, calib=calib, group_size=32, bits=bits, progress=False, **opts)
        linears = [m for m in q.modules() if isinstance(m, WeightOnlyLinear)]
        assert len(linears) == 14 and isinstance(q.lm_head, nn.Linear)  # the LM head stays float
        errs[(method, bool(opts))] = _err(q, test, ref)
    rtn = errs[("w4a16-rtn", False)]
    assert errs[("w4a16-gptq", False)] < 0.7 * rtn, errs
    assert errs[("w4a16-gptq", True)] < 0.7 * rtn, errs
    assert errs[("w4a16-awq", False)] < 0.7 * rtn, errs


def test_w8a16_is_close(setup):
    model, _, test, ref = setup
    q = pyllmops.quantize(copy.deepcopy(model), "w8a16", progress=False)
    assert _err(q, test, ref) < 1e-3 * float(ref.pow(2).mean())


def test_awq_folds_into_norms(setup):
    model, calib, test, _ = setup
    before = model.layers[0].input_layernorm.weight.clone()
    q = pyllmops.quantize(copy.deepcopy(model), "w4a16-awq", calib=calib, group_size=32, progress=False)
    assert not torch.equal(q.layers[0].input_layernorm.weight, before)
    assert q.layers[0].self_attn.q_proj.input_scale is None  # folded, not carried


def test_generic_module_and_declared_spec(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))
    with torch.no_grad():
        model[0].weight[:, :2] *= 10
    mix = torch.randn(16, 64) * torch.linspace(0.1, 5, 64)  # correlated inputs with uneven channel sizes

    def inputs(t):
        return torch.randn(t, 16) @ mix + 0.1 * torch.randn(t, 64)

    calib = [inputs(128) for _ in range(4)]
    x = inputs(64)
    ref = model(x).detach()
    errs = {}
    for method in ("w4a16-rtn", "w4a16-gptq", "w4a16-awq"):
        q = pyllmops.quantize(copy.deepcopy(model), method, calib=calib, group_size=32, progress=False, skip=())
        assert all(isinstance(q[i], WeightOnlyLinear) for i in (0, 2))
        errs[method] = float((q(x) - ref).pow(2).mean())
    assert errs["w4a16-gptq"] < errs["w4a16-rtn"] and errs["w4a16-awq"] < errs["w4a16-rtn"], errs
    # no producer to fold into: AWQ keeps its scales as the layer's input_scale
    q = pyllmops.quantize(copy.deepcopy(model), "w4a16-awq", calib=calib, group_size=32, progress=False, skip=())
    assert q[0].input_scale is not None
    # a declared spec: fold the second layer's scales into the first one's rows is not possible
    # through GELU, so declare it unfoldable; blocks=None keeps the whole model as one block
    spec = BlockSpec(None, (ScaleGroup(None, ("0",)), ScaleGroup(None, ("2",))))
    q = pyllmops.quantize(copy.deepcopy(model), "w4a16-gptq", calib=calib, group_size=32, progress=False, skip=(), block_spec=spec)
    assert isinstance(q[2], WeightOnlyLinear)


def test_bad_options(setup):
    model, calib, _, _ = setup
    with pytest.raises(ValueError, match="needs calibration data"):
        pyllmops.quantize(model, "w4a16-gptq")
    with pytest.raises(ValueError, match="bits must be 4 or 3"):
        pyllmops.quantize(model, "w4a16-rtn", bits=8)
