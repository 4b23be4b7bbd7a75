"""GPU sampling (compiled Triton and the CUDA kernel) against the float64 definition
(reference_filter) and the reference backend: drawn tokens lie in the kept set and equal the
reference backend's draw for the same seed (same Philox u; the float32 sums and exp differ from
float64 only within rounding, which decides a row with probability ~1e-6), greedy rows take the
first maximum, probabilities match to float32 rounding, bad rows raise naming the row. Marked
`gpu`: CPU CI skips them visibly; bench/gpu_check.sh runs them with compiled Triton."""
import pytest
import torch

import pyllmops
from pyllmops.ops.sampling import reference_filter

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ["triton", "cuda"]


def _batch(b: int, v: int, dtype: torch.dtype, seed: int):
    """Random logits [B, V] and per-row parameters covering every filter on and off."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, v, generator=g) * 3).to(dtype)
    t = 0.3 + 1.2 * torch.rand(b, generator=g)
    t[0] = 0.0  # a greedy row
    k = torch.where(torch.rand(b, generator=g) < 0.3, 0, torch.randint(1, v, (b,), generator=g))
    p = torch.where(torch.rand(b, generator=g) < 0.3, 1.0, 0.5 + 0.5 * torch.rand(b, generator=g))
    q = torch.where(torch.rand(b, generator=g) < 0.5, 0.0, 0.05 * torch.rand(b, generator=g))
    return x, dict(temperature=t, top_k=k, top_p=p, min_p=q)


def _to(params, device):
    return {name: value.to(device) for name, value in params.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("v", [1000, 32000, 128256])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_tokens_match_reference(backend, v, dtype, seed):
    x, params = _batch(32, v, dtype, seed)
    seeds = torch.arange(32) + seed
    with pyllmops.use_backend(backend):
        got = pyllmops.sample(x.cuda(), **_to(params, "cuda"), seed=seeds.cuda(), offset=3).cpu()
    with pyllmops.use_backend("reference"):
        want = pyllmops.sample(x, **params, seed=seeds, offset=3)
    probs = reference_filter(x, params["temperature"], params["top_k"], params["top_p"], params["min_p"])
    assert bool((probs.gather(1, got[:, None]) > 0).all()), "a token outside the kept set"
    assert int(got[0]) == int(x[0].float().argmax()), "greedy row: not the first maximum"
    assert torch.equal(got, want), f"rows {torch.nonzero(got != want).flatten().tolist()} differ from the reference"


@pytest.mark.parametrize("v", [1000, 128256])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_probs_match_reference(backend, v, seed):
    x, params = _batch(16, v, torch.float32, seed)
    with pyllmops.use_backend(backend):
        got = pyllmops.top_k_top_p_filter(x.cuda(), **_to(params, "cuda")).cpu().double()
    want = reference_filter(x, params["temperature"], params["top_k"], params["top_p"], params["min_p"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_bad_row_raises(backend):
    x = torch.randn(4, 5000, device="cuda")
    x[2, 17] = float("nan")
    with pyllmops.use_backend(backend), pytest.raises(ValueError, match="row 2"):
        pyllmops.sample(x, temperature=0.7, top_k=50, top_p=0.9, seed=0, offset=0)
