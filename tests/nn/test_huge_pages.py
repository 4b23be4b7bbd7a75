"""pack_huge_pages: the packed weights move into one 2 MB-page mapping, values and behaviour unchanged."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import pyllmops
from pyllmops.nn.huge_pages import huge_pages_supported, pack_huge_pages
from pyllmops.nn.weight_only import WeightOnlyLinear

pytestmark = pytest.mark.skipif(not huge_pages_supported(), reason="needs MADV_HUGEPAGE (Linux)")


def _model(seed_offset=0):
    torch.manual_seed(1234 + seed_offset)
    return nn.Sequential(nn.Linear(256, 384, bias=False), nn.ReLU(), nn.Linear(384, 128), nn.ReLU(),
                         nn.Linear(128, 64, bias=False))


def _tensors(model):
    return {f"{n}.{k}": getattr(m, k) for n, m in model.named_modules() if isinstance(m, WeightOnlyLinear)
            for k in ("qweight", "scales", "zeros") if getattr(m, k, None) is not None}


@pytest.mark.parametrize("method, options", [("w4a16-rtn", dict(group_size=64)), ("w8a16", {})])
def test_quantize_packs_into_one_mapping(method, options, seed):
    """quantize() ends with pack_huge_pages: every packed tensor lies in one mapping, in a storage of
    its own (no overlap that safetensors would refuse), with the values an unpacked copy has."""
    model = _model()
    ref = copy.deepcopy(model)
    pyllmops.quantize(model, method, skip=(), progress=False, **options)
    with torch.no_grad():  # the same method on a deep copy, then copied again: plain allocations
        pyllmops.quantize(ref, method, skip=(), progress=False, **options)
    plain = copy.deepcopy(ref)
    got, want = _tensors(model), _tensors(plain)
    assert got.keys() == want.keys() and len(got) >= 5
    for k in got:
        assert torch.equal(got[k], want[k]), k
    spans = sorted((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in got.values())
    for (a, n), (b, _) in zip(spans, spans[1:]):
        assert a + n <= b, "two packed tensors share storage"
    assert spans[-1][0] + spans[-1][1] - spans[0][0] < (4 << 20) + sum(n for _, n in spans)  # one mapping
    x = torch.randn(5, 256)
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    assert pack_huge_pages(model) == 0  # already moved


def test_packed_model_saves_and_reloads(tmp_path: Path, seed):
    """A model packed into the mapping saves (safetensors sees unrelated tensors) and reloads with
    the same logits; the reload is packed too."""
    pytest.importorskip("transformers")
    from tests.quant.test_transformers import tiny

    model = tiny("llama", layers=1)
    pyllmops.quantize(model, "w4a16-rtn", group_size=32, progress=False)
    assert pack_huge_pages(model) == 0
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        want = model(ids).logits
    pyllmops.save_quantized(model, tmp_path, "gptq")
    again = pyllmops.load_quantized(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, want, rtol=0, atol=0)
    assert pack_huge_pages(again) == 0
