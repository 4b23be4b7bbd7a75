"""The C++ CPU sampling kernel's own guarantees: the token of a row does not depend on the thread
count (rows and row segments across threads), on the batch around it, or on the instruction set
(AVX-512, AVX2 or the portable loops); the eager fast path and the custom op agree; and the large-vocabulary
paths (segments, the candidate bounds of top-p and min-p) match the float64 reference kept set."""
import os
import subprocess
import sys

import pytest
import torch

import pyllmops
from pyllmops.ops.sampling import reference_filter

from ..conftest import cpu_backends

pytestmark = pytest.mark.skipif("cpp" not in cpu_backends("sample"), reason="C++ core not built")

V = 70_000  # > 2 segments of 16k logits: a lone row is split across threads
CONFIGS = [dict(temperature=0.7, top_k=50, top_p=0.9), dict(temperature=0.7, top_p=0.9),
           dict(temperature=1.3, min_p=0.05), dict(temperature=0.5, top_k=5000, top_p=0.8),
           dict(temperature=0.8, top_k=5000), dict(temperature=1.0), dict(temperature=0.0),
           dict(temperature=0.9, top_k=1)]
FILTERED = CONFIGS[:5]  # the configurations that cut the vocabulary


def _logits(b, v, gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(b, v, generator=g) * 3
    x[:, ::7] = float("-inf")  # masked tokens, as a grammar or a bad-words list leaves them
    return x


@pytest.fixture(autouse=True)
def _threads_for_any_size(monkeypatch):
    """Small inputs normally run on one thread (sampling.PARALLEL_MIN_LOGITS): make every test
    input use the requested thread count, so the thread-invariance checks are not vacuous."""
    from pyllmops.ops import sampling

    monkeypatch.setattr(sampling, "PARALLEL_MIN_LOGITS", 0)


def _with_threads(n, fn):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_thread_count_and_batch_invariance(config, seed):
    x = _logits(5, V, seed)
    seeds, offsets = torch.randint(-2**63, 2**63 - 1, (5,)), torch.randint(0, 2**40, (5,))

    def run(rows):
        return pyllmops.sample(x[rows], **config, seed=seeds[rows], offset=offsets[rows])

    one = _with_threads(1, lambda: run(slice(None)))
    for threads in (2, 3, 8):
        assert torch.equal(_with_threads(threads, lambda: run(slice(None))), one), threads
    alone = torch.cat([_with_threads(2, lambda: run(slice(i, i + 1))) for i in range(5)])
    assert torch.equal(alone, one)
    assert torch.equal(_with_threads(2, lambda: run([4, 2, 0])), one[[4, 2, 0]])


def test_eager_path_matches_custom_op(seed):
    x = _logits(6, 5000, seed)
    kw = dict(temperature=torch.rand(6) + 0.3, top_k=torch.tensor([0, 10, 0, 100, 1, 0]),
              top_p=torch.tensor([0.9, 1.0, 0.5, 0.95, 1.0, 0.7]), min_p=0.01, seed=seed, offset=3)
    eager = pyllmops.sample(x, **kw)
    op = torch.ops.pyllmops.sample(x, kw["temperature"], kw["top_k"], kw["top_p"], torch.full((6,), 0.01),
                                   torch.arange(6) + seed, torch.full((6,), 3))
    assert torch.equal(eager, op)


@pytest.mark.parametrize("config", FILTERED, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_large_vocab_draws_in_the_kept_set(config, seed):
    """Many draws from one split row land only in the float64 reference's kept set and cover it."""
    x = _logits(1, V, seed)
    full = dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0) | config
    ones = torch.ones(1)
    probs = reference_filter(x, ones * full["temperature"], ones.long() * full["top_k"], ones * full["top_p"],
                             ones * full["min_p"])[0]
    n = 4000
    draws = _with_threads(2, lambda: torch.cat([pyllmops.sample(x, **config, seed=s, offset=0) for s in range(n)]))
    assert bool((probs[draws] > 0).all())
    top = probs.argmax()
    share = float((draws == top).double().mean())
    assert abs(share - float(probs[top])) < 5 * (float(probs[top]) / n) ** 0.5 + 1e-3


def _adversarial_logits(kind, v, g):
    """Rows that defeat the top-k candidate bound or its selection: heavy ties, few finite values,
    sorted values (the largest all in one place), a constant row."""
    if kind == "ties":
        return torch.randint(0, 4, (v,), generator=g).float()
    if kind == "few finite":
        x = torch.full((v,), float("-inf"))
        x[torch.randperm(v, generator=g)[:max(1, v // 40)]] = torch.randn(max(1, v // 40), generator=g)
        return x
    if kind == "ascending":
        return torch.linspace(-5, 5, v)
    if kind == "descending":
        return torch.linspace(5, -5, v)
    return torch.full((v,), 0.25)


@pytest.mark.parametrize("kind", ["ties", "few finite", "ascending", "descending", "constant"])
@pytest.mark.parametrize("v", [1, 15, 17, 257, 4099, V])
def test_top_k_candidates_match_reference(kind, v, seed):
    """The small top-k path (chunk maxima bound, candidate gather, k-th selection, rank sort) on
    adversarial rows and vocabularies that are not a multiple of 16: the float64 reference's kept set
    and probabilities, whatever the thread count, for k below and above the number of finite values."""
    g = torch.Generator().manual_seed(seed)
    ks = [1, 3, 50, 64, 300]
    x = torch.stack([_adversarial_logits(kind, v, g) for _ in ks])
    t, k = torch.full((len(ks),), 0.7), torch.tensor(ks)
    p = torch.tensor([1.0, 0.9, 0.9, 1.0, 0.5])
    q = torch.tensor([0.0, 0.0, 0.0, 0.01, 0.0])
    ref = reference_filter(x, t, k, p, q)
    for threads in (1, 3):
        probs = _with_threads(threads, lambda: pyllmops.top_k_top_p_filter(x, t, k, p, q))
        assert torch.equal(probs > 0, ref > 0), threads
        torch.testing.assert_close(probs.double(), ref, rtol=1e-5, atol=1e-7)
        ids = _with_threads(threads, lambda: pyllmops.sample(x, t, k, p, q, seed=seed, offset=1))
        assert bool((ref.gather(1, ids[:, None]) > 0).all())


@pytest.mark.parametrize("top_p", [0.5, 0.9])
def test_flat_top_p(top_p, seed):
    """A flat distribution (most of the vocabulary survives top-p) takes the order-free exact sums in
    the top-p search and the draw: the same ids whatever the thread count, and the float64
    reference's kept set up to the float32 rounding of the boundary token."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, V, generator=g) * 0.3
    x[:, ::11] = float("-inf")
    seeds = torch.randint(-2**63, 2**63 - 1, (2,), generator=g)
    ids = {n: _with_threads(n, lambda: torch.stack([pyllmops.sample(x, 1.0, 0, top_p, seed=seeds, offset=o)
                                                    for o in range(20)])) for n in (1, 3)}
    assert torch.equal(ids[1], ids[3])
    ones = torch.ones(2)
    ref = reference_filter(x, ones, ones.long() * 0, ones * top_p, ones * 0)
    probs = pyllmops.top_k_top_p_filter(x, 1.0, 0, top_p)
    assert int(((probs > 0) != (ref > 0)).sum()) <= 2
    assert float((probs.double() - ref).abs().sum(-1).max()) < 1e-4
    assert bool((ref.gather(1, ids[1].T) > 0).float().mean() > 0.99)


_PORTABLE_SCRIPT = """
import hashlib, torch, pyllmops
g = torch.Generator().manual_seed(7)
x = torch.randn(9, 40_003, generator=g) * 3  # not a multiple of 16: every loop's tail runs
x[:, ::5] = float("-inf")
x[7] = x[7].round()  # ties
x[4] = x[4] / 10  # flat: most of the row survives top-p
t = torch.tensor([0.7, 0.7, 1.3, 0.5, 1.0, 0.0, 0.9, 2.0, 0.8])
k = torch.tensor([50, 0, 0, 3000, 0, 0, 1, 60, 0])
p = torch.tensor([0.9, 0.9, 1.0, 0.8, 0.9, 1.0, 1.0, 0.5, 0.99])
q = torch.tensor([0.0, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0, 0.001])
for logits in (x, x.half(), x[:, :1001]):
    ids = [pyllmops.sample(logits, t, k, p, q, seed=s, offset=s) for s in range(40)]
    print(torch.stack(ids).flatten().tolist())
    probs = pyllmops.top_k_top_p_filter(logits, t, k, p, q)  # the weights, bit for bit
    print(hashlib.sha256(probs.numpy().tobytes()).hexdigest())
wide = torch.randn(2, 151_936, generator=g) * torch.tensor([[1.0], [0.3]])  # bands of 10-60k weights
print(torch.stack([pyllmops.sample(wide, 0.8, 0, 0.9, seed=s, offset=s) for s in range(40)]).flatten().tolist())
print(hashlib.sha256(pyllmops.top_k_top_p_filter(wide, 0.8, 0, 0.9).numpy().tobytes()).hexdigest())
"""


def test_isa_levels_give_the_same_ids():
    """The portable block loops (PYLLMOPS_SAMPLING_ISA=portable, or PYLLMOPS_NO_AVX512=1), the
    AVX2 ones (=avx2) and the widest this CPU runs do the same float operations in the same order:
    the same ids."""
    def run(extra):
        env = dict(os.environ, **extra)
        done = subprocess.run([sys.executable, "-c", _PORTABLE_SCRIPT], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    widest = run({})
    assert run({"PYLLMOPS_SAMPLING_ISA": "portable"}) == widest
    assert run({"PYLLMOPS_NO_AVX512": "1"}) == widest
    assert run({"PYLLMOPS_SAMPLING_ISA": "avx2"}) == widest


@pytest.mark.parametrize("config", FILTERED, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_large_vocab_filter_matches_reference(config, seed):
    """top_k_top_p_filter on split rows (3 threads, 2 rows): the float64 reference's kept set and
    probabilities."""
    x = _logits(2, V, seed)
    full = dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0) | config
    ones = torch.ones(2)
    ref = reference_filter(x, ones * full["temperature"], ones.long() * full["top_k"], ones * full["top_p"],
                           ones * full["min_p"])
    probs = _with_threads(3, lambda: pyllmops.top_k_top_p_filter(x, **config))
    assert torch.equal(probs > 0, ref > 0)
    torch.testing.assert_close(probs.double(), ref, rtol=1e-5, atol=1e-7)


def _heavy_row(v, positions, seed):
    """A flat row (randn x 0.3) with a few heavy tokens at `positions`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(v, generator=g) * 0.3
    x[torch.tensor(positions)] = torch.linspace(6.0, 4.0, len(positions))
    return x


# Heavy tokens in different blocks of 2048 logits. "spread": none at a multiple of 32, so the
# band guess (every 32nd logit) misses them; "sampled": all at multiples of 32, so it overrates
# them; "flat": a nucleus of thousands of tokens (the narrow band); min-p 0.2: the cut-off lies
# above any band; min-p alone: candidates by a bound on the logits. They take different ways to
# the cut-off (the band, the whole row, the logit bound); the draw must be the exact inverse CDF
# each way.
BAND_CASES = {"spread": ([101, 2500, 4099, 6203, 8001, 9990], dict(temperature=1.0, top_p=0.9)),
              "sampled": ([96, 2496, 4096, 6208, 8000, 9984], dict(temperature=1.0, top_p=0.9)),
              "flat": ([101, 2500], dict(temperature=2.0, top_p=0.6)),
              "min-p above band": ([101, 2500, 4099, 6203], dict(temperature=1.0, top_p=0.95, min_p=0.2)),
              "min-p only": ([101, 2500, 4099, 6203], dict(temperature=1.5, top_p=1.0, min_p=0.01))}


def _reference_for(x, params):
    """For one row: the float64 reference's probabilities, the float64 weights, and the tokens
    whose weight is within 1e-6 of the reference's cut-off (the smallest kept weight). float32
    weights may keep or cut those (two weights 1.4 float32 ulps apart can round to one value, and
    a tie at the cut-off keeps the whole group); every other token must be decided alike."""
    full = dict(top_k=0, min_p=0.0) | params
    one = torch.ones(1)
    ref = reference_filter(x[None], one * full["temperature"], one.long() * 0, one * full["top_p"],
                           one * full["min_p"])[0]
    w = torch.exp((x.double() - x.max()) / full["temperature"])
    cut = w[ref > 0].min()
    return ref, w, (w - cut).abs() <= 1e-6 * cut


def _renormalised(w, kept):
    p = torch.where(kept, w, torch.zeros_like(w))
    return p / p.sum()


@pytest.mark.parametrize("case", list(BAND_CASES))
@pytest.mark.parametrize("threads", [1, 3])
def test_band_and_whole_row_draws_are_the_inverse_cdf(case, threads, seed):
    """Draws at one uniform near the centre of each of n strata of [0, 1): the inverse CDF in
    vocabulary order maps any run of consecutive tokens of total probability P to an interval of
    length P, which holds n P +- 1.2 of the points, deterministically. Checked for every token
    and every run of 500 tokens (the flat case's tokens are too light for single counts), against
    the float64 weights of the kept set (which the next test checks against the reference)."""
    from .test_sampling import _centred_seeds

    positions, params = BAND_CASES[case]
    v, n = 10_000, 1000
    x = _heavy_row(v, positions, seed)
    ref, w, boundary = _reference_for(x, params)
    kept = pyllmops.top_k_top_p_filter(x[None], **params)[0] > 0
    probs = _renormalised(w, kept)
    seeds = _centred_seeds(n, 7, seed * 1_000_003)
    draws = _with_threads(threads, lambda: pyllmops.sample(x.expand(n, -1), seed=seeds, offset=7, **params))
    assert bool(((ref > 0) | boundary)[draws].all()), "a draw fell outside the kept set"
    dev = torch.bincount(draws, minlength=v).double() - n * probs
    assert float(dev.abs().max()) <= 1.2, f"token {int(dev.abs().argmax())} off by {float(dev.abs().max()):.2f}"
    runs = dev.view(-1, 500).sum(-1)
    assert float(runs.abs().max()) <= 1.2, f"tokens {500 * int(runs.abs().argmax())}+: off by {float(runs.abs().max()):.2f}"


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.6])
def test_weights_match_float64_exp(temperature, seed):
    """The weights' exp (2^v with a degree-6 polynomial for 2^f): without top-p the filter's
    probabilities over the max's are exp((x - m) / t) within 1e-6 relative for the tokens within
    3 / t nats of the max, whose weights are not dominated by the rounding of (x - m) / t (the
    implementation measures ~4e-7; the polynomial without its degree-6 term measures 3.5e-6)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 50_000, generator=g) * 2
    p = pyllmops.top_k_top_p_filter(x, temperature, 0, 1.0).double()
    z = (x.double() - x.double().max(-1, keepdim=True).values) / temperature
    ratio = p / p.max(-1, keepdim=True).values
    near = z >= -3
    err = ((ratio - z.exp()).abs() / z.exp())[near]
    assert float(err.max()) < 1e-6, f"relative error {float(err.max()):.3g}"


@pytest.mark.parametrize("scale,temperature", [(1.0, 0.8), (0.3, 0.8), (1.0, 2.0)])
def test_wide_band_filter_matches_reference(scale, temperature, seed):
    """Flat rows of a real vocabulary's size put 10-60k weights in the band, where the cut-off's
    bucket is guessed from a subsample and checked with masked sums: the kept set is the float64
    reference's but for tokens within float32 rounding of the cut-off, the probabilities the kept
    float64 weights renormalised, at 1 and 3 threads."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(151_936, generator=g) * scale
    params = dict(temperature=temperature, top_p=0.9)
    ref, w, boundary = _reference_for(x, params)
    for threads in (1, 3):
        row = _with_threads(threads, lambda: pyllmops.top_k_top_p_filter(x[None], **params))[0]
        differ = (row > 0) != (ref > 0)
        assert not bool((differ & ~boundary).any()), f"{int(differ.sum())} tokens decided unlike the reference"
        torch.testing.assert_close(row.double(), _renormalised(w, row > 0), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("case", list(BAND_CASES))
def test_band_and_whole_row_filter_match_reference(case, seed):
    """The kept set of those rows: the float64 reference's but for tokens within float32 rounding
    of the cut-off; the probabilities: the kept float64 weights renormalised."""
    positions, params = BAND_CASES[case]
    x = _heavy_row(10_000, positions, seed)
    ref, w, boundary = _reference_for(x, params)
    for threads in (1, 3):
        probs = _with_threads(threads, lambda: pyllmops.top_k_top_p_filter(x[None].expand(2, -1).contiguous(), **params))
        for row in probs:
            differ = (row > 0) != (ref > 0)
            assert not bool((differ & ~boundary).any()), f"tokens {differ.nonzero().flatten().tolist()[:5]}"
            torch.testing.assert_close(row.double(), _renormalised(w, row > 0), rtol=1e-5, atol=1e-7)
