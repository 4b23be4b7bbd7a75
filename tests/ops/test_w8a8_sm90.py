"""The Hopper W8A8 path (csrc/cuda/sm90/w8a8_sm90.cu, CUTLASS wgmma): which calls it takes (CPU
CI), and, on an sm_90 GPU with the kernel built, its results against the exact reference and
the torch fallback's identical epilogue roundings."""
import pytest
import torch

import pyllmops
from pyllmops.ops.w8a8 import SM90_MIN_M, cuda_w8a8_kernel, reference_w8a8_matmul, sm90_decline_reason


@pytest.mark.parametrize("m, n, capability, built, declines", [
    (4096, 4096, (9, 0), True, None),
    (SM90_MIN_M, 16, (9, 0), True, None),
    (SM90_MIN_M - 1, 4096, (9, 0), True, "decode sizes"),
    (4096, 4104, (9, 0), True, "not a multiple of 16"),
    (4096, 4096, (8, 0), True, "sm_90a only"),
    (4096, 4096, (10, 0), True, "sm_90a only"),
    (4096, 4096, (9, 0), False, "without CUTLASS"),
])
def test_sm90_decline_reason(m, n, capability, built, declines):
    reason = sm90_decline_reason(m, n, capability, built)
    assert reason is None if declines is None else declines in reason


def _sm90_ready() -> bool:
    from pyllmops import _ext

    return (torch.cuda.is_available() and _ext.has_cuda() and torch.cuda.get_device_capability()[0] == 9
            and bool(getattr(_ext.cuda(), "has_w8a8_sm90", False)))


@pytest.mark.gpu
@pytest.mark.parametrize("m, k, n", [(65, 256, 128), (300, 4096, 272), (1024, 512, 1024)])
@pytest.mark.parametrize("per_token, per_channel", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gpu_sm90_kernel(m, k, n, per_token, per_channel, with_bias, seed):
    if not _sm90_ready():
        pytest.skip("needs an sm_90 GPU and pyllmops._cuda built with CUTLASS")
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
    sa = torch.rand(m, 1, device="cuda") * 0.01 + 1e-4 if per_token else torch.tensor([0.02], device="cuda")
    sb = torch.rand(1, n, device="cuda") * 0.01 + 1e-4 if per_channel else torch.tensor([0.03], device="cuda")
    bias = torch.randn(n, device="cuda") if with_bias else None
    assert cuda_w8a8_kernel(a, w.t()) == ("sm90_wgmma", None)
    with pyllmops.use_backend("cuda"):
        got = pyllmops.w8a8_matmul(a, w.t(), sa, sb, bias)
        got16 = pyllmops.w8a8_matmul(a, w.t(), sa, sb, bias, out_dtype=torch.float16)
    with pyllmops.use_backend("torch"):  # torch._int_mm + the same float32 epilogue, step by step
        want = pyllmops.w8a8_matmul(a, w.t(), sa, sb, bias)
    assert torch.equal(got, want)
    ref = reference_w8a8_matmul(a.cpu(), w.t().cpu(), sa.cpu(), sb.cpu(), None if bias is None else bias.cpu(),
                                torch.float64)
    assert got16.dtype == torch.float16
    torch.testing.assert_close(got16.cpu().double(), ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
