"""Checkpoints that llmcompressor itself wrote (its GPTQ on CPU, compressed-tensors; committed under
tests/data/llmcompressor/ by scripts/make_llmcompressor_fixture.py, see the README there) load in
pyllmops as pyllmops modules and give the logits llmcompressor's quantized model gave."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import pyllmops
from pyllmops.nn.w8a8 import W8A8Linear
from pyllmops.nn.weight_only import WeightOnlyLinear
from pyllmops.quant.methods import replace_module

pytest.importorskip("transformers")
DATA = Path(__file__).resolve().parents[1] / "data" / "llmcompressor"
W4A16 = ("w4a16-group-sym", "w4a16-group-asym", "w4a16-channel-asym")
W8A8 = {"w8a8-dynamic": "dynamic", "w8a8-static": "static"}


def load(scheme: str):
    return pyllmops.load_quantized(DATA / scheme), load_file(str(DATA / scheme / "expected.safetensors"))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def quantized_linears(model, kind) -> dict:
    """Every linear but the LM head (the checkpoint's "ignore", left in float), checked to be `kind`."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, WeightOnlyLinear, W8A8Linear))}
    assert type(mods.pop("lm_head")) is nn.Linear
    assert len(mods) == 14 and all(isinstance(m, kind) for m in mods.values()), \
        {n: type(m).__name__ for n, m in mods.items()}
    return mods


@pytest.mark.parametrize("scheme", W4A16)
def test_weight_only_checkpoint_gives_llmcompressor_logits(scheme):
    model, expected = load(scheme)
    quantized_linears(model, WeightOnlyLinear)
    theirs = expected["logits"]
    tol = 1e-5 * float(theirs.abs().max())
    assert float((theirs - expected["float_logits"]).abs().max()) > 1e4 * tol  # the quantization shows
    torch.testing.assert_close(logits(model, expected["input_ids"]), theirs, rtol=0, atol=tol)


@pytest.mark.parametrize("scheme", W8A8)
def test_w8a8_checkpoint_gives_llmcompressor_logits(scheme):
    model, expected = load(scheme)
    ids, theirs, weight_only = expected["input_ids"], expected["logits"], expected["weight_only_logits"]
    ours = logits(model, ids)
    layers = quantized_linears(model, W8A8Linear)
    assert all(m.act == W8A8[scheme] for m in layers.values())

    # The int8 weights (and their scales) are llmcompressor's: with activations left in float the two agree to
    # float tolerance.
    for name, m in layers.items():
        lin = nn.Linear(m.in_features, m.out_features, bias=False)
        lin.weight.data = m.weight.float() * m.weight_scale.reshape(-1, 1)
        replace_module(model, name, lin)
    tol = 1e-5 * float(weight_only.abs().max())
    torch.testing.assert_close(logits(model, ids), weight_only, rtol=0, atol=tol)

    # Activations: compressed-tensors rounds x / (absmax / 127.5) into [-128, 127] (dynamic: per token; static:
    # with the checkpoint's input_scale), pyllmops x / (absmax / 127) into [-127, 127] (static: the same
    # input_scale, saturating at -127), so int8 activations may differ by a step. Both roundings move the logits
    # by the same amount, and they differ from each other by no more than that.
    ours_effect = float((ours - weight_only).abs().mean())
    theirs_effect = float((theirs - weight_only).abs().mean())
    assert 0.7 * theirs_effect < ours_effect < 1.4 * theirs_effect
    assert float((ours - theirs).abs().mean()) < 1.4 * theirs_effect
    assert float((ours.argmax(-1) == theirs.argmax(-1)).float().mean()) >= 0.9
