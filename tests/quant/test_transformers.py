"""pyllmops.quantize on causal LMs as transformers builds them (tiny random configs, no hub):
Llama, Mistral, Qwen2 (q/k/v biases), Phi-3 (fused qkv_proj / gate_up_proj), GPT-2 (Conv1D)."""
import warnings

import pytest
import torch
from torch import nn

import pyllmops
from pyllmops.nn.w8a8 import W8A8Linear
from pyllmops.nn.weight_only import WeightOnlyLinear
from pyllmops.quant.methods import QuantizationWarning
from pyllmops.quant.methods._blocks import family_smooth_groups, resolve_spec
from pyllmops.quant.smoothquant import smooth_
from pyllmops.quant.calibration import input_absmax

transformers = pytest.importorskip("transformers")

ARCHS = ("llama", "mistral", "qwen2", "phi3")
METHODS = ("w8a8", "w8a8-sq", "w8a8-static", "w8a8-static-sq", "w4a16-rtn", "w4a16-gptq", "w4a16-awq", "w8a16")
# relative logit error allowed against the float model (random weights, 2 layers)
TOLERANCE = {"w8a8": 0.15, "w8a8-sq": 0.15, "w8a8-static": 0.15, "w8a8-static-sq": 0.15, "w8a16": 0.02,
             "w4a16-rtn": 0.3, "w4a16-gptq": 0.3, "w4a16-awq": 0.3}


def tiny(arch: str, seed: int = 0, layers: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=arch != "phi3",
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=96, n_embd=64, n_layer=layers, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    else:
        config = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config, "phi3": transformers.Phi3Config}[arch](**common)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # spread the weights so that quantization error is visible but bounded
        for p in model.parameters():
            if p.dim() == 1 and arch == "qwen2":
                p.add_(torch.randn_like(p) * 0.1)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def calib(n=4, t=24, vocab=96):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (1, t), generator=g) for _ in range(n)]


@pytest.mark.parametrize("arch", ARCHS + ("gpt2",))
def test_block_layout_is_found(arch):
    model = tiny(arch)
    spec = resolve_spec(model, None)
    assert spec.blocks == ("transformer.h" if arch == "gpt2" else "model.layers")
    if arch != "gpt2":  # GPT-2's Conv1D layers become nn.Linear inside quantize()
        groups = family_smooth_groups(model)
        covered = {n for g in groups for n in g.linears}
        linears = {n for n, m in model.named_modules() if type(m) is nn.Linear and n != "lm_head"}
        assert covered == linears


@pytest.mark.parametrize("arch", ARCHS + ("gpt2",))
def test_smoothing_keeps_the_float_function(arch):
    model = tiny(arch).double()
    pyllmops.quant.methods._linearize_conv1d(model)
    ids = torch.randint(0, 96, (2, 12))
    before = logits(model, ids)
    groups = family_smooth_groups(model)
    assert any(g.rows for g in groups) == (arch in ("phi3", "gpt2"))
    stats = input_absmax(model, calib(), sorted({n for g in groups for n in g.linears}), progress=False)
    stats = {k: v * torch.rand_like(v).add(0.5) * 30 for k, v in stats.items()}  # strong, uneven factors
    smooth_(model, groups, stats, alpha=0.5)
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_on_every_architecture(arch, method):
    model = tiny(arch, layers=1)
    ids = torch.randint(0, 96, (2, 16))
    ref = logits(model, ids)
    pyllmops.quantize(model, method, calib=calib(), strict=True, progress=False)
    kinds = {type(m) for n, m in model.named_modules() if n.startswith("model.layers") and
             isinstance(m, (nn.Linear, W8A8Linear, WeightOnlyLinear))}
    assert kinds == {W8A8Linear if method.startswith("w8a8") else WeightOnlyLinear}
    assert type(model.lm_head) is nn.Linear  # skip's default
    out = logits(model, ids)
    err = float((out - ref).norm() / ref.norm())
    assert err < TOLERANCE[method], err


def test_gpt2_conv1d_layers_are_quantized():
    model = tiny("gpt2")
    ids = torch.randint(0, 96, (2, 16))
    ref = logits(model, ids)
    pyllmops.quantize(model, "w4a16-gptq", calib=calib(), strict=True, progress=False)
    h0 = model.transformer.h[0]
    assert all(isinstance(m, WeightOnlyLinear) for m in (h0.attn.c_attn, h0.attn.c_proj, h0.mlp.c_fc, h0.mlp.c_proj))
    assert float((logits(model, ids) - ref).norm() / ref.norm()) < 0.3


def test_unsmoothed_linears_are_named_and_strict_raises():
    with pytest.warns(QuantizationWarning, match=r"w8a8-sq: no smoothing group reads these linears.*mlp\.c_proj"):
        pyllmops.quantize(tiny("gpt2"), "w8a8-sq", calib=calib(), progress=False)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_proj.*strict=True"):
        pyllmops.quantize(tiny("gpt2"), "w8a8-sq", calib=calib(), progress=False, strict=True)


def test_linear_subclasses_left_in_float_are_named():
    class MyLinear(nn.Linear):
        pass

    model = tiny("llama")
    model.model.layers[0].mlp.down_proj = MyLinear(128, 64, bias=False)
    with pytest.warns(QuantizationWarning, match=r"left in float.*model\.layers\.0\.mlp\.down_proj"):
        pyllmops.quantize(model, "w8a16", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyllmops.quantize(tiny("llama"), "w8a16", progress=False)  # nothing to report


@pytest.mark.parametrize("method", ["w8a8-static-sq", "w4a16-gptq"])
def test_transformers_llama_quantizes_like_the_bundled_llama(method):
    """The same weights in transformers' Llama and pyllmops.models.Llama quantize to the same
    function: the walk sees the same linears, smoothing groups and calibration inputs in both."""
    from pyllmops.models import Llama, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64)
    ours = Llama(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    theirs = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2), dtype=torch.float32).eval()
    state = {(k if k.startswith("lm_head") else "model." + k): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=False)
    theirs.tie_weights()
    ids = torch.randint(0, 96, (1, 32))
    torch.testing.assert_close(logits(theirs, ids), ours(ids), rtol=1e-4, atol=1e-4)
    ref = ours(ids)
    for model in (ours, theirs):
        pyllmops.quantize(model, method, calib=calib(t=32), strict=True, progress=False)
    # the two float forwards differ by ~1e-6, which can flip an int8 rounding here and there: the
    # quantized models must agree far more closely than either agrees with the float model
    apart = float((logits(theirs, ids) - ours(ids)).norm())
    assert apart < 0.1 * float((ours(ids) - ref).norm()), apart
