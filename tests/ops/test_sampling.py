"""pyllmops.sample / top_k_top_p_filter against the float64 definition (reference_filter), the
HF warpers, and each other. Distribution tests draw N tokens from one row (the row expanded N
times, a different seed per copy, fresh per run from the test seed) and run a chi-square test
against the exact filtered distribution at the bar P_MIN = 1e-6; N is chosen per case so that the
test catches a temperature off by 5% or a dropped token of probability >= 1% with probability
>= 0.99 (tests/ops/sampling_power.py shows the computation; scripts/check_sampling_power.py
checks it by simulation). The stratified tests draw at one uniform per 1/N of [0, 1): exact
counts, so N in the hundreds suffices (the Triton interpreter's speed allows no more)."""
import pytest
import torch

import pyllmops
from pyllmops.ops.philox import philox4x32, row_uniforms
from pyllmops.ops.sampling import reference_filter

from tests.support import compiled

from ..conftest import cpu_backends
from . import sampling_power as power

BACKENDS = cpu_backends("sample")
FAST = [b for b in BACKENDS if b != "triton"]  # the Triton interpreter runs ~0.1 s per row
P_MIN = power.P_MIN


def _case(v: int, case: int):
    """Fixed random logits [V] and parameters for distribution case `case`. top_p (cases 0-1)
    lies between the mass of the two most probable tokens (after temperature and top-k) and 1, so
    every case keeps >= 2 tokens (test_distribution_cases_keep_several_tokens)."""
    g = torch.Generator().manual_seed(1000 * v + case)
    x = torch.randn(v, generator=g) * 2
    u = torch.rand(4, generator=g).tolist()
    params = dict(temperature=0.5 + u[0], top_k=0 if case % 2 else int(2 + u[1] * (v - 1)), top_p=1.0,
                  min_p=None if case % 2 == 0 else 0.03 * u[3])
    if case < 2:
        head = float(power.filtered(x, params).topk(2).values.sum())
        params["top_p"] = head + (1 - head) * (0.1 + 0.8 * u[2])
    return x, params


def _chi2_pvalue(draws: torch.Tensor, probs: torch.Tensor) -> float:
    return power.chi2_pvalue(draws, probs)


def _draw(backend, x, params, n, base_seed, chunk=50_000, device="cpu"):
    out = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        with pyllmops.use_backend(backend):
            out.append(pyllmops.sample(x.to(device).expand(m, -1), seed=torch.arange(m, device=device) + base_seed + start,
                                       offset=7, **params).cpu())
    return torch.cat(out)


# cpp (the CPU default): every case. torch (the fallback, ~50x slower per draw): the cases needing
# <= 80k draws (V = 1000 marked slow).
DIST_CASES = ([("cpp", v, c) for v in (7, 50, 1000) for c in range(4)]
              + [pytest.param("torch", v, c, marks=[pytest.mark.slow] if v == 1000 else [])
                 for v, c in ((7, 0), (50, 0), (50, 1), (1000, 0))])
DIST_CASES = [c for c in DIST_CASES if (c.values if hasattr(c, "values") else c)[0] in BACKENDS]


def test_distribution_cases_keep_several_tokens():
    """No empty case: every distribution case keeps >= 2 tokens (a chi-square with one bin has
    nothing to test) and a practical number of draws reaches the power (raises otherwise)."""
    for v in (7, 50, 1000):
        for c in range(4):
            x, params = _case(v, c)
            assert int((power.filtered(x, params) > 0).sum()) >= 2, (v, c)
            assert power.draws_for_power(x, params) <= 1_000_000, (v, c)


def _chi_square_check(backend, v, case, seed, device="cpu"):
    x, params = _case(v, case)
    probs = power.filtered(x, params)
    n = power.draws_for_power(x, params)
    draws = _draw(backend, x, params, n, base_seed=seed * 1_000_003, device=device)
    assert bool((probs[draws] > 0).all()), "a draw fell outside the kept set"
    p = _chi2_pvalue(draws, probs)
    assert p > P_MIN, f"{backend}, V={v}, case {case}: chi-square p = {p:.2e} over {n} draws"


@pytest.mark.parametrize("backend, v, case", DIST_CASES)
def test_distribution_chi_square(backend, v, case, seed):
    _chi_square_check(backend, v, case, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("v, case", [(v, c) for v in (7, 50, 1000) for c in range(4)])
def test_distribution_chi_square_gpu(backend, v, case, seed):
    _chi_square_check(backend, v, case, seed, device="cuda")


def _centred_seeds(n: int, offset: int, base: int) -> torch.Tensor:
    """n seeds whose row uniforms at `offset` lie within 0.1 / n of the centres (j + 0.5) / n of
    the n strata of [0, 1), searched among base, base + 1, ... (Philox: see the known answers)."""
    cand = torch.arange(base, base + 100 * n)  # a fifth land near a centre: each stratum missed w.p. e^-20
    pos = row_uniforms(cand, torch.full_like(cand, offset)).double() * n
    j = pos.floor().long()
    ok = (pos - j - 0.5).abs() < 0.1
    first = torch.full((n,), -1, dtype=torch.long)
    first[j[ok].flip(0)] = cand[ok].flip(0)  # the last write wins: the first candidate per stratum
    assert bool((first >= 0).all()), "a stratum has no seed: widen the search"
    return first


# A case for the slow Triton interpreter: three kept tokens far apart in log-probability, so a 5%
# temperature error moves a probability by ~0.019 (few strata needed).
SHORT_CASE = (torch.tensor([3.0, 1.5, 0.2, -1.0, -2.0, -3.0, 0.5]), dict(temperature=1.0, top_k=0, top_p=0.97, min_p=None))


def _stratified_check(backend, x, params, seed, device="cpu"):
    """Inverse-CDF sampling at one uniform near the centre of each stratum [j / n, (j + 1) / n): a
    kept token of probability p covers an interval of [0, 1) of length p, which holds n p +- 1.2
    of those points, deterministically. n makes every error of the power target (a 5% temperature
    error; a dropped token of p >= 1%, which a count of 0 shows) move some token's share by
    > 2.4 / n: caught with certainty, with no false alarm possible."""
    probs = power.filtered(x, params)
    shift = min(float((q - probs).abs().max()) for q in power.alternatives(x, params).values())
    n = max(150, int(2.5 / shift) + 1)
    assert n <= 1500, f"{n} strata needed: pick a case with a larger shift"
    seeds = _centred_seeds(n, 7, seed * 1_000_003)
    with pyllmops.use_backend(backend):
        draws = pyllmops.sample(x.to(device).expand(n, -1), seed=seeds.to(device), offset=7, **params).cpu()
    dev = torch.bincount(draws, minlength=x.numel()).double() - n * probs
    worst = int(dev.abs().argmax())
    assert float(dev.abs().max()) <= 1.2, \
        f"token {worst}: drawn {float(dev[worst] + n * probs[worst]):.0f} times of {n}, expected {float(n * probs[worst]):.2f}"


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("v, case", [(50, 1), (50, 2), (1000, 3)])
def test_distribution_stratified(backend, v, case, seed):
    _stratified_check(backend, *_case(v, case), seed)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_distribution_stratified_short(backend, seed):
    """The Triton sampler's distribution test (under the interpreter, ~0.1 s a row: 135 rows)."""
    _stratified_check(backend, *SHORT_CASE, seed)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("v, case", [(7, 0), (50, 1), (50, 2), (1000, 3)])
def test_distribution_stratified_gpu(backend, v, case, seed):
    _stratified_check(backend, *_case(v, case), seed, device="cuda")


def _random_batch(b, v, gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(b, v, generator=g) * 3
    t = torch.rand(b, generator=g) + 0.3
    t[::7] = 0.0  # some greedy rows
    k = torch.randint(-2, v + 3, (b,), generator=g)
    p = torch.rand(b, generator=g) * 0.7 + 0.3
    p[::5] = 1.0
    q = torch.rand(b, generator=g) * 0.1
    q[::3] = 0.0
    seed = torch.randint(-2**63, 2**63 - 1, (b,), generator=g)
    offset = torch.randint(0, 2**40, (b,), generator=g)
    return x, dict(temperature=t, top_k=k, top_p=p, min_p=q, seed=seed, offset=offset)


@pytest.mark.parametrize("v, b", [(7, 200), (50, 200), (1000, 100)])
def test_backends_agree(v, b):
    """Backends share the uniform and the kept set: the same token unless float rounding of a sum
    sits on a boundary (never seen at these sizes; allowed for 1% of the rows)."""
    x, kw = _random_batch(b, v, v)
    ids = {}
    for backend in ["reference"] + BACKENDS:
        n = 12 if backend == "triton" else b
        with pyllmops.use_backend(backend):
            ids[backend] = pyllmops.sample(x[:n], **{k_: t[:n] for k_, t in kw.items()})
    for backend, got in ids.items():
        ref = ids["reference"][:got.numel()]
        assert float((got == ref).float().mean()) >= 0.99, backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_filter_matches_reference(backend):
    x, kw = _random_batch(12 if backend == "triton" else 200, 50, 3)
    params = {k: kw[k] for k in ("temperature", "top_k", "top_p", "min_p")}
    with pyllmops.use_backend(backend):
        probs = pyllmops.top_k_top_p_filter(x, **params)
    ref = reference_filter(x, params["temperature"], params["top_k"], params["top_p"], params["min_p"])
    assert probs.dtype == torch.float32 and probs.shape == x.shape
    assert torch.equal(probs > 0, ref > 0)
    torch.testing.assert_close(probs.double(), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_composition_invariance(backend):
    """A row's token depends on its own logits, parameters, seed and offset only."""
    b = 6 if backend == "triton" else 12
    x, kw = _random_batch(b, 300, 11)
    with pyllmops.use_backend(backend):
        full = pyllmops.sample(x, **kw)
        perm = torch.randperm(b)
        shuffled = pyllmops.sample(x[perm], **{k: t[perm] for k, t in kw.items()})
        single = torch.cat([pyllmops.sample(x[i:i + 1], **{k: t[i:i + 1] for k, t in kw.items()}) for i in range(3)])
    assert torch.equal(shuffled, full[perm])
    assert torch.equal(single, full[:3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_sample_their_float32_values(backend, dtype):
    x, kw = _random_batch(6 if backend == "triton" else 32, 200, 5)
    x = x.to(dtype)
    with pyllmops.use_backend(backend):
        assert torch.equal(pyllmops.sample(x, **kw), pyllmops.sample(x.float(), **kw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_is_first_argmax(backend, seed):
    x = torch.randn(6, 100)
    x[2, 10] = x[2, 70] = x[2].max() + 1  # tie: the first index wins, as torch.argmax
    x[4, 99] = x[4].max() + 1
    t = torch.tensor([0.0, 1.0, 0.0, 0.7, 0.0, 0.0])
    with pyllmops.use_backend(backend):
        ids = pyllmops.sample(x, temperature=t, top_k=5, top_p=0.5, seed=seed)
        all_greedy = pyllmops.sample(x, temperature=0.0)
    greedy = t == 0
    assert torch.equal(ids[greedy], x.argmax(-1)[greedy])
    assert torch.equal(all_greedy, x.argmax(-1))
    assert int(ids[2]) == 10


def _hf_warp(scores, temperature, top_k, top_p, min_p):
    """transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper
    (min_tokens_to_keep=1), in their generation order, on float64 scores [B, V]."""
    scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        scores = scores.masked_fill(scores < torch.topk(scores, top_k)[0][..., -1, None], float("-inf"))
    if top_p < 1:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = 0
        scores = scores.masked_fill(remove.scatter(1, sorted_indices, remove), float("-inf"))
    if min_p:
        probs = torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    return scores.softmax(-1)


@pytest.mark.parametrize("top_k, top_p, min_p", [(0, 0.9, 0.0), (40, 1.0, 0.0), (40, 0.8, 0.0), (0, 1.0, 0.05),
                                                 (20, 0.7, 0.02)])
def test_matches_hf_warpers(top_k, top_p, min_p, seed):
    x = torch.randn(32, 500, dtype=torch.float64) * 2
    hf = _hf_warp(x, 0.8, top_k, top_p, min_p)
    b = torch.ones(32)
    ref = reference_filter(x, b * 0.8, b.long() * top_k, b * top_p, b * min_p)
    assert torch.equal(hf > 0, ref > 0)
    torch.testing.assert_close(ref, hf, rtol=1e-6, atol=1e-9)  # the reference rounds x to float32 first
    for backend in FAST:
        with pyllmops.use_backend(backend):
            got = pyllmops.top_k_top_p_filter(x.float(), 0.8, top_k, top_p, min_p)
        assert torch.equal(got > 0, hf > 0), backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties(backend):
    x = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0],     # top-k 2: ties at the k-th value kept (HF)
                      [1.0, 1.0, 1.0, 1.0, 0.0, -1.0]])   # top-p 0.3: the whole tied head is kept
    with pyllmops.use_backend(backend):
        probs = pyllmops.top_k_top_p_filter(x, 1.0, torch.tensor([2, 0]), torch.tensor([1.0, 0.3]))
    assert torch.equal(probs > 0, torch.tensor([[True, True, True, True, False, False],
                                                [True, True, True, True, False, False]]))
    torch.testing.assert_close(probs[1, :4], torch.full((4,), 0.25))


def test_philox_known_answers():
    """Random123's philox4x32_R(10) known-answer vectors, for the torch definition and the C++ one."""
    kat = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
           ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
           ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
            (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]
    for ctr, key, want in kat:
        seed = key[0] | (key[1] << 32)
        seed = seed - 2**64 if seed >= 2**63 else seed
        got = philox4x32(torch.tensor([seed]), *(torch.tensor([c]) for c in ctr))
        assert tuple(int(g) for g in got) == want
        if "cpp" in BACKENDS:
            from pyllmops import _ext
            assert _ext.cpp().philox4x32(*ctr, *key) == want


@pytest.mark.skipif("cpp" not in BACKENDS, reason="C++ core not built")
def test_uniforms_identical_in_cpp():
    from pyllmops import _ext

    s = torch.randint(-2**63, 2**63 - 1, (300,))
    o = torch.randint(-2**62, 2**62, (300,))
    u = row_uniforms(s, o)
    assert all(_ext.cpp().row_uniform(int(a), int(b)) == float(c) for a, b, c in zip(s, o, u))
    assert float(u.min()) >= 0 and float(u.max()) < 1


def test_seeds(seed):
    x = torch.randn(8, 100)
    torch.manual_seed(seed)
    a = pyllmops.sample(x, 1.0, 0, 0.95)
    torch.manual_seed(seed)
    assert torch.equal(pyllmops.sample(x, 1.0, 0, 0.95), a)  # seed=None: torch's generator decides
    assert torch.equal(pyllmops.sample(x, seed=5), pyllmops.sample(x, seed=torch.arange(8) + 5))
    draws = pyllmops.sample(x[:1].expand(64, -1), seed=3, offset=torch.arange(64))
    assert draws.unique().numel() > 5  # the offset moves the stream


def test_compiles_fullgraph(seed):
    def f(x, t, s):
        return pyllmops.sample(x * 1.5, t, 20, 0.9, seed=s, offset=3)

    x, t, s = torch.randn(16, 64), torch.full((16,), 0.8), torch.arange(16) + seed
    with pyllmops.use_backend("reference"):
        ref = pyllmops.sample(x * 1.5, t, 20, 0.9, seed=s, offset=3)
    assert torch.equal(compiled(f)(x, t, s), ref)
    assert "sample" in dir(torch.ops.pyllmops)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_values(backend):
    x = torch.randn(4, 30)
    with pyllmops.use_backend(backend):
        for row, bad in [(2, float("nan")), (1, float("inf"))]:
            y = x.clone()
            y[row, 5] = bad
            with pytest.raises(ValueError, match=f"logits row {row} contains NaN"):
                pyllmops.sample(y, seed=0)
        y = x.clone()
        y[3] = float("-inf")
        with pytest.raises(ValueError, match="logits row 3 is all -inf"):
            pyllmops.sample(y, seed=0)
        with pytest.raises(ValueError, match="logits row 3 is all -inf"):
            pyllmops.top_k_top_p_filter(y)
        for name, values in [("temperature", [1.0, -1.0, 1.0, 1.0]), ("temperature", [1.0, float("nan"), 1, 1]),
                             ("top_p", [0.5, 0.5, 0.0, 0.5]), ("top_p", [1.5, 0.5, 0.5, 0.5]),
                             ("min_p", [0.0, 0.0, 0.0, 1.5])]:
            with pytest.raises(ValueError, match=name):
                pyllmops.sample(x, **{name: torch.tensor(values)}, seed=0)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.01), ValueError, "top_p"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_k=torch.tensor([2.0, 3.0, 4.0, 5.0])), TypeError, "top_k"),
    (dict(top_k=True), TypeError, "top_k"),
    (dict(temperature=torch.ones(3)), ValueError, "temperature"),
    (dict(top_p=torch.ones(4, 1)), ValueError, "top_p"),
    (dict(seed=torch.zeros(4, device="meta", dtype=torch.int64)), ValueError, "seed"),
    (dict(offset=torch.zeros(4)), TypeError, "offset"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
])
def test_bad_arguments(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        pyllmops.sample(torch.randn(4, 30), **kwargs)


def test_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        pyllmops.sample(torch.randn(30))
    with pytest.raises(TypeError, match="logits"):
        pyllmops.sample(torch.zeros(2, 30, dtype=torch.int32))


_COMPILE_SCRIPT = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pyllmops.kernels.sampling import _sample_row

sig = {"x_ptr": "*bf16", "ids_ptr": "*i64", "probs_ptr": "*fp32", "t_ptr": "*fp32", "k_ptr": "*i64",
       "p_ptr": "*fp32", "q_ptr": "*fp32", "seed_ptr": "*i64", "off_ptr": "*i64", "V": "i32", "stride": "i32",
       "WANT_PROBS": "constexpr", "BLOCK": "constexpr", "DIG": "constexpr"}
for cap in map(int, sys.argv[1:]):
    src = ASTSource(fn=_sample_row, signature=sig, constexprs={"WANT_PROBS": True, "BLOCK": 1024, "DIG": 16})
    assert "sample_row" in triton.compile(src, target=GPUTarget("cuda", cap, 32)).asm["ptx"]
"""


@pytest.mark.slow
def test_triton_kernel_compiles_for_gpu():
    """No GPU here: lower the kernel to PTX/cubin for sm_80 and sm_90 so the compiled path (not only
    the interpreter) is checked. In a subprocess: the compiler needs TRITON_INTERPRET unset."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, "80", "90"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
