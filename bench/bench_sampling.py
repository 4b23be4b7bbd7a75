"""Sampling against the HF transformers formulation (Temperature / TopK / TopP / MinP logits
warpers: sort + softmax + cumsum + scatter, then softmax + multinomial), and against reading the
logits once (logits.max(-1), the floor for any sampler), on fp32 logits with new values (copied in,
untimed) before every call.

Logits: peaky (randn x 3 at temperature 0.7: top-p 0.9 keeps a few hundred tokens) at every batch
size and vocabulary; flat at B = 64 and the large vocabularies (randn at temperature 0.8 and 1.0,
randn x 0.3 at 0.8: top-p 0.9 keeps half the vocabulary or more), where a sampler that sorts or
materialises the kept set pays for its size. Roofline columns (GPU): the logits read once and the
ids written, no tensor FLOPs."""
import contextlib
import itertools

import pytest
import torch

import pyllmops
from bench.conftest import bench_device, perf_backends, record, roofline_info, sync

# name -> (scale of randn, temperature)
LOGITS = {"peaky": (3.0, 0.7), "flat T0.8": (1.0, 0.8), "flat T1.0": (1.0, 1.0), "flat x0.3 T0.8": (0.3, 0.8)}
CONFIGS = {"top-k 50 + top-p 0.9": dict(top_k=50, top_p=0.9),
           "top-p 0.9": dict(top_k=0, top_p=0.9),
           "top-k 1000 + top-p 0.9": dict(top_k=1000, top_p=0.9),
           "min-p 0.05": dict(top_k=0, top_p=1.0, min_p=0.05)}
LARGE = (128256, 151936)
# (logits, batch, vocab, config): the peaky sweep over sizes, and every logit kind and configuration
# at B = 64 and the large vocabularies
CASES = ([("peaky", b, v, c) for b in (1, 8, 64) for v in (32000,) + LARGE for c in list(CONFIGS)[:2]
          if b < 64 or v not in LARGE]
         + [(kind, 64, v, c) for kind in LOGITS for v in LARGE for c in CONFIGS])


def hf_style_sample(logits, temperature, top_k, top_p, min_p=None):
    """transformers' TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper ->
    MinPLogitsWarper, then softmax + torch.multinomial (what generate(do_sample=True) runs)."""
    scores = logits / temperature
    if top_k > 0:
        scores = scores.masked_fill(scores < torch.topk(scores, top_k)[0][..., -1, None], float("-inf"))
    if top_p < 1:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = 0
        scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))
    if min_p:
        probs = scores.softmax(dim=-1)
        scores = scores.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1)[:, 0]


@pytest.mark.parametrize("kind, batch, vocab, config", CASES)
@pytest.mark.parametrize("backend", ["baseline", "read once"] + perf_backends("sample", bench_device()))
def test_sample(benchmark, device, backend, kind, batch, vocab, config):
    scale, temperature = LOGITS[kind]
    params = dict(temperature=temperature, **CONFIGS[config])
    # New logits before every timed call, written into one buffer (untimed), as a model's LM head
    # writes them: cache-warm, but never the same values twice in a row. On the same data every
    # call the kernels' data-dependent branches are learnt by the branch predictor (measured: 5 vs
    # 11 us per 32000-logit row), which real decoding never sees.
    pool = [torch.randn(batch, vocab, device=device) * scale
            for _ in range(max(2, min(8, (1 << 24) // (batch * vocab))))]
    turn = itertools.cycle(pool)
    x = pool[0].clone()
    seeds = torch.arange(batch, device=device)
    shape = f"{batch}x{vocab} f32 {kind}" + (f" (T {temperature})" if kind == "peaky" else "")
    record(benchmark, op=f"sample {config}", shape=shape,
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
