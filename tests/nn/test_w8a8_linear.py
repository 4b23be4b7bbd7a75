import pytest
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

import pyllmops
from pyllmops.nn.w8a8 import W8A8Linear
from pyllmops.quant.methods.w8a8 import prepare_for_load

from tests.support import compiled

from ..conftest import cpu_backends


def _emulated(mod: W8A8Linear, x: torch.Tensor) -> torch.Tensor:
    """float64 product of exactly the int8 values and scales the module uses."""
    x2 = x.reshape(-1, mod.in_features).float()
    if mod.act == "static":
        s = mod.input_scale.double()
        q = torch.round(x2.double() / s).clamp(-127, 127)
    else:
        s = (x2.abs().amax(1, keepdim=True).double() / 127)
        q = torch.round(x2.double() / s).clamp(-127, 127)
    w = mod.weight.double() * mod.weight_scale.double().t()
    out = (q * s) @ w.t()
    if mod.bias is not None:
        out = out + mod.bias.double()
    return out.reshape(*x.shape[:-1], mod.out_features)


@pytest.mark.parametrize("backend", cpu_backends("w8a8_matmul"))
@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_float_linear_and_its_own_arithmetic(backend, act, bias, seed):
    lin = nn.Linear(70, 33, bias=bias)
    x = torch.randn(2, 9, 70)
    scale = x.abs().amax() / 127 if act == "static" else None
    mod = W8A8Linear.from_linear(lin, act, scale)
    with torch.no_grad(), pyllmops.use_backend(backend):
        y = mod(x)
    assert y.shape == (2, 9, 33) and y.dtype == torch.float32
    emu = _emulated(mod, x)
    # The module computes exactly the quantized product (ties of x / scale may round to the other
    # int8 in float32 vs float64: a rare one-step difference, hence the atol).
    torch.testing.assert_close(y.double(), emu, rtol=1e-5, atol=float(emu.abs().max()) * 2e-3)
    ref = lin(x).detach()
    assert float((y - ref).norm() / ref.norm()) < 0.02  # int8 quantization error


def test_half_inputs_keep_their_dtype(seed):
    mod = W8A8Linear.from_linear(nn.Linear(64, 16))
    for dt in (torch.bfloat16, torch.float16):
        assert mod(torch.randn(3, 64, dtype=dt)).dtype == dt


def test_static_saturates_beyond_the_calibrated_range(seed):
    lin = nn.Linear(8, 4, bias=False)
    mod = W8A8Linear.from_linear(lin, "static", input_scale=1.0 / 127)  # range [-1, 1]
    x = torch.full((1, 8), 5.0)
    with torch.no_grad():
        y = mod(x)
    want = (mod.weight.double() * mod.weight_scale.double().t()).sum(1)  # x clipped to 1
    torch.testing.assert_close(y[0].double(), want, rtol=1e-5, atol=1e-6)


def test_packed_weight_follows_weight_changes(seed):
    mod = W8A8Linear.from_linear(nn.Linear(32, 8))
    x = torch.randn(4, 32)
    y1 = mod(x)
    with torch.no_grad():
        mod.weight.neg_()
    torch.testing.assert_close(mod(x), -y1 + 2 * mod.bias, rtol=1e-5, atol=1e-5)


def test_state_dict_safetensors_round_trip(tmp_path, seed):
    for act in ("dynamic", "static"):
        mod = W8A8Linear.from_linear(nn.Linear(40, 24), act, 0.05 if act == "static" else None)
        save_file(mod.state_dict(), tmp_path / f"{act}.safetensors")
        fresh = W8A8Linear(40, 24, bias=True, act=act)
        fresh.load_state_dict(load_file(tmp_path / f"{act}.safetensors"))
        x = torch.randn(5, 40)
        assert torch.equal(fresh(x), mod(x))
        assert set(fresh.state_dict()) == ({"weight", "weight_scale", "bias"} | ({"input_scale"} if act == "static" else set()))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(16), nn.Linear(16, 32), nn.Linear(32, 16)
        self.lm_head = nn.Linear(16, 10)

    def forward(self, x):
        return self.lm_head(self.down(torch.relu(self.up(self.norm(x)))))


@pytest.mark.parametrize("method", ["w8a8", "w8a8-sq", "w8a8-static", "w8a8-static-sq"])
def test_quantize_save_load_model(method, tmp_path, seed):
    model = Tiny()
    calib = [torch.randn(3, 16) for _ in range(2)]
    with torch.no_grad():
        ref = model(calib[0])
        pyllmops.quantize(model, method, calib=calib, smooth_groups=[("norm", ["up"]), ("up", ["down"])], progress=False)
        assert type(model.up) is W8A8Linear and type(model.lm_head) is nn.Linear  # the head is skipped
        assert model.up.act == ("static" if "static" in method else "dynamic")
        y = model(calib[0])
        assert float((y - ref).norm() / ref.norm()) < 0.05
        save_model(model, str(tmp_path / "q.safetensors"))
        fresh = prepare_for_load(Tiny(), method)
        load_model(fresh, str(tmp_path / "q.safetensors"))
        assert torch.equal(fresh(calib[0]), y)


def test_static_scales_are_calibrated_after_smoothing(seed):
    model = Tiny()
    calib = [torch.randn(3, 16) * 4 for _ in range(2)]
    with torch.no_grad():
        pyllmops.quantize(model, "w8a8-static-sq", calib=calib, smooth_groups=[("norm", ["up"])], progress=False)
        h = model.norm(calib[0])  # the smoothed norm output is what `up` sees
        h = torch.maximum(h.abs().amax(), model.norm(calib[1]).abs().amax())
    torch.testing.assert_close(model.up.input_scale, (h / 127).reshape(1))


@pytest.mark.skipif("cpp" not in cpu_backends("w8a8_matmul"), reason="pyllmops._C not built")
@pytest.mark.parametrize("act", ["dynamic", "static"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_cpu_path_equals_the_ops(act, dtype, seed):
    # By default forward calls the cpp kernels directly; forcing "cpp" goes through both op front
    # doors to the same kernels: the results must be identical, and bad input still caught.
    lin = nn.Linear(70, 33)
    x = torch.randn(2, 9, 70)
    mod = W8A8Linear.from_linear(lin, act, x.abs().amax() / 127 if act == "static" else None)
    x = x.to(dtype)
    with torch.no_grad():
        fast = mod(x)
        with pyllmops.use_backend("cpp"):
            ops = mod(x)
    assert fast.dtype == dtype and torch.equal(fast, ops)
    x[1, 4, 69] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        mod(x)
    with torch.no_grad():
        mod.weight_scale[0, 5] = float("inf")  # e.g. a bad state_dict: re-checked on the change
    with pytest.raises(ValueError, match="weight_scale must be finite"):
        mod(torch.randn(3, 70, dtype=dtype))


@pytest.mark.parametrize("act", ["dynamic", "static"])
def test_compiles_fullgraph_to_the_same_result(act, seed):
    # Under torch.compile forward takes the op front doors (traceable custom ops) with the
    # strided weight (torch._int_mm), eagerly the direct CPU path with the packed one (oneDNN):
    # the same int32 products, float32 epilogues that multiply the scales in another order.
    lin = nn.Linear(48, 20)
    x = torch.randn(5, 48)
    mod = W8A8Linear.from_linear(lin, act, x.abs().amax() / 127 if act == "static" else None)
    with torch.no_grad():
        got = compiled(mod)(x)
        torch.testing.assert_close(got, mod(x), rtol=1e-5, atol=1e-6)
    emu = _emulated(mod, x)
    torch.testing.assert_close(got.double(), emu, rtol=1e-5, atol=float(emu.abs().max()) * 2e-3)


def test_bad_input():
    mod = W8A8Linear.from_linear(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="x must have 8 features"):
        mod(torch.randn(2, 7))
    with pytest.raises(TypeError, match="x must have dtype"):
        mod(torch.ones(2, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="act must be one of"):
        W8A8Linear(8, 4, act="per-channel")
    with pytest.raises(ValueError, match="needs input_scale"):
        W8A8Linear.from_linear(nn.Linear(8, 4), "static")
    with pytest.raises(ValueError, match="input_scale must be one finite positive number"):
        W8A8Linear.from_linear(nn.Linear(8, 4), "static", float("inf"))
    with pytest.raises(ValueError, match="method must be one of"):
        prepare_for_load(Tiny(), "w8a8-dynamic")


def test_copy_and_pickle_after_use(seed):
    import copy
    import io

    mod = W8A8Linear.from_linear(nn.Linear(16, 8))
    x = torch.randn(2, 16)
    y = mod(x)  # builds the packed (uncopyable) weight cache on CPU
    assert torch.equal(copy.deepcopy(mod)(x), y)
    buf = io.BytesIO()
    torch.save(mod, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), y)
