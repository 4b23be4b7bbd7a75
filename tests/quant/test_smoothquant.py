import copy

import pytest
import torch
from torch import nn

import pyllmops
from pyllmops.quant.calibration import input_absmax, input_samples
from pyllmops.quant.smoothquant import SmoothGroup, llama_smooth_groups, smooth_, smoothing_factors
from tests import reference


# ----------------------------------------------------------------------------- a non-Llama model
class Block(nn.Module):
    """GPT-2-like: LayerNorm (with bias) -> fc1 -> gelu -> fc2, and a second LayerNorm feeding two
    parallel linears: architectures SmoothQuant must handle through declared groups."""

    def __init__(self, d=24, f=40):
        super().__init__()
        self.ln_1, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, f), nn.Linear(f, d)
        self.ln_2, self.a, self.b = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d, bias=False)

    def forward(self, x):
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.ln_1(x))))
        h = self.ln_2(x)
        return x + self.a(h) * torch.sigmoid(self.b(h))


GROUPS = [SmoothGroup("ln_1", ("fc1",)), ("ln_2", ["a", "b"])]


def _randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return model


def _outlier_batches(d, n=3):
    # A few channels 100x larger than the rest: what SmoothQuant exists for.
    batches = []
    for _ in range(n):
        x = torch.randn(2, 7, d, dtype=torch.float64)
        x[..., :2] *= 100
        batches.append(x)
    return batches


def test_smoothing_preserves_declared_architecture(seed):
    model = _randomize(Block().double())
    batches = _outlier_batches(24)
    ref = [model(b) for b in batches]
    stats = input_absmax(model, batches, progress=False)
    groups = [g if isinstance(g, SmoothGroup) else SmoothGroup(g[0], tuple(g[1])) for g in GROUPS]
    factors = smooth_(model, groups, stats, alpha=0.5)
    assert set(factors) == {"ln_1", "ln_2"}
    for b, r in zip(batches, ref):
        torch.testing.assert_close(model(b), r, rtol=1e-12, atol=1e-12)
    # The smoothed inputs really are flatter: the outlier channels shrank relative to the rest.
    after = input_absmax(model, batches, ["fc1"], progress=False)["fc1"]
    before = stats["fc1"]
    assert float(after.max() / after.min()) < float(before.max() / before.min())


def test_smoothing_preserves_llama_with_gqa(seed):
    from pyllmops.models import llama

    cfg = llama.LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=80,
                            max_seq_len=32, tie_embeddings=False)
    model = _randomize(llama.Llama(cfg).double())
    ids = [torch.randint(0, 97, (2, 11)) for _ in range(2)]
    ref = [model(i) for i in ids]
    groups = llama_smooth_groups(model)
    # per layer: input_layernorm -> q/k/v, post_attention_layernorm -> gate/up, v -> o (GQA), up -> down
    assert len(groups) == 4 * cfg.n_layers
    assert SmoothGroup("layers.1.self_attn.v_proj", ("layers.1.self_attn.o_proj",), kv_head_dim=8) in groups
    smooth_(model, groups, input_absmax(model, ids, progress=False), alpha=0.7, layer_alpha={"*.down_proj": 0.9})
    for i, r in zip(ids, ref):
        # attention and the logits run in float32 even for a float64 model: float32 noise only
        # (1e-5 failed about once in 30 seeds; a wrong fold moves the logits by O(1))
        torch.testing.assert_close(model(i), r, rtol=1e-4, atol=1e-4)


def test_factors_formula_and_safety():
    x = torch.tensor([4.0, 0.0, 1e30, 9.0, 1e-30])
    w = torch.tensor([1.0, 2.0, 1.0, 0.0, 1.0])
    s = smoothing_factors(x, w, alpha=0.5)
    assert s[0] == pytest.approx(2.0)  # 4^0.5 / 1^0.5
    assert s[1] == 1.0 and s[3] == 1.0 and s[4] == 1.0  # no activation / no weight: leave alone
    assert s[2] == pytest.approx(1e5)  # clamped, finite
    assert bool(torch.isfinite(s).all()) and bool((s > 0).all())
    assert smoothing_factors(torch.tensor([8.0]), torch.tensor([2.0]), alpha=1.0).item() == pytest.approx(8.0)
    with pytest.raises(ValueError, match="alpha must be in"):
        smoothing_factors(x, w, alpha=1.5)


def test_layer_alpha_override(seed):
    model = _randomize(Block())
    batches = _outlier_batches(24)
    batches = [b.float() for b in batches]
    stats = input_absmax(model, batches, progress=False)
    groups = [SmoothGroup("ln_1", ("fc1",)), SmoothGroup("ln_2", ("a", "b"))]
    w_fc1 = model.fc1.weight.detach().abs().amax(0)
    f = smooth_(model, groups, stats, alpha=0.5, layer_alpha={"fc*": 0.8})
    torch.testing.assert_close(f["ln_1"], smoothing_factors(stats["fc1"], w_fc1, 0.8))


def test_bad_groups(seed):
    model = _randomize(Block())
    stats = input_absmax(model, [torch.randn(3, 24)], progress=False)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        smooth_(model, [SmoothGroup("nope", ("fc1",))], stats)
    with pytest.raises(ValueError, match="has 24 outputs but the linears take 40"):
        smooth_(model, [SmoothGroup("ln_1", ("fc2",))], stats)
    with pytest.raises(ValueError, match="no calibration statistics"):
        smooth_(model, [SmoothGroup("ln_1", ("fc1",))], {})


def test_input_absmax_matches_manual_and_batch_forms(seed):
    lin = nn.Linear(5, 3)
    xs = [torch.randn(4, 5) for _ in range(3)]
    want = torch.stack([x.abs().amax(0) for x in xs]).amax(0)
    got = input_absmax(lin, iter(xs), progress=False)  # any iterable, here a one-shot iterator
    torch.testing.assert_close(got[""], want)
    assert torch.equal(input_absmax(lin, [(x,) for x in xs], progress=False)[""], got[""])
    assert torch.equal(input_absmax(lin, [{"input": x} for x in xs], progress=False)[""], got[""])
    with pytest.raises(ValueError, match="contains NaN or inf"):
        input_absmax(lin, [torch.full((2, 5), float("nan"))], progress=False)


def test_quantize_sq_needs_calib_and_custom_groups(seed):
    model = _randomize(Block())
    with pytest.raises(ValueError, match="needs calibration data"):
        pyllmops.quantize(model, "w8a8-sq")
    with pytest.raises(ValueError, match="found no norm -> linear groups"):
        pyllmops.quantize(model, "w8a8-sq", calib=[torch.randn(2, 24)], progress=False)
    batches = [b.float() for b in _outlier_batches(24)]
    with torch.no_grad():
        ref = [model(b) for b in batches]
        pyllmops.quantize(model, "w8a8-static-sq", calib=batches, smooth_groups=GROUPS, smooth_alpha=0.6, progress=False)
        assert type(model.fc1).__name__ == "W8A8Linear"
        for b, r in zip(batches, ref):
            assert float((model(b) - r).norm() / r.norm()) < 0.05


@pytest.mark.parametrize("method", ["w8a8", "w8a8-sq", "w8a8-static", "w8a8-static-sq"])
def test_quantize_llama_every_method(method, seed):
    model, ids = _tiny_llama()
    with torch.no_grad():
        ref = model(ids[0])
        pyllmops.quantize(model, method, calib=ids, smooth_alpha=0.6, progress=False)
        kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith("_proj")}
        assert kinds == {"W8A8Linear"} and type(model.lm_head) is nn.Linear
        out = model(ids[0])
    assert float((out - ref).norm() / ref.norm()) < 0.05


def test_cli_alpha_alias(seed):
    # `pyllmops eval/generate --alpha A` passes alpha=A: it must act as smooth_alpha.
    base = _randomize(Block())
    batches = [b.float() for b in _outlier_batches(24)]
    models = [copy.deepcopy(base) for _ in range(3)]
    with torch.no_grad():
        pyllmops.quantize(models[0], "w8a8-sq", calib=batches, smooth_groups=GROUPS, alpha=0.8, progress=False)
        pyllmops.quantize(models[1], "w8a8-sq", calib=batches, smooth_groups=GROUPS, smooth_alpha=0.8, progress=False)
        # a fixed other alpha: the default ("auto") picks 0.8 from its grid on some inputs
        # (PYLLMOPS_TEST_SEED=1406940167), which left this check nothing to tell apart
        pyllmops.quantize(models[2], "w8a8-sq", calib=batches, smooth_groups=GROUPS, smooth_alpha=0.5, progress=False)
    assert torch.equal(models[0].ln_1.weight, models[1].ln_1.weight)
    assert not torch.equal(models[0].ln_1.weight, models[2].ln_1.weight)


# ----------------------------------------------------------------------------- alpha auto-tuning
def _tiny_llama():
    """A 2-layer grouped-query Llama and two calibration batches of token ids [2, 11]."""
    from pyllmops.models import llama

    cfg = llama.LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=80, max_seq_len=32)
    return llama.Llama(cfg), [torch.randint(0, 97, (2, 11)) for _ in range(2)]


def _group_error(model, group, stats, x, alpha, granularity):
    """The quantity auto_alpha minimises, computed from its definition in float64 (nothing from the
    package): s = x_absmax^alpha / w_absmax^(1 - alpha) per input channel (w_absmax over the
    group's linears; a channel below 1e-5 on either side keeps s = 1; clamped to [1e-5, 1e5]); the
    consumers' weights times s quantized per output row, their inputs divided by s quantized per
    token or per tensor (the calibrated absmax / s) — int8, symmetric — against the float product."""
    w = torch.cat([getattr(model, n).weight.detach().double() for n in group.linears])
    xa = torch.stack([stats[n].double() for n in group.linears]).amax(0)
    wa = w.abs().amax(0)
    s = xa.clamp(min=1e-5) ** alpha / wa.clamp(min=1e-5) ** (1 - alpha)
    s = torch.where((xa < 1e-5) | (wa < 1e-5), torch.ones_like(s), s).clamp(1e-5, 1e5)
    xs, ws = x.double() / s, w * s
    scale = (xa / s).amax() / 127 if granularity == "tensor" else None
    yq = reference.fake_quant_int8(xs, "token", scale) @ reference.fake_quant_int8(ws, "token").t()
    return float((yq - x.double() @ w.t()).pow(2).mean())


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_auto_alpha_picks_the_grid_minimum(granularity, seed):
    from pyllmops.quant.smoothquant import AUTO_GRID, auto_alpha

    model = _randomize(Block())
    batches = [b.float() for b in _outlier_batches(24)]
    stats = input_absmax(model, batches, progress=False)
    samples = input_samples(model, batches, ["fc1", "a"], every=1, progress=False)
    assert samples["fc1"].shape == (3 * 2 * 7, 24)
    groups = [SmoothGroup("ln_1", ("fc1",)), SmoothGroup("ln_2", ("a", "b"))]
    chosen = auto_alpha(model, groups, stats, samples, granularity)
    assert set(chosen) == {"ln_1", "ln_2"}
    for g in groups:
        errors = {a: _group_error(model, g, stats, samples[g.linears[0]], a, granularity) for a in AUTO_GRID}
        best = min(errors.values())
        # float32 fake quantization vs this float64 one: the choice is a minimiser up to rounding
        assert errors[chosen[g.prev]] <= best * (1 + 1e-3) + 1e-12, (g.prev, chosen[g.prev], errors)


def test_input_samples_every_and_cap(seed):
    lin = nn.Linear(5, 3)
    xs = [torch.randn(2, 10, 5) for _ in range(3)]
    got = input_samples(lin, xs, every=4, max_rows=7, progress=False)[""]
    rows = torch.cat([x.reshape(-1, 5)[::4] for x in xs])[:7]
    assert torch.equal(got, rows)


@pytest.mark.parametrize("method", ["w8a8-sq", "w8a8-static-sq"])
def test_quantize_auto_alpha(method, seed):
    model, ids = _tiny_llama()
    with torch.no_grad():
        ref = model(ids[0])
        pyllmops.quantize(model, method, calib=ids, smooth_alpha="auto", progress=False)
        out = model(ids[0])
    assert float((out - ref).norm() / ref.norm()) < 0.05
    with pytest.raises(ValueError, match="'auto'"):
        pyllmops.quantize(_tiny_llama()[0], method, calib=ids, smooth_alpha="best", progress=False)


def test_cli_alpha_parsing_and_sq_default(monkeypatch):
    import argparse

    from pyllmops.commands import _model

    p = argparse.ArgumentParser()
    _model.add_model_args(p, quant_list=False, compute_default="float32")
    assert p.parse_args(["--alpha", "auto"]).alpha == "auto"
    assert p.parse_args(["--alpha", "0.7"]).alpha == 0.7
    with pytest.raises(SystemExit):
        p.parse_args(["--alpha", "high"])
    seen = {}
    monkeypatch.setattr(pyllmops, "quantize", lambda model, method, calib, **options: seen.setdefault(method, options))
    monkeypatch.setattr("pyllmops.models.evaluate.calibration_batches", lambda tok, text: [torch.zeros(1, 2)])
    for method, argv in [("w8a8-sq", []), ("w8a8-static-sq", ["--alpha", "0.6"]), ("w8a8", [])]:
        _model.quantize(None, None, method, p.parse_args(argv))
    assert seen == {"w8a8-sq": {"alpha": "auto"}, "w8a8-static-sq": {"alpha": 0.6}, "w8a8": {}}
