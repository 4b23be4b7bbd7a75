"""Sampling (temperature 0.7 + top-k 50 + top-p 0.9, and top-p 0.9 alone) against the HF
transformers formulation (TopK/TopP logits warpers: sort + softmax + cumsum + scatter, then
softmax + multinomial), and against reading the logits once (logits.max(-1), the floor for any
sampler). Logits: randn * 3, fp32, new values (copied in, untimed) before every call. Roofline
columns (GPU): the logits read once and the ids written, no tensor FLOPs."""
import contextlib
import itertools

import pytest
import torch

import pyllmops
from bench.conftest import bench_device, perf_backends, record, roofline_info, sync

BATCHES = [1, 8, 64]
VOCABS = [32000, 128256, 151936]
CONFIGS = {"top-k 50 + top-p 0.9": dict(temperature=0.7, top_k=50, top_p=0.9),
           "top-p 0.9": dict(temperature=0.7, top_k=0, top_p=0.9)}


def hf_style_sample(logits, temperature, top_k, top_p):
    """transformers' TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper, then
    softmax + torch.multinomial (what generate(do_sample=True) runs)."""
    scores = logits / temperature
    if top_k > 0:
        scores = scores.masked_fill(scores < torch.topk(scores, top_k)[0][..., -1, None], float("-inf"))
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = 0
    scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1)[:, 0]


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", ["baseline", "read once"] + perf_backends("sample", bench_device()))
def test_sample(benchmark, device, backend, batch, vocab, config):
    params = CONFIGS[config]
    # New logits before every timed call, written into one buffer (untimed), as a model's LM head
    # writes them: cache-warm, but never the same values twice in a row. On the same data every
    # call the kernels' data-dependent branches are learnt by the branch predictor (measured: 5 vs
    # 11 us per 32000-logit row), which real decoding never sees.
    pool = [torch.randn(batch, vocab, device=device) * 3 for _ in range(max(2, min(8, (1 << 24) // (batch * vocab))))]
    turn = itertools.cycle(pool)
    x = pool[0].clone()
    seeds = torch.arange(batch, device=device)
    record(benchmark, op=f"sample {config}", shape=f"{batch}x{vocab} f32",
           backend={"baseline": "HF-style torch", "read once": "logits.max(-1) (floor)"}.get(backend, backend),
           baseline=backend == "baseline")
    roofline_info(benchmark, nbytes=x.numel() * x.element_size() + batch * 8)  # logits read once, ids written
    if backend == "baseline":
        fn = lambda: hf_style_sample(x, **params)  # noqa: E731
    elif backend == "read once":
        fn = lambda: x.max(-1)  # noqa: E731
    else:
        fn = lambda: pyllmops.sample(x, **params, seed=seeds, offset=0)  # noqa: E731
    # The backend is chosen once, outside the timed calls (choosing it is not the op's cost).
    plain = backend in ("baseline", "read once")
    with contextlib.nullcontext() if plain else pyllmops.use_backend(backend):
        fn()
        slow = backend in ("baseline", "torch") and batch * vocab >= 8 * 128256
        def new_logits():  # pytest-benchmark reads a setup's return value as (args, kwargs): return None
            x.copy_(next(turn))
            sync(device)

        benchmark.pedantic(lambda: (fn(), sync(device)), setup=new_logits,
                           rounds=3 if slow else 50, iterations=1, warmup_rounds=1 if not slow else 0)
